"""Alignment metrics against planted encoder–decoder geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import GatedSAE, GatedSAEConfig, StandardSAE, StandardSAEConfig

from evalkit.core.records import EvalContext, MetricValue
from metrics.alignment import alignment_metric, alignment_scores, bimodality_coefficient, gmm_separation
from metrics.base import METRICS

CTX = EvalContext(median_norm=4.0, norm_q25=3.0, norm_q75=5.0, n_tokens=100, seed=0)


def planted_sae(alpha_F: torch.Tensor, d_in: int = 16) -> StandardSAE:
    """W_dec rows random with norm 2; W_enc[:, i] = α_i·d_i/‖d_i‖² so ⟨W_enc[:,i], d_i⟩ = α_i exactly."""
    d_sae = alpha_F.numel()
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    gen = torch.Generator().manual_seed(1)
    dirs_FD = torch.randn(d_sae, d_in, generator=gen)
    dec_FD = 2.0 * dirs_FD / dirs_FD.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(dec_FD)
        sae.W_enc.copy_((alpha_F.unsqueeze(1) * dec_FD / 4.0).T)
    return sae


def by_name(values: list[MetricValue]) -> dict[str, float]:
    return {v.metric: v.value for v in values if v.latent is None}


def per_latent(values: list[MetricValue], name: str) -> np.ndarray:
    rows = sorted((v.latent, v.value) for v in values if v.metric == name and v.latent is not None)
    return np.array([v for _, v in rows])


def two_mode_alpha(n_per_mode: int = 100) -> torch.Tensor:
    jitter = torch.linspace(-0.03, 0.03, n_per_mode, dtype=torch.float64)
    return torch.cat([1.0 + jitter, 0.2 + jitter])


def test_registered_names_match_contract() -> None:
    spec = METRICS.get("alignment")
    assert set(spec.produces) == {
        "alignment_mean",
        "alignment_median",
        "alignment_frac_unit",
        "alignment_bimodality_coefficient",
        "alignment_gmm_separation",
    }
    assert set(spec.per_latent) == {"alignment_score", "alignment_cosine"}


def test_two_planted_modes() -> None:
    alpha = two_mode_alpha()
    values = alignment_metric(planted_sae(alpha), CTX)
    agg = by_name(values)
    np.testing.assert_allclose(per_latent(values, "alignment_score"), alpha.numpy(), atol=1e-5)
    assert agg["alignment_mean"] == pytest.approx(0.6, abs=1e-5)
    assert agg["alignment_median"] == pytest.approx(0.6, abs=1e-5)  # midpoint of 0.23 and 0.97
    assert agg["alignment_frac_unit"] == pytest.approx(0.5)
    assert agg["alignment_bimodality_coefficient"] > 0.555
    # Two modes 0.8 apart with σ ≈ 0.0175 each: the separation is ≈ 0.8/0.0175 ≈ 46.
    assert agg["alignment_gmm_separation"] > 20
    # cos(W_enc[:,i], d_i) = sign(α_i) = 1 for every planted latent.
    np.testing.assert_allclose(per_latent(values, "alignment_cosine"), 1.0, atol=1e-5)


def test_unimodal_is_not_bimodal() -> None:
    gen = torch.Generator().manual_seed(3)
    alpha = 1.0 + 0.1 * torch.randn(400, generator=gen, dtype=torch.float64)
    agg = by_name(alignment_metric(planted_sae(alpha), CTX))
    assert agg["alignment_bimodality_coefficient"] < 0.555
    assert agg["alignment_gmm_separation"] == 0.0
    unit_share = float(((alpha - 1).abs() <= 0.1).double().mean())
    assert agg["alignment_frac_unit"] == pytest.approx(unit_share, abs=1e-9)


def test_sarle_coefficient_by_hand() -> None:
    values = np.array([0.0, 0.1, 0.1, 0.2, 1.0, 1.1, 1.3, 2.0])
    n = values.size
    dev = values - values.mean()
    m2, m3, m4 = (dev**2).mean(), (dev**3).mean(), (dev**4).mean()
    g1, g2 = m3 / m2**1.5, m4 / m2**2 - 3
    skew = math.sqrt(n * (n - 1)) / (n - 2) * g1
    kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    expected = (skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    assert bimodality_coefficient(values) == pytest.approx(expected, rel=1e-12)


def test_gmm_separation_is_seeded() -> None:
    alpha = two_mode_alpha().numpy()
    assert gmm_separation(alpha, 0) == gmm_separation(alpha, 0)


def test_gated_uses_magnitude_path() -> None:
    sae = GatedSAE(GatedSAEConfig(d_in=8, d_sae=5))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(8)[:5])
        sae.W_enc.copy_(0.5 * torch.eye(8)[:, :5])
        sae.r_mag.copy_(torch.log(torch.tensor([1.0, 2.0, 4.0, 1.0, 1.0])))
    alpha = alignment_scores(sae, CTX)
    np.testing.assert_allclose(alpha.numpy(), [0.5, 1.0, 2.0, 0.5, 0.5], atol=1e-6)


def test_cosine_slope_matches_its_score() -> None:
    """For x_c = c·d_i at norm m, the cosine score rises by c·α_i from its bias (docs/metrics.md's slope)."""
    from evalkit.sae.score import score
    from evalkit.sae.variants.cosine import CosineSAE, CosineSAEConfig

    sae = CosineSAE(CosineSAEConfig(d_in=8, d_sae=4, k=2, per_feature=True))
    with torch.no_grad():
        sae.W_dec.copy_(2.0 * torch.eye(8)[:4])  # ‖d_i‖ = 2
        W_enc = torch.eye(8)[:, :4] + 0.3 * torch.eye(8)[:, 4:8]  # cos(W_enc[:,i], d_i) = 1/√1.09
        sae.W_enc.copy_(W_enc)
        sae.b_dec.zero_()
        sae.b_enc.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        sae.a.copy_(torch.tensor([0.0, 0.5, 1.0, 0.25]))
        sae.b.copy_(torch.log(torch.tensor([3.0, 1.0, 2.0, 0.5])))
    alpha = alignment_scores(sae, CTX).numpy()
    cos = 1 / math.sqrt(1.09)
    expected = np.array([3.0 * 4.0**-1.0, 1.0 * 4.0**-0.5, 2.0 * 1.0, 0.5 * 4.0**-0.75]) * 2.0 * cos
    np.testing.assert_allclose(alpha, expected, rtol=1e-6)
    c = CTX.median_norm / 2.0
    with torch.no_grad():
        scores_FF = score(sae, c * sae.W_dec)  # row i: the input c·d_i, whose norm is the median norm m
        rise_F = scores_FF.diagonal() - sae.b_enc
    np.testing.assert_allclose(rise_F.numpy() / c, alpha, rtol=1e-5)
