"""Metrics read the nonzero codes (evalkit.core.records.SparseCodes) instead of scanning dense [T, d_sae] codes;
these tests hold the sparse paths to the dense computations they replace."""

from __future__ import annotations

import pytest
import torch

from evalkit.core.records import EvalContext, SaeBatch, SparseCodes
from evalkit.sae.factory import make_sae, variant_factories
from evalkit.sae.score import fires_after_rescale, fires_on_pairs
from metrics.norm import NormDetectors

PER_LATENT_RULE = {"standard", "jumprelu", "batchtopk", "matryoshka", "gated"}
"""Variants whose firing rule reads one latent's own pre-activation: fires_on_pairs answers for them."""


def sparse_codes_of(f_TF: torch.Tensor) -> SparseCodes:
    return SparseCodes.from_dense(f_TF)


def test_sparse_codes_count_and_sum_like_the_dense_codes() -> None:
    gen = torch.Generator().manual_seed(0)
    f_TF = torch.relu(torch.randn(50, 40, generator=gen) - 1.0) * torch.sign(torch.randn(50, 40, generator=gen))
    codes = sparse_codes_of(f_TF)
    torch.testing.assert_close(codes.per_token(), (f_TF != 0).sum(1).double())
    torch.testing.assert_close(codes.per_token(codes.value_N.abs()), f_TF.abs().sum(1).double())
    assert torch.equal(codes.latent_counts(), (f_TF != 0).sum(0))
    mask_T = torch.arange(50) % 3 == 0
    assert torch.equal(codes.latent_counts(mask_T), (f_TF[mask_T] != 0).sum(0))
    assert torch.equal(sparse_codes_of(torch.zeros(4, 6)).latent_counts(), torch.zeros(6, dtype=torch.int64))


@pytest.mark.parametrize("variant", sorted(variant_factories()))
def test_fires_on_pairs_equals_encoding_where_it_answers(variant: str) -> None:
    sae = make_sae(variant, d_in=16, d_sae=48, seed=1)
    x_TD = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        dense_TF = sae.encode(x_TD) != 0
        token_N, latent_N = torch.meshgrid(torch.arange(64), torch.arange(48), indexing="ij")
        got_N = fires_on_pairs(sae, x_TD, token_N.flatten(), latent_N.flatten())
    if variant in PER_LATENT_RULE:
        assert got_N is not None
        assert torch.equal(got_N.reshape(64, 48), dense_TF)
        assert dense_TF.any() and not dense_TF.all()  # the check compared both outcomes
    else:
        assert got_N is None  # a rule that compares latents: the caller encodes


AFFINE_RELU = {"standard", "jumprelu", "batchtopk", "matryoshka"}
"""Variants whose firing code is the pre-activation (batchtopk, matryoshka: sae-lens JumpReLU at evaluation):
fires_after_rescale answers from the codes alone."""


@pytest.mark.parametrize("variant", sorted(variant_factories()))
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_fires_after_rescale_equals_re_encoding_where_it_answers(variant: str, apply_b_dec: bool) -> None:
    sae = make_sae(variant, d_in=16, d_sae=48, seed=5)
    sae.cfg.apply_b_dec_to_input = apply_b_dec
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16, generator=gen))  # a bias that matters
        x_TD = torch.randn(64, 16, generator=gen) * 3
        scale_T = torch.rand(64, generator=gen) * 4 + 0.2
        codes = SparseCodes.from_dense(sae.encode(x_TD).float())
        got_N = fires_after_rescale(sae, scale_T, codes.token_N, codes.latent_N, codes.value_N)
        expected_N = sae.encode(x_TD * scale_T.unsqueeze(1))[codes.token_N, codes.latent_N] != 0
    if variant not in AFFINE_RELU:
        assert got_N is None  # scored pairs or a re-encode instead
        return
    assert got_N is not None and torch.equal(got_N, expected_N)
    assert expected_N.any() and not expected_N.all()  # both outcomes compared
    sae.cfg.normalize_activations = "constant_norm_rescale"  # input map no longer affine: no shortcut
    assert fires_after_rescale(sae, scale_T, codes.token_N, codes.latent_N, codes.value_N) is None


@pytest.mark.parametrize("variant", ["standard", "jumprelu", "topk", "gated"])
def test_norm_survival_counts_equal_the_dense_re_encoding(variant: str) -> None:
    """norm_renorm_survival from scored firing pairs (or the re-encode fallback) equals the dense definition:
    per latent, tokens where it fires both at x and at x rescaled to the median norm."""
    sae = make_sae(variant, d_in=16, d_sae=48, seed=3)
    gen = torch.Generator().manual_seed(4)
    x_TD = torch.randn(80, 16, generator=gen) * torch.rand(80, 1, generator=gen).mul(6)
    norms_T = x_TD.norm(dim=1)
    q25, q50, q75 = (float(q) for q in norms_T.quantile(torch.tensor([0.25, 0.5, 0.75])))
    ctx = EvalContext(median_norm=q50, norm_q25=q25, norm_q75=q75, n_tokens=80)
    with torch.no_grad():
        f_TF = sae.encode(x_TD)
        batch = SaeBatch(sae, x_TD, sae.decode(f_TF), f_TF, torch.arange(80) % 8)
        acc = NormDetectors(sae, ctx)
        acc.update(batch)
        rescaled_TF = sae.encode(x_TD * (q50 / norms_T).unsqueeze(1)) != 0
    expected_F = ((f_TF != 0) & rescaled_TF).sum(0)
    assert torch.equal(acc.survive_F, expected_F)
    assert torch.equal(acc.fires_F, (f_TF != 0).sum(0))
    assert 0 < int(expected_F.sum()) < int(acc.fires_F.sum())
