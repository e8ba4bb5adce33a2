"""Planted-truth activations: the returned truth reproduces x exactly and has the promised statistics."""

from __future__ import annotations

import pytest
import torch

from evalkit.world.planted import planted_activations


def test_truth_reproduces_activations() -> None:
    p = planted_activations(2000, d_in=48, n_features=128, seed=1)
    assert p.acts_ND.shape == (2000, 48) and p.G_FD.shape == (128, 48)
    torch.testing.assert_close(p.G_FD.norm(dim=1), torch.ones(128))
    torch.testing.assert_close(p.acts_ND, p.scale_N[:, None] * (p.codes_NF @ p.G_FD))
    assert (p.codes_NF >= 0).all()


def test_sparsity_and_heavy_tail() -> None:
    p = planted_activations(5000, d_in=64, n_features=256, mean_active=6.0, heavy_frac=0.03, seed=2)
    l0 = (p.codes_NF > 0).sum(1).float().mean()
    assert 5.0 < float(l0) < 7.0
    assert 0.02 < float(p.heavy_N.float().mean()) < 0.04
    norms = p.acts_ND.norm(dim=1)
    assert norms[p.heavy_N].median() > 15 * norms[~p.heavy_N & (norms > 0)].median()
    # Zipf-like: the most common feature fires far more often than the rarest
    rate = (p.codes_NF > 0).float().mean(0)
    assert rate[0] > 10 * rate[-1]


def test_deterministic_and_validates_d_in() -> None:
    a = planted_activations(100, seed=5)
    b = planted_activations(100, seed=5)
    assert torch.equal(a.acts_ND, b.acts_ND)
    with pytest.raises(ValueError):
        planted_activations(10, d_in=8)
