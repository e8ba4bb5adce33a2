"""Work units for a split run: (hook, SAE subset, token shard), planned by the driver, run by any worker.

A unit runs the ordinary evaluation pass (engine.stream_pass) over a range of batches for some SAEs and returns
each pending accumulator's *state* (metrics.base.StreamingMetric's protocol), not finished values: the driver
merges the states of a (SAE, metric entry) over token shards and computes the shard it stores. A token shard
names its batch range together with the token budget left and the sequence index at its start (both from the
driver's pre-pass), so a shard reads and keys exactly the same tokens whichever worker runs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from evalkit.core.identity import JsonValue, stable_hash
from evalkit.engine.passes import HookData, PassStats, TokenFilter, check_batch
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
from evalkit.engine.stream_pass import SaeState, TokenShard, stream_pass
from metrics.base import METRICS, State, StreamingMetric, pack_state, unpack_state
from metrics.jackknife import stream_factory


@dataclass(frozen=True)
class WorkUnit:
    """What one worker computes: these SAEs' pending stream entries at `hook`, over `shard` of its data."""

    hook: str
    sae_ids: tuple[str, ...]
    entries: tuple[tuple[str, ...], ...]
    """Per SAE (same order as sae_ids), the stream metric entries still missing from the store."""
    shard: TokenShard
    unit_id: str
    """Content address: hook data, settings, SAE content hashes, entries and shard range."""


@dataclass(frozen=True)
class HookPlan:
    """What a worker needs to know about a hook beyond its own copy of the source (from the driver's pre-pass)."""

    hook: str
    data: HookData
    n_batches: int
    """Batches the pre-pass used (the token budget may stop before the source ends)."""
    batch_tokens: tuple[int, ...]
    """Evaluation tokens (before the norm cut) per batch: the token budget left at a shard's start."""
    batch_seqs: tuple[int, ...]
    """Sequences per batch: the global sequence index at a shard's start."""

    def shard(self, start: int, stop: int, settings: EvalSettings) -> TokenShard:
        remaining = None if settings.n_tokens is None else settings.n_tokens - sum(self.batch_tokens[:start])
        return TokenShard(start, stop, sum(self.batch_seqs[:start]), remaining)

    def for_worker(self) -> HookPlan:
        """The plan without the driver's source object (workers open their own)."""
        return replace(self, data=replace(self.data, source=_NO_SOURCE))


_NO_SOURCE = DataSource(open_batches=lambda: iter(()), description={})


def plan_prepass(hook: str, source: DataSource, settings: EvalSettings, members: Sequence[SaeLike]) -> HookPlan:
    """The norm pre-pass (engine.passes.norm_prepass) that also records each batch's token and sequence count."""
    token_filter = TokenFilter(settings)
    stats = PassStats()
    tokens, seqs = [], []
    for i, batch in enumerate(source.open_batches()):
        check_batch(batch, i, source, members)
        keep_BS = token_filter.keep_before_norm(batch)
        if keep_BS is None:
            break
        stats.add(batch, keep_BS, settings.exclude_special)
        tokens.append(int(keep_BS.sum()))
        seqs.append(int(keep_BS.shape[0]))
    data = stats.hook_data(hook, source, settings, prepassed=True)
    return HookPlan(hook, data, len(tokens), tuple(tokens), tuple(seqs))


def plan_units(
    plan: HookPlan,
    pending: dict[str, tuple[str, ...]],
    saes: dict[str, SaeLike],
    settings: EvalSettings,
    split: str,
    n_parts: int,
) -> list[WorkUnit]:
    """Units covering every pending (SAE, entry) at this hook: by SAEs (n_parts groups of SAEs, each over all
    batches) or by tokens (all SAEs, n_parts contiguous batch ranges)."""
    ids = [sid for sid in pending if pending[sid]]
    if not ids or plan.n_batches == 0:
        return []
    if split == "saes":
        n = min(n_parts, len(ids))
        groups = [ids[i::n] for i in range(n)]
        ranges = [(0, plan.n_batches)]
    else:
        groups = [ids]
        n = min(n_parts, plan.n_batches)
        cuts = [round(i * plan.n_batches / n) for i in range(n + 1)]
        ranges = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    units = []
    for group in groups:
        for start, stop in ranges:
            shard = plan.shard(start, stop, settings)
            entries = tuple(pending[sid] for sid in group)
            identity: JsonValue = {
                "hook": plan.hook,
                "data": plan.data.fingerprint,
                "settings": settings.hashed(),
                "saes": [[saes[sid].content_hash, list(e)] for sid, e in zip(group, entries, strict=True)],
                "versions": {name: METRICS.get(name).version for e in entries for name in e},
                "shard": [shard.start, shard.stop],
            }
            units.append(WorkUnit(plan.hook, tuple(group), entries, shard, stable_hash(identity)))
    return units


@torch.no_grad()
def run_unit(
    unit: WorkUnit, plan: HookPlan, source: DataSource, saes: dict[str, SaeLike], settings: EvalSettings
) -> dict[tuple[str, str], State]:
    """Run one unit on this worker's copy of the data; returns {(sae_id, entry): state}."""
    data = replace(plan.data, source=source)
    states = []
    for sid, entries in zip(unit.sae_ids, unit.entries, strict=True):
        pending: dict[str, tuple[object, StreamingMetric]] = {
            name: (None, stream_factory(METRICS.get(name), settings.stderr_blocks)(saes[sid].sae, data.ctx))
            for name in entries
        }
        wants_ds = any("model" in METRICS.get(n).requires for n in entries)
        states.append(SaeState(saes[sid], pending, wants_ds))  # type: ignore[arg-type]
    members = [saes[sid] for sid in unit.sae_ids]
    stream_pass(data, states, members, settings, (), unit.shard)
    return {(st.handle.sae_id, name): acc.state_dict() for st in states for name, (_, acc) in st.pending.items()}


def encode_unit_result(result: dict[tuple[str, str], State]) -> bytes:
    """A unit's states as one safetensors file (tensors only; numbers' kinds and keys in its metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, dict[str, str]] = {}
    index: list[list[str]] = []
    for n, ((sid, entry), state) in enumerate(result.items()):
        packed, kind = pack_state(state)
        tensors.update({f"{n}/{k}": v for k, v in packed.items()})
        kinds[str(n)] = kind
        index.append([sid, entry, *packed])
    return save_safetensors(tensors, metadata={"index": json.dumps(index), "kinds": json.dumps(kinds)})


def decode_unit_result(blob: bytes) -> dict[tuple[str, str], State]:
    tensors = load_safetensors(blob)
    meta = _metadata(blob)
    kinds = json.loads(meta["kinds"])
    out: dict[tuple[str, str], State] = {}
    for n, (sid, entry, *keys) in enumerate(json.loads(meta["index"])):
        out[(sid, entry)] = unpack_state({k: tensors[f"{n}/{k}"] for k in keys}, kinds[str(n)])
    return out


def _metadata(blob: bytes) -> dict[str, str]:
    """The metadata of a safetensors blob (its JSON header)."""
    header_len = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8 : 8 + header_len]).get("__metadata__", {}))
