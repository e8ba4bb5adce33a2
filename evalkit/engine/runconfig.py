"""What the runner is given: resolved settings, a data source, and the SAEs (with their identities)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import JsonValue, stable_hash, state_dict_hash


@dataclass(frozen=True)
class EvalSettings:
    """The resolved evaluation settings; everything except `device` and `force` enters the config hash."""

    n_tokens: int | None = None
    """Evaluation tokens (after special-token exclusion); None = all the source yields."""
    batch_size: int = 4096
    """Tokens per batch (the source rounds down to whole sequences)."""
    seq_len: int | None = None
    exclude_special: bool = True
    max_norm_multiple: float | None = None
    dtype: str = "float32"
    seed: int = 0
    stderr_blocks: int = 32
    """Jackknife blocks of whole sequences for token-level standard errors (metrics.jackknife); 0 = none."""
    device: str = "cpu"
    force: bool = False

    def hashed(self) -> dict[str, JsonValue]:
        d = dataclasses.asdict(self)
        d.pop("device")
        d.pop("force")
        return d


@dataclass
class DataSource:
    """Batches for one hook; `open_batches` is called once per pass and must yield the same data each time."""

    open_batches: Callable[[], Iterable[ActivationBatch]]
    description: dict[str, JsonValue]
    """What the data is (kind, path/model/dataset, hook); recorded in run.json, hashed into config hashes."""
    model: Any = None
    """The transformer-lens model when the source runs one (enables downstream metrics)."""
    hook_name: str | None = None
    fingerprint: str | None = None
    """The source's own exact identity of its data, when it has one; None = the runner hashes the data."""
    has_tokens: bool | None = None
    label_names: tuple[str, ...] | None = None
    """Known up front (lets the runner skip its norm pre-pass when no metric needs norms); None = unknown."""
    d_in: int | None = None
    """Width of the activations, when known before the pass (the pre-flight checks every SAE against it)."""
    open_batches_from: Callable[[int], Iterable[ActivationBatch]] | None = None
    """The batches from index `start` on, the same as `open_batches()` would yield them, without computing the
    skipped ones (a split run's token shards); None = read and drop them."""

    def known_up_front(self) -> bool:
        return self.fingerprint is not None and self.has_tokens is not None and self.label_names is not None


class SaeLike(Protocol):
    """What the runner reads from a loaded SAE (evalkit.sae.LoadedSAE satisfies it)."""

    sae: Any
    sae_id: str
    path: str
    architecture: str
    family: str
    hook_name: str | None
    d_in: int
    d_sae: int
    seed: int | None
    content_hash: str
    config_without_seed_hash: str


@dataclass
class SaeHandle:
    """A minimal SaeLike for SAEs built in code (tests, benchmarks)."""

    sae: Any
    sae_id: str
    path: str
    architecture: str
    family: str
    hook_name: str | None
    d_in: int
    d_sae: int
    seed: int | None
    content_hash: str
    config_without_seed_hash: str
    cfg: dict[str, JsonValue] = field(default_factory=dict)


def handle_from_sae(
    sae: Any, sae_id: str, path: str = "", seed: int | None = None, family: str | None = None
) -> SaeHandle:
    """Wrap an in-memory sae-lens SAE; its identity is the hash of its weights and architecture."""
    arch = str(sae.cfg.architecture())
    cfg = {k: v for k, v in sae.cfg.to_dict().items() if isinstance(v, str | int | float | bool) or v is None}
    meta = sae.cfg.metadata
    hook = getattr(meta, "hook_name", None)
    content = state_dict_hash({k: v for k, v in sae.state_dict().items()}) + arch
    return SaeHandle(
        sae=sae,
        sae_id=sae_id,
        path=path or sae_id,
        architecture=arch,
        family=family or f"{arch}|{hook or '?'}|{sae.cfg.d_sae}",  # as evalkit.sae.loaded writes it
        hook_name=hook,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        seed=seed,
        content_hash=stable_hash(content),
        config_without_seed_hash=stable_hash({"arch": arch, **cfg}),
        cfg=cfg,
    )


def seed_groups(saes: Sequence[SaeLike], explicit: Sequence[Sequence[str]] = ()) -> list[list[SaeLike]]:
    """Groups of ≥2 SAEs differing only in seed: `--seed-group` lists, else by config-without-seed."""
    if explicit:
        # An SAE is named by its path (relative or absolute) or its sae_id.
        by_name = {s.sae_id: s for s in saes} | {str(Path(s.path).resolve()): s for s in saes}

        def find(name: str) -> SaeLike:
            found = by_name.get(name) or by_name.get(str(Path(name).resolve()))
            if found is None:
                raise EvalkitInputError("--seed-group", f"{name} is not one of the --sae paths or SAE ids")
            return found

        groups = [[find(n) for n in names] for names in explicit]
        return [g for g in groups if len(g) >= 2]
    buckets: dict[str, list[SaeLike]] = {}
    for s in saes:
        buckets.setdefault(s.config_without_seed_hash, []).append(s)
    return [g for g in buckets.values() if len(g) >= 2]
