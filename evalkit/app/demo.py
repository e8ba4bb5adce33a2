"""`evalkit demo`: the embedded world, its SAE zoo, every metric on every zoo SAE, and one report.

The demo is a thin driver, not a second pipeline: it builds (or reuses from the cache) the world and the zoo,
then hands the zoo folder to the very code `evalkit run` executes (`run_cli.run` with a `RunRequest`, whose
defaults are the run command's), and finally writes report.html with `reports.html.write_report`.
Results land in the output folder's results store, so a second demo into the same folder recomputes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.core.defaults import WORLD_SIZE_NAMES

if TYPE_CHECKING:  # the world pulls in torch and transformer-lens: imported only when the demo runs
    from evalkit.app.request import RunRequest
    from evalkit.world.build import World

log = logging.getLogger(__name__)

DEMO_METRICS = "all,saebench_weights"
"""Every default group, and the SAEBench weight cosines (cheap at the zoo's d_sae) so the SAEBench JSON is written."""
DEMO_AUTOINTERP = "baseline"
DEMO_MAX_WORKERS = 4
"""The evaluation runs in one worker process per available core, at most this many (evalkit.app.parallel)."""
DEFAULT_OUT = Path("evalkit-out")


@dataclass
class DemoResult:
    """What a demo produced: the report, the folders it used, and the wall time of each stage (seconds)."""

    report_path: Path
    out_dir: Path
    world_root: Path
    zoo_dir: Path
    timings_s: dict[str, float] = field(default_factory=dict)


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo",
        help="build the embedded world and SAE zoo, evaluate every metric on every SAE, write report.html",
        description="Build (or reuse from the cache) the embedded world and its SAE zoo, run every metric "
        f"group (--metrics {DEMO_METRICS}, --autointerp {DEMO_AUTOINTERP}) on every zoo SAE with the same "
        "runner `evalkit run` uses, and write all outputs and report.html into --out. The cache folder is "
        "$EVALKIT_CACHE (default ~/.cache/evalkit).",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument(
        "--size",
        choices=WORLD_SIZE_NAMES,
        default="default",
        help="world and zoo size; 'small' is a seconds-scale version for tests (default: default)",
    )
    p.add_argument("--force", action="store_true", help="recompute results already cached in --out")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    result = run_demo(args.out, size=args.size, force=args.force)
    log.info("demo finished in %.0f s; open %s", sum(result.timings_s.values()), result.report_path)
    return 0


def build_demo_zoo(world: World, cache_dir: Path | str | None = None) -> Path:
    """The zoo folder for `world` (built or cached); the zoo's size follows the world's."""
    from evalkit.world.zoo import build_zoo

    return Path(build_zoo(world, cache_dir=cache_dir))


def run_request(out_dir: Path, zoo_dir: Path, world: World, force: bool = False) -> RunRequest:
    """The `evalkit run` the demo stands for (every other field is the run command's default). The world object
    itself (not only its size) selects the embedded-world source, so a non-default size or cache folder evaluates
    on the same world the zoo was trained on; the demo writes report.html itself, as its own timed stage."""
    from evalkit.app.request import RunRequest

    return RunRequest(
        sae=(str(zoo_dir),),
        out=out_dir,
        metrics=DEMO_METRICS,
        autointerp=DEMO_AUTOINTERP,
        no_report=True,
        force=force,
        world=world,
        workers=demo_workers(),
    )


def demo_workers() -> int:
    """Worker processes for the evaluation: the cores this process may use, at most DEMO_MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, DEMO_MAX_WORKERS))


STAGES = ("world", "zoo", "evaluation", "report")


def _stage(stage: str, what: str, *args: object) -> None:
    log.info(f"demo: stage %d/%d, %s: {what}", STAGES.index(stage) + 1, len(STAGES), stage, *args)


def _timed(timings: dict[str, float], stage: str, t0: float) -> None:
    timings[stage] = round(time.perf_counter() - t0, 3)
    log.info("demo: stage %d/%d, %s, done in %.1f s", STAGES.index(stage) + 1, len(STAGES), stage, timings[stage])


def run_demo(
    out_dir: Path | str = DEFAULT_OUT,
    size: str = "default",
    cache_dir: Path | str | None = None,
    force: bool = False,
    zoo_dir: Path | str | None = None,
) -> DemoResult:
    """Build/reuse world and zoo, run every metric on every zoo SAE, write every output and report.html.

    `zoo_dir` evaluates an existing folder of SAEs trained on this world instead of building the zoo.
    """
    from evalkit.app.run_cli import run
    from evalkit.world.build import build_world
    from reports.html import write_report

    out = Path(out_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _stage("world", "building or loading the embedded world (size %s)", size)
    world = build_world(cache_dir=cache_dir, size=size)
    _timed(timings, "world", t0)

    t0 = time.perf_counter()
    if zoo_dir is None:
        _stage("zoo", "building or loading the SAE zoo")
        zoo = build_demo_zoo(world, cache_dir)
    else:
        zoo = Path(zoo_dir)
    _timed(timings, "zoo", t0)

    t0 = time.perf_counter()
    n_saes = sum(1 for _ in zoo.rglob("cfg.json"))
    _stage("evaluation", "%d SAEs in %s (metrics %s, autointerp %s)", n_saes, zoo, DEMO_METRICS, DEMO_AUTOINTERP)
    # `evalkit run` itself limits BLAS to one thread (many small scikit-learn fits); its worker processes (one
    # per core) evaluate shares of the SAEs in parallel.
    status = run(run_request(out, zoo, world, force))
    if status != 0:
        raise RuntimeError(f"evalkit run exited with status {status}")
    _timed(timings, "evaluation", t0)

    t0 = time.perf_counter()
    _stage("report", "writing %s", out / "report.html")
    report = write_report(out)
    _timed(timings, "report", t0)
    return DemoResult(report, out, world.root, zoo, timings)
