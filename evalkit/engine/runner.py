"""The runner: the one place that loops over batches and SAEs.

Per hook: a norm pre-pass (token filter, exact norm quantiles, data fingerprint), then one pass over the data
that serves every SAE at that hook and every selected stream metric — each batch is read once, and per SAE f =
encode(x) and x̂ are computed once into a SaeBatch shared by all metrics. Weights metrics run once per SAE,
group metrics once per seed group. Results go to the store as soon as each SAE finishes; anything already in
the store is reused.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from evalkit.core.errors import EvalkitInputError
from evalkit.core.faults import fault_point
from evalkit.core.identity import JsonValue, stable_hash
from evalkit.core.records import EvalContext, MetricValue, ResultKey, Shard
from evalkit.engine.ahead import WeightsAhead
from evalkit.engine.checkpoint import DEFAULT_INTERVAL_S, PassCheckpointer
from evalkit.engine.keys import _config_hash, _data_key, _unmet
from evalkit.engine.passes import HookData, data_stats, norm_prepass, provisional_hook_data, with_data_stats
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike, seed_groups
from evalkit.engine.shards import context_for, now_ms, stream_shard
from evalkit.engine.store import ResultStore
from evalkit.engine.stream_pass import SEQ_INDEX_KEY, BatchObserver, SaeState, stream_pass
from metrics.base import MetricSpec, StreamingMetric, check_emitted
from metrics.jackknife import stream_factory

log = logging.getLogger(__name__)

__all__ = [
    "SEQ_INDEX_KEY",
    "BatchObserver",
    "RunOutcome",
    "Runner",
    "SaeResult",
    "SkipNote",
    "context_for",
    "stream_shard",
]


@dataclass
class SkipNote:
    entry: str
    metrics: tuple[str, ...]
    reason: str
    sae_ids: list[str]


@dataclass
class SaeResult:
    handle: SaeLike
    hook: str
    shards: list[Shard] = field(default_factory=list)


@dataclass
class RunOutcome:
    results: list[SaeResult]
    skipped: list[SkipNote]
    computed: list[ResultKey]
    reused: list[ResultKey]
    timings_s: dict[str, float]
    hooks: dict[str, HookData]
    passes: dict[str, dict[str, JsonValue]] = field(default_factory=dict)
    """Per hook: batches read, the batch a checkpoint resumed at, checkpoints written and their time."""


class Runner:
    """Evaluate SAEs on data sources; see the module docstring."""

    def __init__(
        self,
        store: ResultStore,
        settings: EvalSettings,
        specs: Sequence[MetricSpec],
        observers: Sequence[BatchObserver] = (),
        checkpoint_every: int | None = None,
        checkpoint_every_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        """`checkpoint_every`: save the pass's state every N batches; None = every `checkpoint_every_s`."""
        self.checkpoint_every = checkpoint_every
        self.checkpoint_every_s = checkpoint_every_s
        self.passes: dict[str, dict[str, JsonValue]] = {}
        self.store = store
        self.settings = settings
        self.specs = list(specs)
        self.observers = list(observers)
        self.computed: list[ResultKey] = []
        self.reused: list[ResultKey] = []
        self.skipped: dict[tuple[str, str], SkipNote] = {}
        self.timings_s: dict[str, float] = {}
        self._peeked: dict[ResultKey, Shard] = {}
        self._ahead: WeightsAhead | None = None

    def _skip(self, spec: MetricSpec, reason: str, sae_id: str) -> None:
        note = self.skipped.setdefault((spec.name, reason), SkipNote(spec.name, spec.names, reason, []))
        note.sae_ids.append(sae_id)

    def _cached(self, key: ResultKey) -> Shard | None:
        """The stored shard (None with --force, when absent, or when damaged: then it is recomputed)."""
        shard = None if self.settings.force else self._peeked.pop(key, None) or self.store.get(key)
        if shard is not None:
            self.reused.append(key)
        return shard

    def _save(self, shard: Shard, spec: MetricSpec, d_sae: int) -> None:
        check_emitted(spec, shard.values, d_sae)  # a metric emitting what it does not declare stops the run
        self.store.save(shard)
        self.computed.append(shard.key)
        fault_point("finish")
        # Fault injection for the resume test: a real SIGKILL at a deterministic point of the run.
        kill_after = os.environ.get("EVALKIT_TEST_KILL_AFTER_SHARDS")
        if kill_after and len(self.computed) >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    def run(
        self,
        saes: Sequence[SaeLike],
        sources: dict[str, DataSource],
        explicit_groups: Sequence[Sequence[str]] = (),
        hook_of: dict[str, str] | None = None,
    ) -> RunOutcome:
        """Evaluate `saes`. `sources` maps a hook (the results' `hook` column) to its data; `hook_of` maps
        sae_id to one of those keys (default: the SAE's hook_name, or the only source if just one)."""
        hook_of = hook_of or {
            s.sae_id: s.hook_name if s.hook_name in sources or len(sources) != 1 else next(iter(sources)) for s in saes
        }
        for s in saes:
            if hook_of.get(s.sae_id) not in sources:
                raise EvalkitInputError(s.path, f"no activation source for its hook {s.hook_name!r}")
        groups = seed_groups(saes, explicit_groups)
        grouped_ids = {s.sae_id for g in groups for s in g}
        hooks: dict[str, HookData] = {}
        results: dict[str, SaeResult] = {}
        for hook, source in sources.items():
            members = [s for s in saes if hook_of.get(s.sae_id) == hook]
            if not members:
                continue
            t0 = time.perf_counter()
            data = self._prepare(hook, source, members)
            self.timings_s[f"prepass:{hook}"] = time.perf_counter() - t0
            for s in members:
                results[s.sae_id] = SaeResult(s, hook)
            hooks[hook] = self._run_hook(data, members, results, grouped_ids)
        self._run_groups(groups, hooks, results)
        ordered = [results[s.sae_id] for s in saes if s.sae_id in results]
        return RunOutcome(
            ordered, list(self.skipped.values()), self.computed, self.reused, self.timings_s, hooks, self.passes
        )

    def _prepare(self, hook: str, source: DataSource, members: Sequence[SaeLike]) -> HookData:
        """What is known about the hook's data before the pass: the norm pre-pass, or the source's word."""
        if not self._needs_prepass(source):
            return provisional_hook_data(hook, source, self.settings)
        if source.known_up_front() and self.settings.max_norm_multiple is None:
            provisional = provisional_hook_data(hook, source, self.settings)
            if self._nothing_to_stream(provisional, members):
                # Every stream result is stored: no pass runs, and the norms the pass that computed them
                # measured come from the store (_run_hook), the same numbers a pre-pass would give.
                return provisional
        return norm_prepass(hook, source, self.settings, members)

    def _nothing_to_stream(self, data: HookData, members: Sequence[SaeLike]) -> bool:
        """No stream metric of `members` is missing from the store, no observer wants them, and the store
        holds the data's statistics; keys need only the source's fingerprint, which it vouches for."""
        if self.settings.force or any(o.wants(s.sae_id) for s in members for o in self.observers):
            return False
        if self.store.load_data_stats(_data_key(data, self.settings)) is None:
            return False
        for s in members:
            for spec in (sp for sp in self.specs if sp.kind == "stream"):
                key = ResultKey(s.content_hash, spec.name, _config_hash(spec, self.settings, data))
                # (the seed-group need is decided later; a stored shard counts whatever it is)
                if _unmet(spec, data, True) is None and not self._peek(key):
                    return False
        return True

    def _peek(self, key: ResultKey) -> bool:
        """A valid shard is stored under `key`; it is kept for `_cached`, so it is read once."""
        shard = self.store.get(key)
        if shard is not None:
            self._peeked[key] = shard
        return shard is not None

    def _needs_prepass(self, source: DataSource) -> bool:
        """The pre-pass reads the data an extra time; skip it when nothing needs norms before the pass. Stream
        metrics read the norm statistics while they stream; weights metrics (alignment) only after the pass,
        which has measured them by then (the same tokens, the same quantiles)."""
        needs_norms = any("norm_stats" in sp.requires for sp in self.specs if sp.kind == "stream")
        return needs_norms or self.settings.max_norm_multiple is not None or not source.known_up_front()

    def _norms_after_pass(self, data: HookData, members: Sequence[SaeLike]) -> HookData:
        """The hook's data with its norm statistics, for weights metrics that need them: read once more only
        when no pass measured them (nothing streamed and nothing stored, e.g. `--metrics alignment` alone)."""
        wants = any("norm_stats" in sp.requires for sp in self.specs if sp.kind == "weights")
        if not wants or data.prepassed or math.isfinite(data.ctx.median_norm):
            return data
        return norm_prepass(data.hook, data.source, self.settings, members)

    def _uncached_stream_keys(
        self, s: SaeLike, data: HookData, results: dict[str, SaeResult], grouped_ids: set[str]
    ) -> dict[str, ResultKey]:
        """The stream metrics still to compute for `s` on this hook, by name, in spec order. A metric whose needs
        the data does not meet is reported as skipped; a cached result goes straight into `results`."""
        keys: dict[str, ResultKey] = {}
        for spec in (sp for sp in self.specs if sp.kind == "stream"):
            reason = _unmet(spec, data, s.sae_id in grouped_ids)
            if reason:
                self._skip(spec, reason, s.sae_id)
                continue
            key = ResultKey(s.content_hash, spec.name, _config_hash(spec, self.settings, data))
            cached = self._cached(key)
            if cached is not None:
                results[s.sae_id].shards.append(cached)
            else:
                keys[spec.name] = key
        return keys

    def _run_hook(
        self, data: HookData, members: Sequence[SaeLike], results: dict[str, SaeResult], grouped_ids: set[str]
    ) -> HookData:
        states = []
        for s in members:
            pending: dict[str, tuple[ResultKey, StreamingMetric]] = {
                name: (key, self._accumulator(self._spec(name), s.sae, data.ctx))
                for name, key in self._uncached_stream_keys(s, data, results, grouped_ids).items()
            }
            wants_ds = any("model" in self._spec(n).requires for n in pending)
            if pending or any(o.wants(s.sae_id) for o in self.observers):
                states.append(SaeState(s, pending, wants_ds))
        self._ahead = self._start_weights(members, data, grouped_ids) if states else None
        try:
            return self._pass_and_finish(data, members, results, grouped_ids, states)
        finally:
            if self._ahead is not None:
                self._ahead.close()
            self._ahead = None

    def _start_weights(self, members: Sequence[SaeLike], data: HookData, grouped_ids: set[str]) -> WeightsAhead | None:
        """The uncomputed weights metrics of `members`, started on a side thread (evalkit.engine.ahead) to run
        beside the pass; only on data a pre-pass has fixed, so their keys and context are the finish phase's."""
        jobs = self._uncomputed_weights(members, data, grouped_ids) if data.prepassed else []
        if not jobs:
            return None
        ahead = WeightsAhead()
        for s, spec in jobs:
            ahead.submit(s.sae_id, spec.name, data.ctx, functools.partial(_values_of, spec, s, data.ctx))
        return ahead

    def _uncomputed_weights(
        self, members: Sequence[SaeLike], data: HookData, grouped_ids: set[str]
    ) -> list[tuple[SaeLike, MetricSpec]]:
        """The weights metrics of `members` that apply and have no stored result (all that apply with --force)."""
        return [
            (s, spec)
            for s in members
            for spec in self.specs
            if spec.kind == "weights"
            and not _unmet(spec, data, s.sae_id in grouped_ids)
            and (
                self.settings.force
                or not self._peek(ResultKey(s.content_hash, spec.name, _config_hash(spec, self.settings, data)))
            )
        ]

    def _pass_and_finish(
        self,
        data: HookData,
        members: Sequence[SaeLike],
        results: dict[str, SaeResult],
        grouped_ids: set[str],
        states: list[SaeState],
    ) -> HookData:
        t0 = time.perf_counter()
        data_key = _data_key(data, self.settings)
        watched = sorted(s.sae_id for s in members for o in self.observers if o.wants(s.sae_id))
        # Keyed by the SAEs too: runs of other SAEs into the same folder (worker processes) keep their own files.
        identity: JsonValue = {"data": data_key, "observed": watched, "saes": sorted(s.content_hash for s in members)}
        ckpt = PassCheckpointer(
            self.store.root / "checkpoints" / f"{stable_hash(identity)}.ckpt",
            self.checkpoint_every,
            self.checkpoint_every_s,
        )
        stats = stream_pass(data, states, members, self.settings, self.observers, checkpointer=ckpt) if states else None
        if stats is not None:
            self.passes[data.hook] = {
                "batches_read": stats.n_batches_read,
                "resumed_at_batch": stats.resumed_at_batch,
                "checkpoints_written": ckpt.n_saved,
                "checkpoint_s": round(ckpt.save_s, 3),
            }
        if stats is not None and not data.prepassed:
            data = stats.hook_data(data.hook, data.source, self.settings, prepassed=False)
        elif not data.prepassed:  # everything was cached: report what the pass that computed it measured
            known = self.store.load_data_stats(data_key)
            data = with_data_stats(data, known) if known else data
        data = self._norms_after_pass(data, members)
        self.store.save_data_stats(data_key, data_stats(data))
        self.timings_s[f"stream:{data.hook}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in members:  # finish and persist SAE by SAE, so a kill loses at most the SAE in flight
            state = next((st for st in states if st.handle is s), None)
            if state is not None:
                for key, acc in state.pending.values():
                    spec = self._spec(key.entry)
                    shard = stream_shard(spec, key, acc, data.ctx)
                    self._save(shard, spec, s.d_sae)
                    results[s.sae_id].shards.append(shard)
            self._run_weights(s, data, results[s.sae_id], s.sae_id in grouped_ids)
            results[s.sae_id].shards.sort(key=lambda sh: self._order(sh.key.entry))
        ckpt.clear()  # every result of the pass is stored
        self.timings_s[f"finish:{data.hook}"] = time.perf_counter() - t0
        return data

    def _accumulator(self, spec: MetricSpec, sae: object, ctx: EvalContext) -> StreamingMetric:
        """The metric's accumulator, in a block jackknife (token-level stderr) unless that is off for it."""
        return stream_factory(spec, self.settings.stderr_blocks)(sae, ctx)

    def _spec(self, name: str) -> MetricSpec:
        return next(sp for sp in self.specs if sp.name == name)

    def _order(self, entry: str) -> int:
        return [sp.name for sp in self.specs].index(entry)

    def _run_weights(self, s: SaeLike, data: HookData, result: SaeResult, in_group: bool) -> None:
        for spec in (sp for sp in self.specs if sp.kind == "weights"):
            reason = _unmet(spec, data, in_group)
            if reason:
                self._skip(spec, reason, s.sae_id)
                continue
            key = ResultKey(s.content_hash, spec.name, _config_hash(spec, self.settings, data))
            shard = self._cached(key)
            if shard is None:
                shard = Shard(key, tuple(self._weights_values(spec, s, data.ctx)), data.ctx.n_tokens, now_ms())
                self._save(shard, spec, s.d_sae)
            result.shards.append(shard)

    def _run_groups(
        self, groups: list[list[SaeLike]], hooks: dict[str, HookData], results: dict[str, SaeResult]
    ) -> None:
        grouped_ids = {s.sae_id for g in groups for s in g}
        for spec in (sp for sp in self.specs if sp.kind == "group"):
            for sid in (s for s in results if s not in grouped_ids):
                self._skip(spec, "needs a seed group of >= 2 SAEs differing only in seed", sid)
            for group in groups:
                self._run_group(spec, group, hooks, results)
        for res in results.values():
            res.shards.sort(key=lambda sh: self._order(sh.key.entry))

    def _run_group(
        self,
        spec: MetricSpec,
        group: list[SaeLike],
        hooks: dict[str, HookData],
        results: dict[str, SaeResult],
    ) -> None:
        data = hooks[results[group[0].sae_id].hook]
        reason = _unmet(spec, data, True)
        if reason:
            for s in group:
                self._skip(spec, reason, s.sae_id)
            return
        members = [s.content_hash for s in group]
        keys = {
            s.sae_id: ResultKey(s.content_hash, spec.name, _config_hash(spec, self.settings, data, members))
            for s in group
        }
        cached = {sid: None if self.settings.force else self.store.get(k) for sid, k in keys.items()}
        if all(v is not None for v in cached.values()):
            for sid, shard in cached.items():
                self.reused.append(keys[sid])
                results[sid].shards.append(shard)  # type: ignore[arg-type]
            return
        values = self._group_values(spec, group, data.ctx)
        for s in group:
            shard = Shard(keys[s.sae_id], tuple(values.get(s.sae_id, [])), data.ctx.n_tokens, now_ms())
            self._save(shard, spec, s.d_sae)
            results[s.sae_id].shards.append(shard)

    @torch.no_grad()
    def _weights_values(self, spec: MetricSpec, s: SaeLike, ctx: EvalContext) -> list[MetricValue]:
        found = None if self._ahead is None else self._ahead.take(s.sae_id, spec.name, ctx)
        return found if found is not None else _values_of(spec, s, ctx)

    @torch.no_grad()
    def _group_values(
        self, spec: MetricSpec, group: Sequence[SaeLike], ctx: EvalContext
    ) -> dict[str, list[MetricValue]]:
        return dict(spec.factory({s.sae_id: s.sae for s in group}, ctx))


def _values_of(spec: MetricSpec, s: SaeLike, ctx: EvalContext) -> list[MetricValue]:
    return list(spec.factory(s.sae, ctx))
