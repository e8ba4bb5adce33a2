"""Context-dependent massive activations among ordinary tokens, planted into the last block's MLP.

Why: real LLMs (Sun et al. 2024; the cosine paper's Qwen3-8B layer 18: median token norm ~100, mean ~203,
max ~16,851) have a heavy tail of token norms whose size and direction vary with context. The first world
planted one fixed vector on `.`/`!`/`?`; those tokens held ~99% of the variance and every SAE reconstructed them
for free (explained variance 0.996-0.9998 for every SAE). The second planted six directions: 81% of the total
variance then lay in their 6-dimensional span, still nearly free. Here a tail token's extra component is a
context-dependent mix of a few of 96 directions with continuous sizes, so reconstructing it takes dictionary
capacity: on the default world the best 6-dimensional subspace holds ~20% of the variance, the best 32 ~60%.

How: the last `n_directions * neurons_per_direction` neurons of the last block's MLP are reserved (kept at zero
while the model trains) and written after training. Neuron group k reads one direction r_k of the MLP's
LayerNorm'd input and writes along its own unit direction d_k (the d_k orthonormal). The read directions are
random unit vectors inside a `read_rank`-dimensional subspace, so neighbouring ones overlap and one context
fires several groups with different strengths: the direction of the extra component varies continuously with
the context. Each group's neurons are sharp GELUs at increasing thresholds, so its extra norm is a convex,
piecewise-linear function of the projection p_k = ⟨ln2(x), r_k⟩: zero below the `anchors[0]` quantile of p_k,
then through the anchor points (quantile of p_k, extra norm in units of the median token norm), linear beyond
the last anchor (flat from `cap` on, if set). Only the final LayerNorm reads the residual stream after that MLP,
so the planted component costs those tokens some next-token accuracy (their logits are divided by a larger
norm) and nothing else; it is ordinary HookedTransformer weights, so `evalkit run --model` loads it like any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class TailSpec:
    """The planted heavy tail (all of it goes into the world's cache key)."""

    n_directions: int = 96
    """Groups of neurons; each reads its own direction of the MLP input and writes its own direction."""
    anchors: tuple[tuple[float, float], ...] = (
        (0.995, 0.0),
        (0.999, 3.0),
        (0.99995, 12.0),
    )
    """(quantile of the projection p_k over calibration tokens, extra norm / median token norm): the extra
    norm is 0 below the first quantile and passes through every point. With 96 groups a token passes some
    group's 0.999 quantile ~10% of the time, so the quantiles sit far out."""
    cap: float | None = None
    """The extra norm of one group stops growing at this multiple of the median token norm (None: it keeps
    the last slope; the projections are bounded, so the norm is too)."""
    gain: float = 40.0
    """Sharpness of each GELU in units of 1 / std(p_k): the GELU's rounded corner is std(p_k) / gain wide."""
    read_rank: int | None = 12
    """Dimension of the subspace the read directions are drawn in (None: orthonormal read directions). Small
    enough that a tail token's extra component mixes ~3 groups, large enough that 96 groups stay distinct."""
    seed: int = 0

    @property
    def neurons_per_direction(self) -> int:
        return len(self.anchors) - 1 + (self.cap is not None)  # one per slope change, plus the cap

    @property
    def n_neurons(self) -> int:
        return self.n_directions * self.neurons_per_direction


def reserved_neurons(model: HookedTransformer, tail: TailSpec) -> slice:
    """The last-block MLP neurons the tail uses (the last `n_neurons` of d_mlp)."""
    d_mlp = model.cfg.d_mlp
    assert d_mlp is not None and d_mlp > tail.n_neurons, "d_mlp too small for the planted tail"
    return slice(d_mlp - tail.n_neurons, d_mlp)


@torch.no_grad()
def clear_reserved(model: HookedTransformer, tail: TailSpec) -> None:
    """Zero the reserved neurons (called after every optimizer step, so training never uses them)."""
    mlp = model.blocks[-1].mlp
    cols = reserved_neurons(model, tail)
    mlp.W_in[:, cols] = 0.0
    mlp.b_in[cols] = 0.0
    mlp.W_out[cols] = 0.0


def tail_directions(d_model: int, tail: TailSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(read directions r [K, D], write directions d [K, D]): seeded unit rows. The write directions are
    orthonormal; the read directions are random unit vectors inside a `read_rank`-dimensional subspace, so
    neighbouring read directions overlap and one context fires several neurons with different strengths."""
    gen = torch.Generator().manual_seed(10_000 + tail.seed)
    rank = min(tail.read_rank or tail.n_directions, d_model)
    basis_DR, _ = torch.linalg.qr(torch.randn(d_model, rank, generator=gen, dtype=torch.float64))
    q_write, _ = torch.linalg.qr(torch.randn(d_model, tail.n_directions, generator=gen, dtype=torch.float64))
    if tail.read_rank is None:
        read_KD = basis_DR.T
    else:
        mix_KR = torch.randn(tail.n_directions, rank, generator=gen, dtype=torch.float64)
        read_KD = mix_KR @ basis_DR.T
        read_KD = read_KD / read_KD.norm(dim=1, keepdim=True)
    return read_KD.float(), q_write.T.float()


MIN_ANCHOR_GAP = 0.05
"""The smallest gap between two anchors' projections, in units of the projection's standard deviation."""


def piecewise_neurons(p_K: torch.Tensor, tail: TailSpec) -> tuple[list[float], list[float]]:
    """(thresholds, slope increments) in projection units, so Σ_j inc_j·relu(p − t_j) passes the anchors.

    `p_K` holds the calibration projections of one direction. Slopes only grow up to the last anchor (a
    convex tail); the last neuron cancels the final slope where the extra norm reaches `cap`.
    """
    qs = torch.tensor([q for q, _ in tail.anchors], dtype=torch.float64)
    xs = torch.quantile(p_K.double(), qs).tolist()
    ys = [y for _, y in tail.anchors]
    # Many tokens can share one projection (the same word right after BOS has the same activation): two
    # quantiles then coincide, and a slope over their zero gap would be unbounded.
    min_gap = MIN_ANCHOR_GAP * float(p_K.double().std())
    thresholds, increments, slope = [], [], 0.0
    for i in range(len(xs) - 1):
        new_slope = (ys[i + 1] - ys[i]) / max(xs[i + 1] - xs[i], min_gap)
        new_slope = max(new_slope, slope)  # keep it convex even if two quantiles coincide
        thresholds.append(xs[i])
        increments.append(new_slope - slope)
        slope = new_slope
    if tail.cap is not None:
        thresholds.append(xs[-1] + (tail.cap - ys[-1]) / max(slope, 1e-9))
        increments.append(-slope)
    return thresholds, increments


@torch.no_grad()
def mlp_inputs(model: HookedTransformer, tokens_NS: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The last block's MLP input ln2(resid_mid) for every non-first position [T, D]."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid"
    out = []
    for i in range(0, len(tokens_NS), batch_size):
        _, cache = model.run_with_cache(tokens_NS[i : i + batch_size], names_filter=name)
        out.append(model.blocks[-1].ln2(cache[name])[:, 1:].reshape(-1, model.cfg.d_model))
    return torch.cat(out)


@torch.no_grad()
def plant_tail(model: HookedTransformer, calibration_NS: torch.Tensor, median_norm: float, tail: TailSpec) -> None:
    """Write the reserved neurons so the hook carries the heavy tail described in the module docstring.

    `median_norm` is the median token norm at the hook before planting (BOS excluded); the extra norms are in
    its units. Each direction's own calibration quantiles place its neurons, so every direction fires on the
    same share of tokens with the same sizes (quantiles pooled over directions let the few directions with the
    heaviest-tailed projections take most of the tail: 6 of 96 held 87% of its variance).
    """
    mlp = model.blocks[-1].mlp
    read_KD, write_KD = tail_directions(model.cfg.d_model, tail)
    p_TK = mlp_inputs(model, calibration_NS) @ read_KD.T
    cols = list(range(model.cfg.d_mlp)[reserved_neurons(model, tail)])  # type: ignore[index]
    for k in range(tail.n_directions):
        thresholds, increments = piecewise_neurons(p_TK[:, k], tail)
        gain = tail.gain / float(p_TK[:, k].std())
        for t, inc in zip(thresholds, increments, strict=True):
            j = cols.pop(0)
            # gelu(gain·(p − t)) / gain ≈ relu(p − t), sharp on the scale of p's spread
            mlp.W_in[:, j] = gain * read_KD[k]
            mlp.b_in[j] = -gain * t
            mlp.W_out[j] = (inc * median_norm / gain) * write_KD[k]


__all__ = ["TailSpec", "clear_reserved", "plant_tail", "reserved_neurons", "tail_directions"]
