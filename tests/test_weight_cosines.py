"""One decoder Gram pass per SAE, shared by decoder_eps and saebench_weights (metrics/weight_cosines.py): its
outputs equal the dense definitions and the two metrics' earlier separate passes; the on-request entry is selected
only by name."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from evalkit.core.records import EvalContext
from metrics.afa import decoder_eps_metric
from metrics.base import select_metrics
from metrics.saebench import saebench_weights
from metrics.weight_cosines import (
    DUPLICATE_COSINE,
    decoder_cosine_pass,
    decoder_cosines,
    max_cosine_to_others,
)

CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=1)


def separate_passes(W_FD: torch.Tensor) -> tuple[torch.Tensor, float, float, int]:
    """The definitions as the two metrics computed them before sharing: SAEBench's signed max per row (float64
    unit rows), and |cos| over i < j from float32 unit rows (decoder_eps v1), densely."""
    unit64 = torch.nn.functional.normalize(W_FD.double(), dim=-1)
    signed = unit64 @ unit64.T
    signed.fill_diagonal_(-torch.inf)
    unit32 = W_FD.float() / W_FD.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    upper = torch.triu(torch.ones(len(W_FD), len(W_FD), dtype=torch.bool), diagonal=1)
    abs_upper = (unit32 @ unit32.T).abs()[upper].double()
    return signed.max(dim=1).values, float(abs_upper.max()), float(abs_upper.mean()), int((abs_upper > 0.99).sum())


@pytest.mark.parametrize(("h", "block"), [(300, 64), (257, 300), (130, 1), (97, 32)])
def test_one_pass_equals_the_separate_definitions(h: int, block: int) -> None:
    gen = torch.Generator().manual_seed(h)
    W_FD = torch.randn(h, 12, generator=gen) * torch.rand(h, 1, generator=gen) * 3
    W_FD[5] = -2.5 * W_FD[7]  # an exact duplicate pair, opposite sign: |cos| = 1
    got = decoder_cosine_pass(W_FD, block)
    assert got.max_signed_F is not None
    signed_max, abs_max, abs_mean, duplicates = separate_passes(W_FD)
    torch.testing.assert_close(got.max_signed_F, signed_max, atol=1e-6, rtol=0)
    assert got.abs_max == pytest.approx(abs_max, abs=1e-6)
    assert got.abs_mean == pytest.approx(abs_mean, rel=1e-6)
    assert got.duplicate_pairs == duplicates >= 1
    torch.testing.assert_close(got.max_signed_F, max_cosine_to_others(W_FD, block), atol=1e-7, rtol=0)
    unsigned = decoder_cosine_pass(W_FD, block, signed_max=False)
    assert (unsigned.abs_max, unsigned.abs_mean, unsigned.duplicate_pairs) == (got.abs_max, got.abs_mean, duplicates)
    assert unsigned.max_signed_F is None


def test_hand_case_duplicates_and_maxima() -> None:
    """Rows 0, 1 one direction, row 2 the negation, row 3 orthogonal: pairs (0,1), (0,2), (1,2) are duplicates."""
    W_FD = torch.tensor([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    got = decoder_cosine_pass(W_FD, block=2)
    assert got.duplicate_pairs == 3 and got.abs_max == pytest.approx(1.0)
    assert got.abs_mean == pytest.approx(3 / 6)
    assert got.max_signed_F is not None
    torch.testing.assert_close(got.max_signed_F, torch.tensor([1.0, 1.0, -0.0, 0.0], dtype=torch.float64))
    assert DUPLICATE_COSINE == 0.99


def test_decoder_pass_runs_once_per_sae_and_again_after_training() -> None:
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=40))
    first = decoder_cosines(sae, signed_max=True)  # saebench_weights runs first (group core) when it is asked for
    assert decoder_cosines(sae) is first  # the second metric gets the cached summary
    eps = {v.metric: v.value for v in decoder_eps_metric(sae, CTX)}
    assert (eps["decoder_eps_max"], eps["decoder_eps_mean"]) == (first.abs_max, first.abs_mean)
    detail = {v.latent: v.value for v in saebench_weights(sae, CTX) if v.metric == "max_decoder_cosine_sim"}
    assert first.max_signed_F is not None and [detail[i] for i in range(40)] == first.max_signed_F.tolist()
    with torch.no_grad():
        sae.W_dec.mul_(-1.0).add_(0.3)  # an in-place update: the summary must follow the new weights
    second = decoder_cosines(sae, signed_max=True)
    assert second is not first and second.max_signed_F is not None
    torch.testing.assert_close(second.max_signed_F, max_cosine_to_others(sae.W_dec), atol=1e-7, rtol=0)


def test_saebench_weights_only_when_named() -> None:
    def names(selection: str) -> set[str]:
        return {s.name for s in select_metrics(selection)}

    assert "saebench_weights" not in names("all") | names("core")
    assert "saebench_core" in names("core") and "decoder_eps" in names("all")
    assert "saebench_weights" in names("all,saebench_weights")
    assert "saebench_weights" in names("max_decoder_cosine_sim")
