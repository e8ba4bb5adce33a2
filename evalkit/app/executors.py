"""`evalkit run --executor local|ray`: which runner evaluates the SAEs.

local (default): engine.runner.Runner in this process; with --workers N, N processes on this machine
evaluate shares of the SAEs into the store first (evalkit.app.parallel). ray: engine.distributed.DistributedRunner with
engine.ray_executor.RayExecutor — the driver (this process) plans work units, Ray workers run them, the driver
merges and writes the store. Workers rebuild the SAEs and data from the same command-line options
(`build_workspace`), so every path must be readable on every node (a shared filesystem) and the model and
dataset must be loadable there (the Hugging Face cache on each node, or a shared HF_HOME).
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.core.errors import EvalkitInputError

# The engine (torch, metrics) is imported inside the functions that run: `evalkit run --help` stays fast.
if TYPE_CHECKING:
    from evalkit.app.request import RunRequest
    from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
    from evalkit.engine.runner import Runner
    from evalkit.engine.store import ResultStore
    from metrics.base import MetricSpec

log = logging.getLogger(__name__)
SPLITS = ("auto", "saes", "tokens")
"""engine.distributed.DistributedRunner's split modes."""


def add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default): this process; ray: work units on a Ray cluster (pip install 'evalkit[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (host:port of `ray start --head`, or 'auto'); default: start a local one",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="work units by SAEs (each worker its own pass) or by tokens (token shards of all SAEs, merged); "
        "auto: by tokens for a model source or fewer SAEs than workers",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="ray: Ray workers (default: the cluster's GPUs or CPUs); local: worker processes on this machine, "
        "each evaluating a share of the SAEs (default 1: this process)",
    )


def check_executor(req: RunRequest) -> None:
    """Bad executor options are exit 2 before any work."""
    if req.workers is not None and req.workers <= 0:
        raise EvalkitInputError("--workers", f"must be positive, got {req.workers}")
    if req.executor != "ray":
        return
    from evalkit.engine.ray_executor import INSTALL_LINE, ray_installed

    if not ray_installed():
        raise EvalkitInputError("--executor ray", f"Ray is not installed; install it with: {INSTALL_LINE}")
    if req.autointerp != "off":
        raise EvalkitInputError("--executor ray", "the autointerp stage runs with --executor local only")


def build_workspace(req: RunRequest) -> tuple[Sequence[SaeLike], dict[str, DataSource]]:
    """What a Ray worker loads once: the SAEs and sources the same options name (run_cli's own loaders)."""
    from evalkit.app.run_cli import load_all_saes, resolve_sources

    saes = load_all_saes(req.sae, req.format, req.device, req.dtype)
    sources, _ = resolve_sources(req, saes)
    return saes, sources


def make_runner(
    req: RunRequest, settings: EvalSettings, specs: Sequence[MetricSpec], store: ResultStore, observers: list
) -> Runner:
    from evalkit.engine.distributed import DistributedRunner
    from evalkit.engine.runner import Runner

    if req.executor != "ray":
        return Runner(store, settings, specs, observers, req.checkpoint_every)
    from evalkit.engine.ray_executor import RayExecutor

    num_gpus = 1 if str(req.device).startswith("cuda") else 0
    executor = RayExecutor(functools.partial(build_workspace, req), req.ray_address, req.workers, num_gpus)
    return DistributedRunner(store, settings, specs, executor, req.split)


def execution_info(runner: Runner) -> dict[str, object]:
    """The split run's unit counts for run.json (empty for a local run)."""
    from evalkit.engine.distributed import DistributedRunner

    if not isinstance(runner, DistributedRunner):
        return {}
    return {
        "executor": "ray",
        "units_computed": len(runner.units_computed),
        "units_reused": len(runner.units_reused),
        "worker_failures": int(getattr(runner.executor, "failures", 0)),
        "worker_startup_s": round(float(getattr(runner.executor, "startup_s", 0.0)), 3),
        # Per finished unit: submission-to-result on the driver, and computing on the worker (the difference is
        # Ray's overhead: scheduling, serialisation, transfer).
        "unit_wall_s": [round(w, 4) for w, _ in getattr(runner.executor, "unit_timings", [])],
        "unit_compute_s": [round(c, 4) for _, c in getattr(runner.executor, "unit_timings", [])],
    }
