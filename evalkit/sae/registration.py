"""The variants evalkit adds or changes, and their registration into sae-lens, done where a registry is first used.

One module per variant under `evalkit/sae/variants/` holds its inference and training classes, configs, score /
fold / alignment / norm-exponent rules (registered by class in evalkit.sae.score) and its test factories, and ends
with `VARIANT = Variant(...)`. Adding a variant is that one file plus its name in VARIANT_MODULES.

sae-lens looks classes up by cfg.json's `architecture` name (`SAE.load_from_disk`, `get_sae_training_class`); the
loaders and the zoo call `ensure_registered()` before such a look-up, so importing a module never registers anything.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.sae import SAE, SAEConfig, TrainingSAE, TrainingSAEConfig

from evalkit.core.registry import Registry

log = logging.getLogger(__name__)

VARIANT_MODULES = ("cosine", "topafa", "aligned_topk", "unit_encoder")
"""Modules of evalkit.sae.variants, each defining one `VARIANT`."""

SaeMaker = Callable[[int, int, torch.Generator], SAE[Any]]
"""A test factory: (d_in, d_sae, generator) -> a random inference SAE of the variant."""


@dataclass(frozen=True)
class Variant:
    """One SAE variant evalkit adds or changes, keyed by its evalkit architecture name."""

    name: str
    """The evalkit architecture name (results' `architecture` column for SAEs saved by this variant's inference
    class)."""
    inference: tuple[type[SAE[Any]], type[SAEConfig]] | None = None
    """Inference class and config, registered into sae-lens under `name`; None when it saves as a sae-lens class."""
    training: Mapping[str, tuple[type[TrainingSAE[Any]], type[TrainingSAEConfig]]] = field(default_factory=dict)
    """sae-lens training architecture name -> training class and config."""
    saved_as: Mapping[str, str] = field(default_factory=dict)
    """Training architecture name (cfg metadata `training_architecture`) -> evalkit architecture of the saved SAE,
    for training classes that save as another architecture's inference class."""
    test_factories: Mapping[str, SaeMaker] = field(default_factory=dict)
    """Name -> random test SAE factory (evalkit.sae.factory.make_sae); contract suites run every one."""


VARIANTS: Registry[Variant] = Registry("SAE variant")


def _register_into_sae_lens(variant: Variant) -> None:
    if variant.inference is not None:
        sae_cls, cfg_cls = variant.inference
        known = SAE_CLASS_REGISTRY.get(variant.name)
        if known is None:
            register_sae_class(variant.name, sae_cls, cfg_cls)
        elif known[0] is not sae_cls:
            log.debug("sae-lens already has a class for %r; keeping it", variant.name)
    for name, (train_cls, train_cfg_cls) in variant.training.items():
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, train_cls, train_cfg_cls)


def ensure_registered() -> Registry[Variant]:
    """Import every variant module and register its classes into sae-lens (idempotent); returns VARIANTS."""
    if len(VARIANTS) < len(VARIANT_MODULES):
        for module_name in VARIANT_MODULES:
            variant: Variant = importlib.import_module(f"evalkit.sae.variants.{module_name}").VARIANT
            if variant.name not in VARIANTS:
                VARIANTS.add(variant.name, variant)
            _register_into_sae_lens(variant)
    return VARIANTS


def saved_architecture(training_architecture: str) -> str | None:
    """The evalkit architecture of an SAE saved by an evalkit training class, or None if no variant trains it."""
    for _, variant in ensure_registered().items():
        if training_architecture in variant.saved_as:
            return variant.saved_as[training_architecture]
    return None
