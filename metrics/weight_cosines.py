"""Cosines between an SAE's own latents (decoder rows, encoder columns), from blocks of their Gram matrix.

At real sizes these are the costliest weights computations: d_sae²·d_in/2 multiply-adds per matrix (at d_sae
24,576 and d_in 768, 232 G), whatever the token count. Several metrics read the decoder's cosines
(`decoder_eps`: max, mean and duplicate pairs of |cos|; `saebench_weights`: each row's largest signed cosine),
so `decoder_cosines(sae)` computes everything they need in ONE blocked pass and keeps it per SAE: the second
metric to ask gets the cached summary (O(d_sae) floats). The cache holds the SAE weakly and is keyed on the
decoder tensor's storage and version, so an SAE that is trained further is measured again.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

GRAM_BLOCK = 1024
"""Rows per block of a Gram pass: memory is block × d_sae floats, never d_sae × d_sae."""
DUPLICATE_COSINE = 0.99
"""Two unit decoder rows with |cos| above this count as a duplicate pair (docs/metrics.md, evalkit)."""


def unit_rows_f32(vectors_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float64 and rounded to float32 (zero rows stay zero), on the CPU."""
    return torch.nn.functional.normalize(vectors_FD.detach().to("cpu", torch.float64), dim=-1).float()


@dataclass(frozen=True)
class DecoderCosines:
    """What the decoder metrics read from one pass over the decoder's Gram matrix."""

    abs_max: float
    """max over i < j of |cos(d_i, d_j)| (0 with fewer than two rows)."""
    abs_mean: float
    """mean over i < j of |cos(d_i, d_j)|."""
    duplicate_pairs: int
    """pairs i < j with |cos| > DUPLICATE_COSINE."""
    max_signed_F: torch.Tensor | None = None
    """Per row, the largest signed cosine to any other row [d_sae] (float64; -inf for a single row); None when
    the pass was not asked for it (two more reductions per block)."""


def decoder_cosine_pass(W_dec_FD: torch.Tensor, block: int = GRAM_BLOCK, signed_max: bool = True) -> DecoderCosines:
    """One pass over the upper-triangle blocks of the unit rows' Gram matrix (rows I against rows ≥ I).

    Pairs i < j: in the leading (diagonal) square of each block its strict upper triangle, right of it every
    entry, so every unordered pair is seen once; |cos| is summed per row (float32, then float64) and its max and
    the duplicate count taken without writing |cos| out (the count only in blocks whose max exceeds the cut).
    With `signed_max`, each block also updates its rows' and its columns' signed maxima (diagonal masked).
    Products in float32: a cosine to ~1e-7.
    """
    unit_FD = unit_rows_f32(W_dec_FD)
    h = unit_FD.shape[0]
    max_F = torch.full((h,), -math.inf, dtype=torch.float32) if signed_max else None
    total, largest, duplicates = 0.0, 0.0, 0
    for start in range(0, h, block):
        sims = unit_FD[start : start + block] @ unit_FD[start:].T
        n = sims.shape[0]
        square = sims[:, :n].abs().triu_(diagonal=1)  # a copy: block × block
        rest = sims[:, n:]
        total += float(square.sum(dim=1).double().sum())
        total += float(torch.linalg.vector_norm(rest, ord=1, dim=1).double().sum())
        block_max = float(square.max())
        if rest.numel():
            lo, hi = torch.aminmax(rest)
            block_max = max(block_max, float(hi), -float(lo))
        largest = max(largest, block_max)
        if block_max > DUPLICATE_COSINE:  # rare: only blocks holding a duplicate pair are counted
            duplicates += int((square > DUPLICATE_COSINE).sum()) + int((rest.abs() > DUPLICATE_COSINE).sum())
        if max_F is not None:
            rows = torch.arange(n)
            sims[rows, rows] = -math.inf
            max_F[start : start + n] = torch.maximum(max_F[start : start + n], sims.max(dim=1).values)
            max_F[start:] = torch.maximum(max_F[start:], sims.max(dim=0).values)
    mean = total / (h * (h - 1) / 2) if h >= 2 else 0.0
    return DecoderCosines(largest if h >= 2 else 0.0, mean, duplicates, None if max_F is None else max_F.double())


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[object, ...], DecoderCosines]] = (
    weakref.WeakKeyDictionary()
)


def _weights_key(W: torch.Tensor) -> tuple[object, ...]:
    """Changes whenever the tensor's values can have changed (in-place update, new storage)."""
    return (W.data_ptr(), W._version, tuple(W.shape), W.dtype, str(W.device))


def decoder_cosines(sae: torch.nn.Module, signed_max: bool = False) -> DecoderCosines:
    """The decoder cosine summary of `sae`, computed once per SAE (and weights version) for every metric; a
    summary without the per-row signed maxima is computed again only for a caller that needs them."""
    key = _weights_key(sae.W_dec)
    cached = _CACHE.get(sae)
    if cached is not None and cached[0] == key and (cached[1].max_signed_F is not None or not signed_max):
        return cached[1]
    summary = decoder_cosine_pass(sae.W_dec, signed_max=signed_max)
    _CACHE[sae] = (key, summary)
    return summary


def clear_decoder_cosines() -> None:
    """Forget every kept summary (benchmarks that time the pass itself on the same SAE objects)."""
    _CACHE.clear()


def max_cosine_to_others(vectors_FD: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """For each row, the largest cosine with any other row (signed, as SAEBench) [F] (float64): the same blocked
    pass (symmetric, so F²·d/2 multiply-adds in float32, memory `block` × F floats)."""
    unit_FD = unit_rows_f32(vectors_FD)
    n = unit_FD.shape[0]
    out_F = torch.full((n,), -math.inf, dtype=torch.float32)
    for start in range(0, n, block):
        sims_BF = unit_FD[start : start + block] @ unit_FD[start:].T
        rows = torch.arange(sims_BF.shape[0])
        sims_BF[rows, rows] = -math.inf
        out_F[start : start + block] = torch.maximum(out_F[start : start + block], sims_BF.max(dim=1).values)
        out_F[start:] = torch.maximum(out_F[start:], sims_BF.max(dim=0).values)
    return out_F.double()
