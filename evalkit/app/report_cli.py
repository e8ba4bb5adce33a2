"""`evalkit report DIR` and `evalkit compare DIR [DIR ...]`: rebuild matched.csv and report.html.

They compute nothing new: every number comes from the results store.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from reports.html import write_report
from reports.matched import MATCH_AXES, parse_targets

log = logging.getLogger(__name__)


def _add_matching_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default="fvu", help=f"matching metric: {', '.join(MATCH_AXES)} (default fvu)")
    parser.add_argument("--at", default=None, help="comma-separated target levels (default: 5 over the shared range)")


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.dir, by=args.by, targets=parse_targets(args.at))
    print(path)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.dirs[0])
    path = write_report(out, sources=args.dirs, by=args.by, targets=parse_targets(args.at))
    print(path)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="rebuild report.html and matched.csv from the results in DIR (computes nothing new)"
    )
    report.add_argument("dir", type=Path, help="an output folder of `evalkit run`")
    _add_matching_options(report)
    report.set_defaults(func=run_report)

    compare = subparsers.add_parser(
        "compare",
        help="matched-reconstruction comparison across run folders: writes matched.csv and report.html",
    )
    compare.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="output folders whose results are merged")
    _add_matching_options(compare)
    compare.add_argument("--out", type=Path, default=None, help="where to write (default: the first DIR)")
    compare.set_defaults(func=run_compare)
