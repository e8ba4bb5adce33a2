"""Stable identities: the hashes that make caching and resume exact.

A result is known by (SAE content hash, metric entry, config hash); the config hash covers the metric entry
and its version, the resolved data/eval settings and a fingerprint of the evaluation data itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

JsonScalar = str | int | float | bool | None
JsonValue = JsonScalar | list["JsonValue"] | dict[str, "JsonValue"]


def stable_hash(obj: object, length: int = 16, compact: bool = True) -> str:
    """sha256 of canonical JSON (sorted keys; no whitespace, or json's default ", "/": " separators when not
    `compact`), truncated to `length` hex digits. Values JSON cannot encode are written as str().

    The one hash evalkit keys things by. `compact=False` reproduces the keys of caches written before it was the one
    (world/zoo cache folders, source fingerprints, the autointerp caches), so existing caches stay valid."""
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(obj, sort_keys=True, separators=separators, allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor in a canonical layout (contiguous, CPU)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; its bits fit in int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def state_dict_hash(state: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """Content hash of a set of named tensors (order-independent, dtype- and shape-aware)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:length]


class DataFingerprint:
    """Streaming hash of the evaluation data: token ids when the source has them, else the activations' bytes.

    Tokens rather than activations for model sources, so a rerun on another thread count (float results that
    differ in the last bit) still recognises the same data.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.n_batches = 0

    def update(self, tokens: torch.Tensor | None, acts: torch.Tensor, keep: torch.Tensor) -> None:
        self._h.update(tensor_bytes(tokens) if tokens is not None else tensor_bytes(acts))
        self._h.update(tensor_bytes(keep))
        self.n_batches += 1

    def hexdigest(self, length: int = 16) -> str:
        return self._h.hexdigest()[:length]
