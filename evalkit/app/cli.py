"""The `evalkit` console script: one subcommand per job; bad input exits 2 with one line, internal errors exit 1.

Subcommands live with the code they drive; each module exposes `add_commands(subparsers)` and sets
`func=<callable(args) -> int>` on its parsers. This file only assembles them and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from evalkit.core.errors import EvalkitInputError

log = logging.getLogger("evalkit")

# Modules that contribute subcommands, in the order `--help` lists them. A module that does not exist yet is skipped.
COMMAND_MODULES = ("evalkit.app.run_cli", "evalkit.app.report_cli", "evalkit.app.world_cli", "evalkit.app.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalkit", description="Evaluate sparse autoencoders honestly and comparably."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    # One line per HTTP request (the LLM client's httpx) buries what matters: DEBUG only, shown with -v.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EvalkitInputError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evalkit: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
