"""Result identity: the config hash that keys a stored result, the key of a pass's data statistics, what a metric
needs from the data, and which SAEs still have a result to compute (found without reading the data)."""

from __future__ import annotations

from collections.abc import Sequence

from evalkit.core.identity import JsonValue, stable_hash
from evalkit.core.records import ResultKey
from evalkit.engine.passes import HookData, provisional_hook_data
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike, seed_groups
from evalkit.engine.store import ResultStore
from metrics.base import MetricSpec


def _config_hash(spec: MetricSpec, settings: EvalSettings, data: HookData, members: Sequence[str] = ()) -> str:
    payload: dict[str, JsonValue] = {
        "entry": spec.name,
        "version": spec.version,
        "settings": settings.hashed(),
        "source": data.source.description,
        "data": data.fingerprint,
        "members": sorted(members),
    }
    return stable_hash(payload)


def _data_key(data: HookData, settings: EvalSettings) -> str:
    """The store's key for what a pass measured about this hook's data (data_stats)."""
    return stable_hash({"hook": data.hook, "data": data.fingerprint, "settings": settings.hashed()})


def _unmet(spec: MetricSpec, data: HookData, has_group: bool) -> str | None:
    """Why a metric cannot run on this data, or None when it can."""
    reasons = {
        "model": None
        if data.source.model is not None
        else "needs the model (CE/KL); the source is precomputed activations",
        "tokens": None if data.has_tokens else "needs token ids; the source has none",
        "labels": None if data.label_names else "needs token-level labels (--labels or the embedded world)",
        "positions": None,
        "seed_group": None if has_group else "needs a seed group of >= 2 SAEs differing only in seed",
        "norm_stats": None,
    }
    for req in sorted(spec.requires):
        reason = reasons.get(req, f"unknown requirement {req!r}")
        if reason:
            return reason
    return None


def pending_saes(
    store: ResultStore,
    settings: EvalSettings,
    specs: Sequence[MetricSpec],
    saes: Sequence[SaeLike],
    sources: dict[str, DataSource],
    hook_of: dict[str, str],
    explicit_groups: Sequence[Sequence[str]] = (),
) -> set[str]:
    """The SAEs with a result not yet stored (a seed group's members together), found without reading data
    where the sources vouch for their fingerprints; otherwise, or with --force, every SAE."""
    groups = seed_groups(saes, explicit_groups)
    grouped = {s.sae_id for g in groups for s in g}
    pending: set[str] = set()
    data_of: dict[str, HookData] = {}
    for hook, source in sources.items():
        if settings.force or not source.known_up_front() or settings.max_norm_multiple is not None:
            pending |= {s.sae_id for s in saes if hook_of.get(s.sae_id) == hook}
            continue
        data_of[hook] = data = provisional_hook_data(hook, source, settings)
        for s in (s for s in saes if hook_of.get(s.sae_id) == hook):
            for spec in (sp for sp in specs if sp.kind != "group"):
                key = ResultKey(s.content_hash, spec.name, _config_hash(spec, settings, data))
                if _unmet(spec, data, s.sae_id in grouped) is None and not store.exists(key):
                    pending.add(s.sae_id)
    for group in groups:
        ids = {s.sae_id for s in group}
        data = data_of.get(hook_of.get(group[0].sae_id, ""))
        if ids & pending or (data is not None and _group_missing(store, settings, specs, group, data)):
            pending |= ids
    return pending


def _group_missing(
    store: ResultStore, settings: EvalSettings, specs: Sequence[MetricSpec], group: Sequence[SaeLike], data: HookData
) -> bool:
    members = [s.content_hash for s in group]
    return any(
        _unmet(spec, data, True) is None
        and not store.exists(ResultKey(s.content_hash, spec.name, _config_hash(spec, settings, data, members)))
        for spec in specs
        if spec.kind == "group"
        for s in group
    )
