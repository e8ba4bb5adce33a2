"""LoadedSAE: one SAE as evalkit knows it, with the identities results are keyed by.

- content_hash: sha256 of the weights and the config (minus device), so it survives save → load and changes
  with any weight.
- config_without_seed_hash: the config with seed and training outcomes (l0, dead counts, versions) removed, so
  SAEs that differ only in training seed share it (automatic seed groups).
- family: architecture (+aligned) at one hook and width, for matched-reconstruction comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import SAE

from evalkit.core.identity import JsonValue, stable_hash, state_dict_hash
from evalkit.sae.registration import saved_architecture

# Keys that vary between runs of one configuration, or describe where a copy lives; dropped at every nesting
# level.
VOLATILE_KEYS = frozenset(
    {
        "seed",
        "device",
        "l0",
        "num_dead_features",
        "sae_lens_version",
        "sae_lens_training_version",
        "neuronpedia_id",
        "evalkit_zoo",  # the zoo entry's name, which carries the seed (topk_k32_seed1)
        "evalkit_training",  # steps, tokens and final loss of a zoo SAE: training outcomes
    }
)
NOT_CONTENT_KEYS = frozenset({"device"})

# sae-lens' own training architectures (kept in metadata.training_architecture) that save as another class
# (jumprelu) -> evalkit architecture name. evalkit's training variants declare theirs (`Variant.saved_as`).
SAE_LENS_TRAINING_ARCHITECTURES = {"batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka"}


@dataclass(frozen=True, eq=False)
class LoadedSAE:
    """One loaded SAE and what evalkit needs to know about it."""

    sae: SAE[Any]
    sae_id: str
    path: str
    format: str
    architecture: str
    aligned: bool
    hook_name: str | None
    model_name: str | None
    d_in: int
    d_sae: int
    seed: int | None
    family: str
    config_without_seed_hash: str
    content_hash: str
    cfg: dict[str, Any]


def to_json(value: object) -> JsonValue:
    """A plain JSON-able copy (tuples → lists, unknown objects → str)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def drop_keys(value: JsonValue, keys: frozenset[str]) -> JsonValue:
    if isinstance(value, dict):
        return {k: drop_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [drop_keys(v, keys) for v in value]
    return value


def content_hash(sae: SAE[Any]) -> str:
    state = {k: v.detach().to(torch.float32) for k, v in sae.state_dict().items()}
    cfg = drop_keys(to_json(sae.cfg.to_dict()), NOT_CONTENT_KEYS)
    return stable_hash({"weights": state_dict_hash(state, length=64), "cfg": cfg}, length=64)


def config_without_seed_hash(cfg: dict[str, Any]) -> str:
    return stable_hash(drop_keys(to_json(cfg), VOLATILE_KEYS), length=16)


def evalkit_architecture(sae: SAE[Any], cfg: dict[str, Any]) -> str:
    """The evalkit name: `evalkit_architecture`, else the training architecture, else sae-lens'."""
    metadata = cfg.get("metadata") or {}
    explicit = metadata.get("evalkit_architecture") or cfg.get("evalkit_architecture")
    if explicit:
        return str(explicit)
    trained = metadata.get("training_architecture")
    if trained in SAE_LENS_TRAINING_ARCHITECTURES:
        return SAE_LENS_TRAINING_ARCHITECTURES[trained]
    saved_as = saved_architecture(str(trained)) if trained else None
    if saved_as is not None:
        return saved_as
    return str(sae.cfg.architecture())


def find_seed(cfg: dict[str, Any]) -> int | None:
    """`seed` at top level, in metadata, or in a dictionary_learning trainer block."""
    for block in (cfg, cfg.get("metadata") or {}, cfg.get("trainer") or {}):
        seed = block.get("seed") if isinstance(block, dict) else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def make_loaded(sae: SAE[Any], cfg: dict[str, Any], sae_id: str, path: str, fmt: str) -> LoadedSAE:
    """Attach identity to a built SAE; `cfg` is the plain config (as in the file, plus loader additions)."""
    metadata = cfg.get("metadata") or {}
    architecture = evalkit_architecture(sae, cfg)
    aligned = bool(
        metadata.get("aligned") or cfg.get("aligned") or metadata.get("training_architecture") == "aligned_topk"
    )
    hook_name = sae.cfg.metadata.hook_name
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    # Per-feature cosine exponents are a different variant from the global one: never one sweep.
    qualifiers = ("+aligned" if aligned else "") + ("+perfeature" if getattr(sae.cfg, "per_feature", False) else "")
    family = f"{architecture}{qualifiers}|{hook_name or '?'}|{d_sae}"
    return LoadedSAE(
        sae=sae,
        sae_id=sae_id,
        path=path,
        format=fmt,
        architecture=architecture,
        aligned=aligned,
        hook_name=hook_name,
        model_name=sae.cfg.metadata.model_name,
        d_in=d_in,
        d_sae=d_sae,
        seed=find_seed(cfg),
        family=family,
        config_without_seed_hash=config_without_seed_hash(cfg),
        content_hash=content_hash(sae),
        cfg=dict(to_json(cfg)),  # type: ignore[arg-type]
    )
