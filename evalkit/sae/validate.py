"""Config and weight checks every SAE passes before any work: no silent defaults, no out-of-range values.

sae-lens fills a missing field with its dataclass default (a topk cfg.json without `k` loads with k = 100), so a
field that decides what the SAE computes must be given explicitly. Checks are per architecture, looked up from
the config class sae-lens registered for it, so a newly registered variant with a `k` field is checked without
being listed here. Every failure is one EvalkitInputError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from evalkit.core.errors import EvalkitInputError

MUST_BE_GIVEN = ("k",)
"""Config fields that change the SAE's output and have a sae-lens default: required whenever the architecture's
config class has them (topk, abstopk, cosine, ...)."""
THRESHOLD_KEYS = ("threshold", "log_threshold")
"""Weights holding JumpReLU / batch-top-k thresholds: finite and >= 0 (a negative one was never calibrated)."""
KNOWN_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16", "torch.float32", "torch.float64"})


def _field_names(cfg_cls: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg_cls)} if dataclasses.is_dataclass(cfg_cls) else set()


def _positive_int(cfg: Mapping[str, Any], name: str, where: Path | str) -> int:
    value = cfg.get(name)
    if value is None:
        raise EvalkitInputError(where, f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise EvalkitInputError(where, f"field {name!r} must be an integer, got {value!r}")
    if value <= 0:
        raise EvalkitInputError(where, f"field {name!r} must be > 0, got {value!r}")
    return int(value)


def validate_config(cfg: Mapping[str, Any], cfg_cls: type[Any], where: Path | str, explicit: bool = True) -> None:
    """Shape fields positive, architecture fields present (when `explicit`) and in range, dtype known."""
    architecture = str(cfg.get("architecture", "?"))
    _positive_int(cfg, "d_in", where)
    d_sae = _positive_int(cfg, "d_sae", where)
    fields = _field_names(cfg_cls)
    for name in (n for n in MUST_BE_GIVEN if n in fields):
        if name not in cfg:
            if explicit:
                raise EvalkitInputError(
                    where, f"missing field {name!r}, required for architecture {architecture} (no default is guessed)"
                )
            continue
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= d_sae:
            raise EvalkitInputError(where, f"field {name!r} must satisfy 0 < {name} <= d_sae ({d_sae}), got {value!r}")
    dtype = cfg.get("dtype")
    if dtype is not None and str(dtype) not in KNOWN_DTYPES:
        raise EvalkitInputError(where, f"field 'dtype' must be a floating-point dtype name, got {dtype!r}")


def validate_weights(state: Mapping[str, torch.Tensor], architecture: str, where: Path | str) -> None:
    """Floating-point weights only (integer/bool weights are refused, not cast); JumpReLU thresholds >= 0.

    Cosine SAEs keep θ = −1 on purpose (not learned yet: batch top-k fallback), so only the JumpReLU family is
    held to θ >= 0."""
    for name, tensor in sorted(state.items()):
        if not tensor.is_floating_point():
            raise EvalkitInputError(
                where,
                f"weight {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; SAE weights must be "
                "floating point (integer/bool weights are refused, not cast)",
            )
    if not architecture.startswith("jumprelu"):
        return
    for name in (n for n in THRESHOLD_KEYS if n in state and n != "log_threshold"):
        n_neg = int((state[name] < 0).sum())
        if n_neg:
            raise EvalkitInputError(
                where,
                f"weight {name!r} has {n_neg} negative value(s); a JumpReLU/batch-top-k threshold is >= 0 "
                "(a negative one was never calibrated)",
            )
