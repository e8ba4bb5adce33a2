"""Contract tests over every SAE variant: shapes, encode/decode, save → load, score() against hand formulas,
folding, and the variant-specific properties (top-k sparsity, cosine limits, top-AFA's k(x), alignment)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE

from evalkit.sae.factory import make_sae, variant_factories
from evalkit.sae.loaders.formats import load_saes
from evalkit.sae.score import NotFoldableError, fold_decoder_norms, score
from evalkit.sae.variants.cosine import CosineSAE
from evalkit.sae.variants.topafa import TopAFASAE, topafa_k

VARIANTS = list(variant_factories())
D_IN, D_SAE, T = 16, 32, 24


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread is ~20x faster than two competing ones."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def acts(seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(T, D_IN, generator=torch.Generator().manual_seed(seed)) * scale


def x_c(sae: SAE[Any], x: torch.Tensor) -> torch.Tensor:
    return x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x


def linear(sae: SAE[Any], x: torch.Tensor) -> torch.Tensor:
    return x_c(sae, x) @ sae.W_enc + sae.b_enc


def coefficient_scale(sae: SAE[Any]) -> torch.Tensor:
    """What decode multiplies f by before W_dec: 1/‖d_i‖ for topk SAEs that rank decoder-scaled scores."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return 1 / sae.W_dec.norm(dim=-1)
    return torch.ones(sae.cfg.d_sae)


def cosine_hand(sae: SAE[Any], x: torch.Tensor) -> torch.Tensor:
    xc = x_c(sae, x)
    cos_TF = F.cosine_similarity(xc[:, None, :], sae.W_enc.T[None, :, :], dim=-1)
    return torch.exp(sae.b) * xc.norm(dim=-1, keepdim=True) ** sae.a * cos_TF + sae.b_enc


HAND_SCORES = {
    "standard": linear,
    "topk": linear,
    "aligned_topk": linear,
    "jumprelu": linear,
    "batchtopk": linear,
    "matryoshka": linear,
    "topk_rescaled": lambda sae, x: linear(sae, x) * sae.W_dec.norm(dim=-1),
    "gated": lambda sae, x: x_c(sae, x) @ sae.W_enc * torch.exp(sae.r_mag) + sae.b_mag,
    "cosine": cosine_hand,
    "cosine_per_feature": cosine_hand,
    "cosine_batchtopk": cosine_hand,
    "topafa": lambda sae, x: x_c(sae, x) @ sae.W_enc,
}
TOPK_VARIANTS = ("topk", "topk_rescaled", "aligned_topk", "cosine", "cosine_per_feature")
FOLDABLE = ("standard", "topk_rescaled", "jumprelu", "batchtopk", "matryoshka", "gated", "topafa")


def test_every_factory_variant_has_a_hand_score() -> None:
    assert set(HAND_SCORES) == set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_forward_is_decode_of_encode(variant: str) -> None:
    sae, x = make_sae(variant, D_IN, D_SAE), acts()
    with torch.no_grad():
        f = sae.encode(x)
        assert f.shape == (T, D_SAE)
        assert sae(x).shape == (T, D_IN)
        torch.testing.assert_close(sae(x), sae.decode(f))
        torch.testing.assert_close(sae.decode(f), f * coefficient_scale(sae) @ sae.W_dec + sae.b_dec)
    assert 0 < int((f != 0).sum()) < f.numel(), "the test SAE should fire some latents but not all"


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_equals_hand_formula_and_nonzero_acts_are_scores(variant: str) -> None:
    sae, x = make_sae(variant, D_IN, D_SAE), acts()
    with torch.no_grad():
        s = score(sae, x)
        torch.testing.assert_close(s, HAND_SCORES[variant](sae, x), rtol=1e-5, atol=1e-5)
        f = sae.encode(x)
    fired = f != 0
    torch.testing.assert_close(f[fired], s[fired])
    assert bool((s[fired] > 0).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_then_load_gives_identical_outputs(variant: str, tmp_path) -> None:
    sae, x = make_sae(variant, D_IN, D_SAE), acts()
    sae.save_model(tmp_path / variant)
    reloaded = SAE.load_from_disk(tmp_path / variant)
    assert type(reloaded) is type(sae)
    [loaded] = load_saes(tmp_path / variant)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode(x), sae.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.sae(x), sae(x), rtol=0, atol=0)
    assert (loaded.d_in, loaded.d_sae) == (D_IN, D_SAE)


EXPECTED_ARCH = {"topk_rescaled": "topk", "aligned_topk": "topk", "cosine_per_feature": "cosine"}
EXPECTED_ARCH |= {"cosine_batchtopk": "cosine"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_loaded_architecture_name(variant: str, tmp_path) -> None:
    make_sae(variant, D_IN, D_SAE).save_model(tmp_path / "sae")
    [loaded] = load_saes(tmp_path / "sae")
    assert loaded.architecture == EXPECTED_ARCH.get(variant, variant)
    assert loaded.aligned == (variant == "aligned_topk")
    assert loaded.hook_name == "blocks.0.hook_resid_post" and loaded.model_name == "tiny-model"
    assert loaded.format == "sae-lens" and loaded.sae_id == "sae"


@pytest.mark.parametrize("variant", TOPK_VARIANTS)
def test_topk_keeps_at_most_k(variant: str) -> None:
    sae = make_sae(variant, D_IN, D_SAE)
    with torch.no_grad():
        nnz_T = (sae.encode(acts(scale=5.0)) != 0).sum(dim=-1)
    assert int(nnz_T.max()) <= int(sae.cfg.k) == 4
    assert int(nnz_T.max()) == 4


def test_cosine_with_a1_b0_is_inner_product_with_unit_encoder_columns() -> None:
    sae, x = make_sae("cosine", D_IN, D_SAE), acts()
    with torch.no_grad():
        sae.a.fill_(1.0)
        sae.b.fill_(0.0)
        w_hat = sae.W_enc / sae.W_enc.norm(dim=0, keepdim=True)
        expected = (x - sae.b_dec) @ w_hat + sae.b_enc
        torch.testing.assert_close(score(sae, x), expected, rtol=1e-5, atol=1e-5)
        # the raw inner product differs exactly by the column norms
        raw = (x - sae.b_dec) @ sae.W_enc
        torch.testing.assert_close(score(sae, x) - sae.b_enc, raw / sae.W_enc.norm(dim=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["cosine", "cosine_per_feature", "cosine_batchtopk"])
def test_cosine_a0_firing_pattern_is_scale_invariant(variant: str) -> None:
    sae, x = make_sae(variant, D_IN, D_SAE), acts()
    with torch.no_grad():
        sae.a.fill_(0.0)
        sae.b_dec.zero_()
        fired = sae.encode(x) != 0
        for scale in (0.01, 0.5, 37.0):
            assert torch.equal(sae.encode(x * scale) != 0, fired)
        # with a = 1 the pattern does depend on scale (the control)
        sae.a.fill_(1.0)
        assert not torch.equal(sae.encode(x * 0.01) != 0, sae.encode(x * 37.0) != 0)


def test_topafa_k_hand_computed() -> None:
    a = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    # s = [9, 0, 1, 4] sorted [9, 4, 1, 0]; √C = [3, 3.606, 3.742, 1e4 (the reference's sentinel)]
    assert topafa_k(a, torch.ones(4), torch.tensor([3.7])).tolist() == [3]
    assert topafa_k(a, torch.ones(4), torch.tensor([3.0])).tolist() == [1]
    assert topafa_k(a, torch.ones(4), torch.tensor([3.5])).tolist() == [2]
    # decoder norm 2 on latent 2: s = [9, 0, 4, 4] → √C = [3, 3.606, 4.123]
    assert topafa_k(a, torch.tensor([1.0, 1.0, 2.0, 1.0]), torch.tensor([4.0])).tolist() == [3]


def test_topafa_encode_hand_case() -> None:
    sae = make_sae("topafa", 4, 4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(2 * torch.eye(4))
        sae.b_dec.zero_()
        x = torch.tensor([[3.0, 0.2, 0.3, -2.0], [3.0, 1.0, 0.5, 0.0]])
        f = sae.encode(x)
    # row 0: a‖d‖ = [6, .4, .6, 0], √C = [6, 6.03, 6.04], ‖x‖ = 3.62 → k = 1
    # row 1: a‖d‖ = [6, 2, 1, 0], √C = [6, 6.32, 6.40], ‖x‖ = 3.20 → k = 1
    torch.testing.assert_close(f, torch.tensor([[3.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    with torch.no_grad():
        sae.W_dec.copy_(0.5 * torch.eye(4))
        f = sae.encode(x[1:])
    # a‖d‖ = [1.5, .5, .25, 0], √C = [1.5, 1.58, 1.60, 1e4], ‖x‖ = 3.20 → k = 3 (sentinel, not C_4)
    torch.testing.assert_close(f, torch.tensor([[3.0, 1.0, 0.5, 0.0]]))


def test_aligned_sae_reads_back_its_own_coefficient() -> None:
    sae = make_sae("aligned_topk", D_IN, D_SAE)
    d_hat = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    torch.testing.assert_close((sae.W_enc.T * d_hat).sum(-1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


@pytest.mark.parametrize("variant", FOLDABLE)
def test_fold_decoder_norms_keeps_the_function(variant: str) -> None:
    sae, x = make_sae(variant, D_IN, D_SAE), acts()
    folded = fold_decoder_norms(sae)
    with torch.no_grad():
        torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(D_SAE))
        torch.testing.assert_close(folded(x), sae(x), rtol=1e-4, atol=1e-5)
        expected = sae.encode(x) * coefficient_scale(sae) * sae.W_dec.norm(dim=-1)
        torch.testing.assert_close(folded.encode(x), expected, rtol=1e-4, atol=1e-5)
    assert not torch.equal(sae.W_dec.norm(dim=-1), torch.ones(D_SAE)), "the original must be left untouched"


@pytest.mark.parametrize("variant", ["topk", "cosine", "cosine_batchtopk"])
def test_fold_refuses_inexact_variants(variant: str) -> None:
    with pytest.raises(NotFoldableError):
        fold_decoder_norms(make_sae(variant, D_IN, D_SAE))


def test_fold_of_unit_rows_is_a_plain_copy() -> None:
    sae = make_sae("aligned_topk", D_IN, D_SAE)
    folded = fold_decoder_norms(sae)
    assert folded is not sae and torch.equal(folded.W_enc, sae.W_enc)


def test_variant_classes_are_registered_in_sae_lens() -> None:
    from sae_lens.registry import get_sae_class, get_sae_training_class

    assert get_sae_class("cosine")[0] is CosineSAE and get_sae_class("topafa")[0] is TopAFASAE
    for name in ("cosine", "topafa", "aligned_topk"):
        assert get_sae_training_class(name)
