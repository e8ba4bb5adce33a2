"""The split-run driver: the local runner's plan, cache and outputs, with the pass cut into work units.

Per hook the driver runs the norm pre-pass (it also counts each batch's tokens and sequences, which name the
token shards), plans units from what is not yet in the store (engine.units), hands them to an executor (in this
process, or Ray workers: engine.ray_executor) and stores each returned unit's accumulator states atomically as
soon as it arrives. When every unit of a (SAE, metric entry) is in, their states are merged into one
accumulator whose values become the same result shard a local run writes. A killed driver reruns into the same
folder: finished shards are reused as in a local run, and so is every finished unit. Weights and group metrics
are executor tasks too.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from evalkit.core.io import atomic_write_bytes
from evalkit.core.records import EvalContext, MetricValue, ResultKey
from evalkit.engine.keys import _data_key
from evalkit.engine.passes import HookData, data_stats
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
from evalkit.engine.runner import Runner, RunOutcome, SaeResult
from evalkit.engine.shards import stream_shard
from evalkit.engine.store import ResultStore
from evalkit.engine.units import (
    HookPlan,
    WorkUnit,
    decode_unit_result,
    encode_unit_result,
    plan_prepass,
    plan_units,
    run_unit,
)
from metrics.base import METRICS, MetricSpec, State, restore
from metrics.jackknife import stream_factory

log = logging.getLogger(__name__)

SPLITS = ("auto", "saes", "tokens")
"""Split modes (evalkit.app.executors offers the same on the command line)."""
UnitDone = Callable[[WorkUnit, bytes], None]


class Executor(Protocol):
    """Where units and weights/group tasks run."""

    n_workers: int

    def run_units(self, units: Sequence[WorkUnit], plan: HookPlan, settings: EvalSettings, done: UnitDone) -> None:
        """Run every unit; call `done(unit, encoded states)` as each finishes (in any order)."""
        ...

    def run_weights(self, jobs: Sequence[tuple[str, str, EvalContext]]) -> list[list[MetricValue]]: ...

    def run_group(self, entry: str, sae_ids: Sequence[str], ctx: EvalContext) -> dict[str, list[MetricValue]]: ...


class LocalExecutor:
    """Units run one after another in this process, on the driver's own SAEs and sources."""

    def __init__(self, saes: Sequence[SaeLike], sources: dict[str, DataSource], n_workers: int = 2) -> None:
        self.saes = {s.sae_id: s for s in saes}
        self.sources = sources
        self.n_workers = n_workers

    def run_units(self, units: Sequence[WorkUnit], plan: HookPlan, settings: EvalSettings, done: UnitDone) -> None:
        for unit in units:
            done(unit, encode_unit_result(run_unit(unit, plan, self.sources[plan.hook], self.saes, settings)))

    def run_weights(self, jobs: Sequence[tuple[str, str, EvalContext]]) -> list[list[MetricValue]]:
        return [weights_values(self.saes[sid], entry, ctx) for sid, entry, ctx in jobs]

    def run_group(self, entry: str, sae_ids: Sequence[str], ctx: EvalContext) -> dict[str, list[MetricValue]]:
        return group_values({sid: self.saes[sid] for sid in sae_ids}, entry, ctx)


@torch.no_grad()
def weights_values(sae: SaeLike, entry: str, ctx: EvalContext) -> list[MetricValue]:
    return list(METRICS.get(entry).factory(sae.sae, ctx))


@torch.no_grad()
def group_values(saes: dict[str, SaeLike], entry: str, ctx: EvalContext) -> dict[str, list[MetricValue]]:
    return dict(METRICS.get(entry).factory({sid: s.sae for sid, s in saes.items()}, ctx))


class UnitStore:
    """Finished units' states under `<out>/.evalkit-cache/units/<unit_id>.safetensors` (written atomically)."""

    def __init__(self, store: ResultStore) -> None:
        self.root = store.root / "units"

    def path(self, unit: WorkUnit) -> Path:
        return self.root / f"{unit.unit_id}.safetensors"

    def load(self, unit: WorkUnit) -> dict[tuple[str, str], State] | None:
        path = self.path(unit)
        if not path.is_file():
            return None
        try:
            return decode_unit_result(path.read_bytes())
        except Exception as exc:  # a damaged file is recomputed, never trusted
            log.warning("%s: unreadable unit state (%s); recomputing the unit", path, exc)
            return None

    def save(self, unit: WorkUnit, blob: bytes) -> None:
        atomic_write_bytes(self.path(unit), blob)


class Progress:
    """Units done/total, ETA and failures, logged by the driver."""

    def __init__(self, total: int, hook: str) -> None:
        self.total, self.hook, self.done, self.failures = total, hook, 0, 0
        self.t0 = time.perf_counter()

    def unit_done(self) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s: units %d/%d done, ETA %.0f s, %d failure(s) retried",
            self.hook,
            self.done,
            self.total,
            eta,
            self.failures,
        )


class DistributedRunner(Runner):
    """engine.runner.Runner whose evaluation pass is split into units run by an executor."""

    def __init__(
        self,
        store: ResultStore,
        settings: EvalSettings,
        specs: Sequence[MetricSpec],
        executor: Executor,
        split: str = "auto",
    ) -> None:
        super().__init__(store, settings, specs)
        self.executor = executor
        self.split = split
        self.units = UnitStore(store)
        self.plans: dict[str, HookPlan] = {}
        self.units_computed: list[str] = []
        self.units_reused: list[str] = []
        self.failures = 0
        self._weights: dict[tuple[str, str], list[MetricValue]] = {}

    def run(self, *args: Any, **kwargs: Any) -> RunOutcome:
        """Runner.run; the executor's workers are released at the end, however the run ends."""
        try:
            return super().run(*args, **kwargs)
        finally:
            close = getattr(self.executor, "shutdown", None)
            if callable(close):
                close()

    def _prepare(self, hook: str, source: DataSource, members: Sequence[SaeLike]) -> HookData:
        plan = plan_prepass(hook, source, self.settings, members)
        self.plans[hook] = plan
        return plan.data

    def _choose_split(self, n_saes: int, data: HookData) -> str:
        """By tokens when the model pass dominates (a model source) or there are fewer SAEs than workers."""
        if self.split != "auto":
            return self.split
        return "tokens" if data.source.model is not None or n_saes < self.executor.n_workers else "saes"

    def _run_hook(
        self, data: HookData, members: Sequence[SaeLike], results: dict[str, SaeResult], grouped_ids: set[str]
    ) -> HookData:
        plan = self.plans[data.hook]
        keys: dict[tuple[str, str], ResultKey] = {}
        pending: dict[str, tuple[str, ...]] = {}
        for s in members:
            todo = self._uncached_stream_keys(s, data, results, grouped_ids)
            keys.update({(s.sae_id, name): key for name, key in todo.items()})
            pending[s.sae_id] = tuple(todo)
        t0 = time.perf_counter()
        by_id = {s.sae_id: s for s in members}
        split = self._choose_split(sum(bool(e) for e in pending.values()), data)
        units = plan_units(plan, pending, by_id, self.settings, split, self.executor.n_workers)
        states = self._execute(units, plan)
        self.timings_s[f"stream:{data.hook}"] = time.perf_counter() - t0
        self.store.save_data_stats(_data_key(data, self.settings), data_stats(data))
        t0 = time.perf_counter()
        self._prefetch_weights(members, data, grouped_ids)
        for s in members:
            for entry in pending[s.sae_id]:
                parts = [states[u.unit_id][(s.sae_id, entry)] for u in units if s.sae_id in u.sae_ids]
                spec = self._spec(entry)
                factory = stream_factory(spec, self.settings.stderr_blocks)  # as the units built them
                acc = restore(factory, s.sae, data.ctx, parts[0])
                for part in parts[1:]:
                    acc.merge(restore(factory, s.sae, data.ctx, part))
                shard = stream_shard(spec, keys[(s.sae_id, entry)], acc, data.ctx)
                self._save(shard, spec, s.d_sae)
                results[s.sae_id].shards.append(shard)
            self._run_weights(s, data, results[s.sae_id], s.sae_id in grouped_ids)
            results[s.sae_id].shards.sort(key=lambda sh: self._order(sh.key.entry))
        self.timings_s[f"finish:{data.hook}"] = time.perf_counter() - t0
        return data

    def _execute(self, units: list[WorkUnit], plan: HookPlan) -> dict[str, dict[tuple[str, str], State]]:
        states: dict[str, dict[tuple[str, str], State]] = {}
        todo = []
        for unit in units:
            loaded = None if self.settings.force else self.units.load(unit)
            if loaded is not None:
                states[unit.unit_id] = loaded
                self.units_reused.append(unit.unit_id)
            else:
                todo.append(unit)
        log.info("%s: %d unit(s) planned, %d reused from the store", plan.hook, len(units), len(units) - len(todo))
        progress = Progress(len(todo), plan.hook)

        def done(unit: WorkUnit, blob: bytes) -> None:
            self.units.save(unit, blob)
            states[unit.unit_id] = decode_unit_result(blob)
            self.units_computed.append(unit.unit_id)
            progress.failures = getattr(self.executor, "failures", 0)
            progress.unit_done()
            # Fault injection for the resume test: a real SIGKILL of the driver after N stored units.
            kill_after = os.environ.get("EVALKIT_TEST_KILL_DRIVER_AFTER_UNITS")
            if kill_after and len(self.units_computed) >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)

        if todo:
            self.executor.run_units(todo, plan.for_worker(), self.settings, done)
        return states

    def _prefetch_weights(self, members: Sequence[SaeLike], data: HookData, grouped_ids: set[str]) -> None:
        """Every uncached weights metric of these SAEs as executor tasks, at once."""
        jobs = [(s.sae_id, spec.name, data.ctx) for s, spec in self._uncomputed_weights(members, data, grouped_ids)]
        for (sid, entry, _), values in zip(jobs, self.executor.run_weights(jobs), strict=True):
            self._weights[(sid, entry)] = values

    def _weights_values(self, spec: MetricSpec, s: SaeLike, ctx: EvalContext) -> list[MetricValue]:
        found = self._weights.pop((s.sae_id, spec.name), None)
        return found if found is not None else weights_values(s, spec.name, ctx)

    def _group_values(
        self, spec: MetricSpec, group: Sequence[SaeLike], ctx: EvalContext
    ) -> dict[str, list[MetricValue]]:
        return self.executor.run_group(spec.name, [s.sae_id for s in group], ctx)
