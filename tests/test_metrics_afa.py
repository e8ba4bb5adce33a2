"""AFA ε_LBO and decoder quasi-orthogonality against exact and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.afa import AfaEpsilon, decoder_eps, decoder_eps_metric, decoder_gram_stats

CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=10)


def sae_level(values: list[MetricValue]) -> dict[str, float]:
    return {v.metric: v.value for v in values if v.latent is None}


def stream(sae: StandardSAE, x_TD: torch.Tensor, f_TF: torch.Tensor, n_batches: int = 2) -> dict[str, float]:
    acc = AfaEpsilon(sae, CTX)
    for x, f in zip(x_TD.chunk(n_batches), f_TF.chunk(n_batches), strict=True):
        acc.update(SaeBatch(sae=sae, x_TD=x, x_hat_TD=x, f_TF=f, positions_T=torch.zeros(len(x))))
    return sae_level(acc.compute())


def test_orthonormal_dictionary_with_exact_codes_has_zero_eps() -> None:
    """Orthonormal decoder rows, b_dec orthogonal to them, x = f·W_dec + b_dec: ‖f̃‖ = ‖x‖ exactly."""
    q_DD, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=6))
    with torch.no_grad():
        sae.W_dec.copy_(q_DD[:6].float())
        sae.W_enc.copy_(q_DD[:6].T.float())
        sae.b_enc.zero_()
        sae.b_dec.copy_(0.5 * q_DD[7].float())
    f_true = torch.rand(50, 6).relu() * (torch.rand(50, 6) < 0.6)
    f_true[:, 0] += 0.1  # every token has a code
    x_TD = f_true @ sae.W_dec.detach() + sae.b_dec.detach()
    with torch.no_grad():
        f_TF = sae.encode(x_TD)
    torch.testing.assert_close(f_TF, f_true, atol=1e-5, rtol=0)
    agg = stream(sae, x_TD, f_TF)
    for name in ("afa_eps_lbo_median", "afa_eps_lbo_mean", "afa_eps_lbo_p90", "afa_rel_error_median"):
        assert 0.0 <= agg[name] < 1e-6, name
    assert agg["afa_zero_code_tokens"] == 0


def test_two_atoms_by_hand() -> None:
    """d_1 = (1, 0), d_2 = 2·(cos 60°, sin 60°), b_dec = 0.
    Token 1: f = (1, 0.5): x = (1.5, √3/2), ‖x‖² = 3, ‖f̃‖² = 1 + 1 = 2 → ε = |3 − 2|/(1·2) = 0.5,
             relative error |√2 − √3|/√3.
    Token 2: f = (2, 0): x = (2, 0), ‖f̃‖ = ‖x‖ = 2 → ε = 0, error 0.
    Token 3: f = 0 → ‖f̃‖ = 0: counted, excluded."""
    sae = StandardSAE(StandardSAEConfig(d_in=2, d_sae=2))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [1.0, math.sqrt(3.0)]]))
        sae.b_dec.zero_()
    f_TF = torch.tensor([[1.0, 0.5], [2.0, 0.0], [0.0, 0.0]])
    x_TD = torch.tensor([[1.5, math.sqrt(3.0) / 2], [2.0, 0.0], [0.3, 0.0]])
    agg = stream(sae, x_TD, f_TF, n_batches=3)
    assert agg["afa_zero_code_tokens"] == 1
    assert agg["afa_eps_lbo_mean"] == pytest.approx(0.25, abs=1e-6)
    assert agg["afa_eps_lbo_median"] == pytest.approx(0.25, abs=1e-6)  # midpoint of {0, 0.5}
    assert agg["afa_eps_lbo_p90"] == pytest.approx(0.45, abs=1e-6)  # linear interpolation at 0.9
    rel_1 = abs(math.sqrt(2.0) - math.sqrt(3.0)) / math.sqrt(3.0)
    assert agg["afa_rel_error_median"] == pytest.approx(rel_1 / 2, abs=1e-6)


def test_bias_counts_as_one_more_atom() -> None:
    """x = e_1 + b_dec with b_dec ⟂ e_1: ‖f̃‖² = 1 + ‖b_dec‖² = ‖x‖², so ε = 0."""
    sae = StandardSAE(StandardSAEConfig(d_in=3, d_sae=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(3))
        sae.b_dec.copy_(torch.tensor([0.0, 0.0, 2.0]))
    x_TD = torch.tensor([[1.0, 0.0, 2.0]])
    agg = stream(sae, x_TD, torch.tensor([[1.0, 0.0, 0.0]]), n_batches=1)
    assert agg["afa_eps_lbo_mean"] == pytest.approx(0.0, abs=1e-7)


def test_rescaled_topk_atoms_are_unit() -> None:
    """sae-lens top-k with rescale_acts_by_decoder_norm decodes f_i·d_i/‖d_i‖: the atom norm is 1."""
    sae = TopKSAE(TopKSAEConfig(d_in=4, d_sae=4, k=2, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_dec.copy_(3.0 * torch.eye(4))
        sae.b_dec.zero_()
    f_TF = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    with torch.no_grad():
        x_TD = sae.decode(f_TF)
    torch.testing.assert_close(x_TD, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    agg = stream(sae, x_TD, f_TF, n_batches=1)
    assert agg["afa_eps_lbo_mean"] == pytest.approx(0.0, abs=1e-7)


def dense_decoder_eps(W_FD: torch.Tensor) -> tuple[float, float]:
    d_hat = W_FD.double() / W_FD.double().norm(dim=1, keepdim=True)
    gram = (d_hat @ d_hat.T).abs()
    off = ~torch.eye(len(gram), dtype=torch.bool)
    return float(gram[off].max()), float(gram[off].mean())


@pytest.mark.parametrize(("h", "block"), [(300, 64), (257, 300), (130, 1)])
def test_blocked_decoder_eps_equals_dense(h: int, block: int) -> None:
    W_FD = torch.randn(h, 16) * torch.rand(h, 1) * 3
    eps_max, eps_mean = decoder_eps(W_FD, block=block)
    dense_max, dense_mean = dense_decoder_eps(W_FD)
    assert eps_max == pytest.approx(dense_max, rel=1e-5)
    assert eps_mean == pytest.approx(dense_mean, rel=1e-5)


def test_decoder_eps_of_orthonormal_rows_is_zero() -> None:
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=5))
    with torch.no_grad():
        sae.W_dec.copy_(3.0 * torch.eye(8)[:5])
    agg = sae_level(decoder_eps_metric(sae, CTX))
    assert agg == {"decoder_eps_max": 0.0, "decoder_eps_mean": 0.0, "decoder_duplicate_pairs": 0.0}


@pytest.mark.parametrize("block", [2, 3, 64])
def test_decoder_duplicate_pairs_hand_case(block: int) -> None:
    """Rows 0, 1, 4 are one direction (1 scaled, 4 negated: |cos| counts), row 2 is at cos 0.995 to row 3 and
    row 5 at cos 0.98 to row 3 (below 0.99): pairs (0,1), (0,4), (1,4), (2,3) -> 4 duplicates."""
    a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    c, d = torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    # row 2 = 0.995 b + 0.0999 c and row 5 = 0.98 b + 0.199 d: cos(2, 5) = 0.975, not a duplicate either
    W_FD = torch.stack(
        [a, 5 * a, 0.995 * b + (1 - 0.995**2) ** 0.5 * c, b, -2 * a, 0.98 * b + (1 - 0.98**2) ** 0.5 * d]
    )
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=6))
    with torch.no_grad():
        sae.W_dec.copy_(W_FD)
    assert decoder_gram_stats(W_FD, block=block)[2] == 4
    assert sae_level(decoder_eps_metric(sae, CTX))["decoder_duplicate_pairs"] == 4.0
