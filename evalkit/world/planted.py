"""Planted-truth activations x = s · Σ_i c_i g_i, for tests that check metrics against known answers.

G has unit rows (the true dictionary); codes c are sparse and nonnegative with Zipf-like firing rates (so
features span common to rare); the per-token scale s is mostly near 1 with a heavy tail (a few tokens far
larger than the rest, like massive activations), so norm-sensitivity analyses know which tokens are "large".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PlantedActivations:
    acts_ND: torch.Tensor
    """The activations x [n_tokens, d_in]."""
    G_FD: torch.Tensor
    """True dictionary [n_features, d_in], unit rows."""
    codes_NF: torch.Tensor
    """Sparse nonnegative codes c [n_tokens, n_features]."""
    scale_N: torch.Tensor
    """Per-token scale s [n_tokens]."""
    heavy_N: torch.Tensor
    """True for the heavy-tail tokens (scale drawn from the large component) [n_tokens]."""
    firing_rate_F: torch.Tensor
    """Each feature's probability of being active on a token [n_features]."""


def planted_activations(
    n_tokens: int,
    d_in: int = 64,
    n_features: int = 256,
    mean_active: float = 6.0,
    heavy_frac: float = 0.03,
    heavy_scale: float = 30.0,
    seed: int = 0,
) -> PlantedActivations:
    """Draw `n_tokens` activations from a known sparse dictionary; deterministic from `seed`."""
    if d_in < 32:
        raise ValueError("planted activations need d_in >= 32 (random unit directions nearly orthogonal)")
    gen = torch.Generator().manual_seed(seed)
    G_FD = torch.randn(n_features, d_in, generator=gen)
    G_FD = G_FD / G_FD.norm(dim=1, keepdim=True)
    # Zipf-like firing rates scaled so that a token has `mean_active` active features on average.
    ranks = torch.arange(1, n_features + 1, dtype=torch.float32)
    rate_F = 1.0 / ranks**0.8
    rate_F = (rate_F * mean_active / rate_F.sum()).clamp(max=0.9)
    active_NF = torch.rand(n_tokens, n_features, generator=gen) < rate_F
    magnitude_NF = 0.5 + torch.rand(n_tokens, n_features, generator=gen)  # uniform on [0.5, 1.5]
    codes_NF = torch.where(active_NF, magnitude_NF, torch.zeros(()))
    heavy_N = torch.rand(n_tokens, generator=gen) < heavy_frac
    base_N = torch.exp(0.1 * torch.randn(n_tokens, generator=gen))
    scale_N = torch.where(heavy_N, base_N * heavy_scale, base_N)
    acts_ND = scale_N[:, None] * (codes_NF @ G_FD)
    return PlantedActivations(acts_ND, G_FD, codes_NF, scale_N, heavy_N, rate_F)
