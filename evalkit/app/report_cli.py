"""`evalkit report DIR` and `evalkit compare DIR [DIR ...]`: rebuild matched.csv and report.html.

They compute nothing new: every number comes from the results store.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from evalkit.core.errors import EvalkitInputError

# reports (pandas, jinja2, plotly) is imported when a command runs, so --help stays fast.
MATCHING_HELP = "matching metric: fvu (default), mse, ce_loss_score or l0 (docs/metrics.md, matched reconstruction)"

log = logging.getLogger(__name__)


def _add_matching_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default="fvu", help=MATCHING_HELP)
    parser.add_argument("--at", default=None, help="comma-separated target levels (default: 5 over the shared range)")


def run_report(args: argparse.Namespace) -> int:
    from evalkit.core.errors import EvalkitInputError
    from evalkit.engine.outlock import OutputLock
    from evalkit.engine.preflight import prepare_output
    from reports.html import write_report
    from reports.matched import parse_targets

    if not Path(args.dir).is_dir():
        raise EvalkitInputError(args.dir, "no such run folder")
    prepare_output(Path(args.dir))  # a read-only folder fails here, in one line, before anything is read
    with OutputLock(Path(args.dir)):  # not while a run writes into it
        path = write_report(args.dir, by=args.by, targets=parse_targets(args.at))
    print(path)
    return 0


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def compare_out_dir(dirs: list[Path], out: Path | None, cwd: Path | None = None) -> Path:
    """Where `evalkit compare` writes: --out, which must not be an input folder nor inside one; without --out,
    a new folder `evalkit-compare-<n>` in the working directory. Input folders are never written."""
    inputs = [d.resolve() for d in dirs]
    if out is None:
        base = (cwd or Path.cwd()).resolve()
        n = 1
        while (base / f"evalkit-compare-{n}").exists() or any(
            _inside(base / f"evalkit-compare-{n}", d) for d in inputs
        ):
            n += 1
        return base / f"evalkit-compare-{n}"
    target = out.resolve()
    for d in inputs:
        if _inside(target, d):
            raise EvalkitInputError(out, f"is inside the input folder {d}; compare never writes into an input folder")
    return out


def run_compare(args: argparse.Namespace) -> int:
    from reports.html import write_report
    from reports.matched import parse_targets

    for d in args.dirs:
        if not Path(d).is_dir():
            raise EvalkitInputError(d, "not a folder")
    out = compare_out_dir(list(args.dirs), args.out)
    if args.out is None:
        log.info("compare: no --out given; writing into the new folder %s", out)
    out.mkdir(parents=True, exist_ok=True)
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
    compare.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write into, never an input folder (default: a new ./evalkit-compare-<n>/)",
    )
    compare.set_defaults(func=run_compare)
