"""Ray as the executor of a split run (engine.distributed): one actor per worker slot, each loading the SAEs and
opening the data source once (the model with it), then running any number of units.

A unit whose worker dies (process killed, node lost) is resubmitted to a fresh actor, up to `max_retries` times;
an error raised by evalkit itself (bad input) is not retried but re-raised on the driver. With GPUs every actor
holds one (`num_gpus=1`), so a cluster of N GPUs runs N units at once. Ray is an optional dependency
(`pip install 'evalkit[ray]'`): importing this module does not import it; building a RayExecutor does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evalkit.core.records import EvalContext, MetricValue
from evalkit.engine.distributed import UnitDone, group_values, weights_values
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
from evalkit.engine.units import HookPlan, WorkUnit, encode_unit_result, run_unit
from metrics.base import load_metric_modules

log = logging.getLogger(__name__)

INSTALL_LINE = "pip install 'evalkit[ray]'  (Ray 2.x)"
Workspace = tuple[Sequence[SaeLike], dict[str, DataSource]]
"""What a worker builds once: the SAEs and the data source of every hook."""


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class UnitWorker:
    """A Ray actor's body: the workspace is built once (SAEs loaded, model loaded), units run against it."""

    def __init__(self, build: Callable[[], Workspace], torch_threads: int | None) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        load_metric_modules()
        saes, self.sources = build()
        self.saes = {s.sae_id: s for s in saes}

    def ready(self) -> int:
        return os.getpid()

    def run_unit(self, unit: WorkUnit, plan: HookPlan, settings: EvalSettings) -> tuple[bytes, float]:
        """The unit's encoded states and the seconds this worker spent computing them."""
        t0 = time.perf_counter()
        blob = encode_unit_result(run_unit(unit, plan, self.sources[plan.hook], self.saes, settings))
        _maybe_die()
        return blob, time.perf_counter() - t0

    def weights(self, jobs: Sequence[tuple[str, str, EvalContext]]) -> list[list[MetricValue]]:
        return [weights_values(self.saes[sid], entry, ctx) for sid, entry, ctx in jobs]

    def group(self, entry: str, sae_ids: Sequence[str], ctx: EvalContext) -> dict[str, list[MetricValue]]:
        return group_values({sid: self.saes[sid] for sid in sae_ids}, entry, ctx)


def _maybe_die() -> None:
    """Fault injection for the worker-death test: with EVALKIT_TEST_WORKER_DIE_ARM naming a file that exists,
    the first worker to finish computing a unit deletes it and dies before returning (the unit is lost)."""
    arm = os.environ.get("EVALKIT_TEST_WORKER_DIE_ARM")
    if arm:
        try:
            Path(arm).unlink()
        except FileNotFoundError:
            return
        os._exit(1)


class RayExecutor:
    """Runs units on Ray actors; see the module docstring."""

    def __init__(
        self,
        build: Callable[[], Workspace],
        address: str | None = None,
        n_workers: int | None = None,
        num_gpus: float = 0,
        max_retries: int = 3,
        torch_threads: int | None = 1,
    ) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        slots = resources.get("GPU", 0) if num_gpus else resources.get("CPU", 1)
        self.n_workers = max(1, int(n_workers or slots))
        self._actor_cls = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=0)(UnitWorker)
        self._build, self._threads = build, torch_threads
        self.max_retries = max_retries
        self.failures = 0
        self.unit_timings: list[tuple[float, float]] = []
        """Per finished unit: (seconds from submission to result on the driver, seconds computing on the worker)."""
        t0 = time.perf_counter()
        self._actors: list[Any] = [self._new_actor() for _ in range(self.n_workers)]
        ray.get([actor.ready.remote() for actor in self._actors])  # SAEs loaded, sources open, on every worker
        self.startup_s = time.perf_counter() - t0
        """Seconds until every actor had built its workspace (paid once per run, not per unit)."""
        log.info(
            "ray: %d worker(s) ready on %s in %.1f s",
            self.n_workers,
            ray.get_runtime_context().gcs_address,
            self.startup_s,
        )

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self._build, self._threads)

    def run_units(self, units: Sequence[WorkUnit], plan: HookPlan, settings: EvalSettings, done: UnitDone) -> None:
        import ray

        queue = list(units)
        attempts = dict.fromkeys((u.unit_id for u in units), 0)
        running: dict[Any, tuple[int, WorkUnit]] = {}
        submitted: dict[Any, float] = {}
        idle = list(range(len(self._actors)))
        plan_ref = ray.put(plan)
        while queue or running:
            while queue and idle:
                slot, unit = idle.pop(), queue.pop(0)
                ref = self._actors[slot].run_unit.remote(unit, plan_ref, settings)
                running[ref] = (slot, unit)
                submitted[ref] = time.perf_counter()
            [ref], _ = ray.wait(list(running), num_returns=1)
            slot, unit = running.pop(ref)
            try:
                blob, compute_s = ray.get(ref)
                self.unit_timings.append((time.perf_counter() - submitted.pop(ref), compute_s))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                self._retry(unit, attempts, exc)
                self._actors[slot] = self._new_actor()
                queue.insert(0, unit)
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # evalkit's own error (bad input): not retried
            else:
                done(unit, blob)
            idle.append(slot)

    def _retry(self, unit: WorkUnit, attempts: dict[str, int], exc: Exception) -> None:
        self.failures += 1
        attempts[unit.unit_id] += 1
        log.warning(
            "ray: worker died during unit %s (%s, SAEs %s, batches %d-%d): attempt %d of %d",
            unit.unit_id,
            unit.hook,
            ",".join(unit.sae_ids),
            unit.shard.start,
            unit.shard.stop,
            attempts[unit.unit_id],
            self.max_retries,
        )
        if attempts[unit.unit_id] > self.max_retries:
            raise RuntimeError(f"unit {unit.unit_id} failed {attempts[unit.unit_id]} times; last: {exc}")

    def run_weights(self, jobs: Sequence[tuple[str, str, EvalContext]]) -> list[list[MetricValue]]:
        """One task per worker with its share of the jobs."""
        import ray

        if not jobs:
            return []
        n = len(self._actors)
        shares = [list(jobs[i::n]) for i in range(n)]
        answers = ray.get([a.weights.remote(share) for a, share in zip(self._actors, shares, strict=True) if share])
        out: list[list[MetricValue]] = [[] for _ in jobs]
        for i, answer in enumerate(answers):
            for j, values in enumerate(answer):
                out[i + j * n] = values
        return out

    def run_group(self, entry: str, sae_ids: Sequence[str], ctx: EvalContext) -> dict[str, list[MetricValue]]:
        import ray

        return ray.get(self._actors[0].group.remote(entry, list(sae_ids), ctx))

    def shutdown(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
