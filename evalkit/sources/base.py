"""What every activation source provides: lazy batches, a description for run.json, and the d_in check."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from evalkit.core.batch import ActivationBatch
from evalkit.core.defaults import DEFAULT_BATCH_TOKENS  # noqa: E402,F401  (one definition, light for --help)
from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import stable_hash

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class SourceInfo:
    """Where activations came from. `fingerprint` identifies the data exactly; it is part of result cache
    keys."""

    name: str
    fingerprint: str
    details: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "fingerprint": self.fingerprint, **self.details}


@runtime_checkable
class ActivationSource(Protocol):
    """Re-iterable: every `iter()` is a fresh lazy pass over the same data, batch by batch."""

    info: SourceInfo

    @property
    def model(self) -> HookedTransformer | None:
        """The model the activations come from, when the source runs one (CE/KL metrics need it); else None."""
        ...

    @property
    def hook_name(self) -> str | None:
        """The hook the activations are read at, when the source knows it."""
        ...

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the token-level label columns its batches carry; () without labels."""
        ...

    @property
    def has_tokens(self) -> bool:
        """Whether its batches carry token ids."""
        ...

    @property
    def d_in(self) -> int: ...

    def __iter__(self) -> Iterator[ActivationBatch]: ...


def fingerprint_of(parts: dict[str, object]) -> str:
    """Short stable hash of the facts that determine a source's data."""
    return stable_hash(parts, 20, compact=False)


def file_identity(path: Path) -> str:
    """Content hash of a data file (streamed, so large files cost time but not memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def check_d_in(source_d_in: int, sae_d_in: int, sae_where: str | Path, source_where: str | Path | None = None) -> None:
    """Bad input unless the SAE's d_in matches the activations'."""
    if int(source_d_in) != int(sae_d_in):
        origin = f" from {source_where}" if source_where else ""
        raise EvalkitInputError(
            sae_where, f"SAE expects d_in={sae_d_in} but the activations{origin} have d_in={source_d_in}"
        )


def seqs_per_batch(batch_tokens: int, seq_len: int) -> int:
    """`batch_tokens` counts tokens; batches hold whole sequences, at least one."""
    return max(1, int(batch_tokens) // max(1, int(seq_len)))


def special_mask(tokens_BS: torch.Tensor, special_ids: tuple[int, ...]) -> torch.Tensor:
    if not special_ids:
        return torch.zeros(tokens_BS.shape, dtype=torch.bool, device=tokens_BS.device)
    return torch.isin(tokens_BS, torch.tensor(special_ids, device=tokens_BS.device))


def positions_like(tokens_BS: torch.Tensor) -> torch.Tensor:
    n_seq, seq_len = tokens_BS.shape
    return torch.arange(seq_len, device=tokens_BS.device).expand(n_seq, seq_len).contiguous()
