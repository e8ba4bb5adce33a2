"""`evalkit run --workers N` with the local executor: N processes on this machine evaluate shares of the SAEs.

Every result is a shard in the output folder's store, keyed by (SAE content hash, metric entry and version,
metric config, data fingerprint), and no shard depends on which other SAEs shared its pass: each SAE's codes,
accumulators and autointerp examples are its own, read from the same batches. So the driver hands each worker
process a share of the SAEs (seed groups kept whole: group metrics need every member), each worker runs the
ordinary runner and autointerp stage on its share into the same store, and the driver's own run then finds every
result stored and writes the outputs exactly as a single-process run does. Workers take no output lock (the
driver holds it), keep their own pass checkpoints (keyed by the SAEs they evaluate), and a killed run resumes
from the shards and checkpoints every worker left.

Processes are spawned (not forked: torch and BLAS thread pools do not survive a fork), each with one BLAS and
one torch thread, so N workers use N cores. The outputs are bit-identical to a one-process run with one torch
thread (checked on the 28-SAE default demo); a process with more torch threads sums in another order, which moves
a few values in the last bits (~1e-16 relative, stderrs ~1e-13). A script that calls `run` with workers needs the
usual `if __name__ == "__main__":` guard (spawned processes import the main module).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalkit.app.request import RunRequest
    from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
    from metrics.base import MetricSpec

log = logging.getLogger(__name__)


def shares(saes: Sequence[SaeLike], groups: Sequence[Sequence[SaeLike]], n_workers: int) -> list[list[str]]:
    """SAE ids per worker: seed groups whole, the largest pieces first, each to the share with the fewest SAEs
    (ties to the lower share), so shares differ by at most one group's size. Empty shares are dropped."""
    grouped = {s.sae_id for g in groups for s in g}
    pieces = [[s.sae_id for s in g] for g in groups] + [[s.sae_id] for s in saes if s.sae_id not in grouped]
    pieces.sort(key=len, reverse=True)  # stable: equal sizes keep the SAEs' order
    out: list[list[str]] = [[] for _ in range(max(1, n_workers))]
    for piece in pieces:
        min(out, key=len).extend(piece)
    order = {s.sae_id: i for i, s in enumerate(saes)}
    return [sorted(share, key=order.__getitem__) for share in out if share]


def evaluate_in_workers(
    req: RunRequest,
    settings: EvalSettings,
    specs: Sequence[MetricSpec],
    saes: Sequence[SaeLike],
    sources: dict[str, DataSource],
    hook_of: dict[str, str],
) -> int | None:
    """Store every result of `saes` not stored yet by running the runner (and autointerp stage) in up to
    `req.workers` processes. Nothing to compute, or one seed group or SAE only: nothing is spawned (the driver's
    own run computes it) and the answer is None. When workers ran (the driver then only collects): the number of
    results they computed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from evalkit.app.run_autointerp import AutointerpStage
    from evalkit.engine.keys import pending_saes
    from evalkit.engine.runconfig import seed_groups
    from evalkit.engine.store import ResultStore

    store = ResultStore(req.out)
    groups = seed_groups(saes, req.explicit_groups())
    todo = pending_saes(store, settings, specs, saes, sources, hook_of, req.explicit_groups())
    if req.autointerp != "off":
        todo |= set(AutointerpStage(req, settings, store, saes, sources, hook_of).observer.collectors)
    for group in groups:
        if todo & {s.sae_id for s in group}:
            todo |= {s.sae_id for s in group}
    todo_saes = [s for s in saes if s.sae_id in todo]
    parts = shares(todo_saes, [g for g in groups if g[0].sae_id in todo], int(req.workers or 1))
    if len(parts) < 2:
        return None
    group_ids = [[s.sae_id for s in g] for g in groups]
    log.info("evaluating %d SAE(s) in %d worker processes: %s", len(todo_saes), len(parts), [len(p) for p in parts])
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(parts), mp_context=context, initializer=_init_worker) as pool:
        futures = {
            pool.submit(evaluate_share, req, part, [g for g in group_ids if g[0] in part]): i
            for i, part in enumerate(parts)
        }
        total = 0
        for future in as_completed(futures):
            n_computed, wall_s = future.result()  # a worker's error is raised here, in the driver
            log.info("worker %d done: %d result(s) computed in %.1f s", futures[future], n_computed, wall_s)
            total += n_computed
    log.info("every worker done in %.1f s", time.perf_counter() - t0)
    return total


def _init_worker() -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(1)


def evaluate_share(req: RunRequest, sae_ids: Sequence[str], group_ids: Sequence[Sequence[str]]) -> tuple[int, float]:
    """In a worker: the runner and the autointerp stage on these SAEs, results into `req.out`'s store. Returns
    the number of results computed and the seconds it took."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _evaluate_share(req, sae_ids, group_ids)


def _evaluate_share(req: RunRequest, sae_ids: Sequence[str], group_ids: Sequence[Sequence[str]]) -> tuple[int, float]:
    from evalkit.app.run_autointerp import AutointerpStage
    from evalkit.app.run_cli import load_all_saes, resolve_sources
    from evalkit.engine.runner import Runner
    from evalkit.engine.store import ResultStore
    from metrics.base import GROUPS, select_metrics

    t0 = time.perf_counter()
    wanted = set(sae_ids)
    # The driver has reported any SAE that fails to load; the others are this worker's to evaluate.
    loaded = load_all_saes(req.sae, req.format, req.device, req.dtype, failures=[])
    saes = [s for s in loaded if s.sae_id in wanted]
    sources, hook_of = resolve_sources(req, saes)
    settings = req.settings()
    specs = sorted(select_metrics(req.metrics), key=lambda s: GROUPS.index(s.group))
    store = ResultStore(req.out)
    stage = AutointerpStage(req, settings, store, saes, sources, hook_of) if req.autointerp != "off" else None
    runner = Runner(store, settings, specs, [stage.observer] if stage else [], req.checkpoint_every)
    # The driver's seed groups, by sae_id (explicit, so a share without a group is not regrouped by config).
    outcome = runner.run(saes, sources, [list(g) for g in group_ids] or [[]], hook_of)
    if stage is not None:
        stage.finish(saes, hook_of, {h: d.ctx.n_tokens for h, d in outcome.hooks.items()})
    return len(outcome.computed), time.perf_counter() - t0


def collecting_request(req: RunRequest) -> RunRequest:
    """The driver's own run after the workers: every result is stored, so it only collects (never --force)."""
    return replace(req, force=False)
