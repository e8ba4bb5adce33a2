"""Seed stability: permuted copies, random dictionaries (analytic expectation), approx vs Hungarian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from scipy import integrate, stats
from scipy.optimize import linear_sum_assignment

from evalkit.core.records import EvalContext, MetricValue
from metrics.matching import match_approx, match_dictionaries, match_exact, unit
from metrics.stability import seed_stability

CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=1)


def make_sae(W_dec_FD: torch.Tensor, W_enc_DF: torch.Tensor) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=W_dec_FD.shape[1], d_sae=W_dec_FD.shape[0]))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec_FD)
        sae.W_enc.copy_(W_enc_DF)
    return sae


def random_sae(d_sae: int, d_in: int, seed: int) -> StandardSAE:
    gen = torch.Generator().manual_seed(seed)
    return make_sae(torch.randn(d_sae, d_in, generator=gen), torch.randn(d_in, d_sae, generator=gen))


def sae_level(values: list[MetricValue]) -> dict[str, float]:
    return {v.metric: v.value for v in values if v.latent is None}


def per_latent(values: list[MetricValue]) -> dict[int, float]:
    return {v.latent: v.value for v in values if v.metric == "seed_match_cos" and v.latent is not None}


def expected_max_cosine(n: int, d: int) -> float:
    """E[max of n cosines] between a fixed unit vector and n independent uniform unit vectors in R^d.

    The cosine t of a uniform unit vector with a fixed one has (t + 1)/2 ~ Beta((d−1)/2, (d−1)/2), so
    E[max] = ∫_{−1}^{1} (1 − F(t)^n) dt − 1 (the mean of a variable on [−1, 1] from its CDF).
    """
    beta = stats.beta((d - 1) / 2, (d - 1) / 2)
    tail, _ = integrate.quad(lambda t: 1.0 - beta.cdf((t + 1) / 2) ** n, -1.0, 1.0, limit=200)
    return tail - 1.0


def test_permuted_copy_is_fully_stable() -> None:
    a = random_sae(300, 32, seed=1)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    scale = torch.rand(300, generator=torch.Generator().manual_seed(3)) + 0.5  # cosines ignore row scale
    b = make_sae(a.W_dec.detach()[perm] * scale.unsqueeze(1), a.W_enc.detach()[:, perm] * 2.0)
    out = seed_stability({"a": a, "b": b}, CTX)
    for sae_id in ("a", "b"):
        agg = sae_level(out[sae_id])
        assert agg["seed_stability_matched_cos"] == pytest.approx(1.0, abs=1e-6)
        assert agg["seed_stability_shared_frac"] == 1.0
        assert agg["seed_stability_mmcs"] == pytest.approx(1.0, abs=1e-6)
        assert min(per_latent(out[sae_id]).values()) == pytest.approx(1.0, abs=1e-6)
    approx = match_approx(unit(a.W_dec), unit(b.W_dec))
    assert np.array_equal(approx.cols[np.argsort(approx.rows)], np.argsort(perm.numpy()))


def test_independent_random_dictionaries_match_analytic_expectation() -> None:
    n, d = 512, 64
    a, b = random_sae(n, d, seed=4), random_sae(n, d, seed=5)
    agg = sae_level(seed_stability({"a": a, "b": b}, CTX)["a"])
    expected = expected_max_cosine(n, d)
    assert 0.3 < expected < 0.5  # sanity of the integral itself: ≈ 0.37 for n = 512, d = 64
    assert agg["seed_stability_mmcs"] == pytest.approx(expected, abs=0.01)
    assert agg["seed_stability_shared_frac"] == 0.0  # a cosine of 0.7 is ~6σ out for d = 64
    # The matched mean against Hungarian computed here, independently, in float64.
    A = a.W_dec.detach().double()
    B = b.W_dec.detach().double()
    cos = ((A / A.norm(dim=1, keepdim=True)) @ (B / B.norm(dim=1, keepdim=True)).T).numpy()
    rows, cols = linear_sum_assignment(-cos)
    assert agg["seed_stability_matched_cos"] == pytest.approx(cos[rows, cols].mean(), abs=1e-6)
    assert agg["seed_stability_matched_cos"] < agg["seed_stability_mmcs"]


@pytest.mark.parametrize("d_in", [64, pytest.param(768, marks=pytest.mark.slow)])
def test_approximate_matching_within_001_of_hungarian_at_4096(d_in: int) -> None:
    gen = torch.Generator().manual_seed(d_in)
    A, B = unit(torch.randn(4096, d_in, generator=gen)), unit(torch.randn(4096, d_in, generator=gen))
    exact, approx = match_exact(A, B), match_approx(A, B)
    assert len(set(approx.rows.tolist())) == len(set(approx.cols.tolist())) == 4096  # one-to-one and full
    assert abs(approx.cos.mean() - exact.cos.mean()) <= 0.01
    assert approx.cos.mean() <= exact.cos.mean() + 1e-9  # Hungarian is optimal
    np.testing.assert_allclose(approx.best_A, exact.best_A, atol=1e-5)
    np.testing.assert_allclose(approx.best_B, exact.best_B, atol=1e-5)


def test_approximate_matching_on_related_dictionaries() -> None:
    gen = torch.Generator().manual_seed(9)
    A = unit(torch.randn(2048, 32, generator=gen))
    B = unit(A[torch.randperm(2048, generator=gen)] + 0.2 * torch.randn(2048, 32, generator=gen))
    exact, approx = match_exact(A, B), match_approx(A, B)
    assert abs(approx.cos.mean() - exact.cos.mean()) <= 0.01


def test_exact_threshold_routes_to_approximation() -> None:
    a, b = random_sae(200, 16, seed=6), random_sae(200, 16, seed=7)
    exact = match_dictionaries(a.W_dec, b.W_dec)
    approx = match_dictionaries(a.W_dec, b.W_dec, exact_max=100)
    assert abs(approx.cos.mean() - exact.cos.mean()) <= 0.01


def test_group_of_three_averages_pairs() -> None:
    a = random_sae(120, 16, seed=10)
    b = make_sae(a.W_dec.detach().flip(0), a.W_enc.detach().flip(1))  # a permuted copy of a
    c = random_sae(120, 16, seed=11)
    out = seed_stability({"a": a, "b": b, "c": c}, CTX)
    ac = sae_level(seed_stability({"a": a, "c": c}, CTX)["a"])
    agg_a = sae_level(out["a"])
    assert agg_a["seed_stability_matched_cos"] == pytest.approx((1.0 + ac["seed_stability_matched_cos"]) / 2)
    assert agg_a["seed_stability_shared_frac"] == pytest.approx((1.0 + ac["seed_stability_shared_frac"]) / 2)
    assert min(per_latent(out["a"]).values()) == pytest.approx(1.0, abs=1e-6)  # best over its two pairs
    assert seed_stability({"solo": a}, CTX) == {"solo": []}
