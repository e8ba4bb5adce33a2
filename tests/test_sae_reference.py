"""evalkit's `cosine` and `topafa` pinned to the seed papers' public code, on hand-computed cases.

References read (not copied): SilenNaihin/cosine-scored-saes experiments/40_saprmarks_recipe/
exp40_karvonen_recipe.py (the headline recipe; exp61 reruns it) and SewoongLee/top-afa-sae training/sae.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from evalkit.sae.factory import make_sae
from evalkit.sae.loaders.formats import load_saes
from evalkit.sae.score import score
from evalkit.sae.variants.common import UNSET_THRESHOLD, threshold_relu, unit_rows, update_batch_threshold
from evalkit.sae.variants.topafa import afa_loss, topafa_k


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def training_sae(arch: str, d_in: int, d_sae: int, **extra: Any) -> TrainingSAE[Any]:
    sae_cls, cfg_cls = get_sae_training_class(arch)
    cfg = cfg_cls.from_dict({"architecture": arch, "d_in": d_in, "d_sae": d_sae, **extra})
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.0.hook_resid_post", "tiny"
    return sae_cls(cfg)


# ------------------------------------------------------------------------------------------------ top-AFA


def test_topafa_last_cumulative_sum_is_the_reference_sentinel() -> None:
    """The reference sets C_h := 1e8 (√ = 1e4), so k = d_sae is reachable, but only for ‖x_c‖ > ~5000."""
    acts = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    # s sorted = [9, 4, 1, 0] → √C = [3, 3.606, 3.742, 1e4]; the crossover is (1e4 + 3.742)/2 = 5001.87
    assert topafa_k(acts, torch.ones(4), torch.tensor([5001.0])).tolist() == [3]
    assert topafa_k(acts, torch.ones(4), torch.tensor([5002.0])).tolist() == [4]
    assert topafa_k(acts, torch.ones(4), torch.tensor([3.7])).tolist() == [3]


def test_topafa_compares_against_the_centred_input_norm() -> None:
    """k(x) reads ‖x − b_dec‖ (reference: `x_cent`), not ‖x‖; here the two pick k = 1 and k = 3."""
    sae = make_sae("topafa", 4, 4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0])))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_dec.copy_(torch.tensor([0.0, 0.0, 0.0, 7.0]))
        x = torch.tensor([[3.0, 2.0, 1.0, 7.0]])
        f = sae.encode(x)
    # a = [6, 4, 2, 0], √C = [6, 7.211, 7.483, 1e4]; ‖x_c‖ = 3.742 → k = 1 (‖x‖ = 7.94 would give k = 3)
    torch.testing.assert_close(f, torch.tensor([[6.0, 0.0, 0.0, 0.0]]))


def test_topafa_has_no_encoder_bias() -> None:
    sae = make_sae("topafa", 4, 4)
    assert "b_enc" not in dict(sae.named_parameters())
    x = torch.randn(3, 4)
    torch.testing.assert_close(score(sae, x), (x - sae.b_dec) @ sae.W_enc)


def test_afa_loss_hand_case_in_reference_units() -> None:
    f = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # ‖f‖ = 5
    x = torch.tensor([[0.0, 6.0, 8.0]])  # ‖x‖ = 10, d_in = 3
    # reference term: afa_coeff·(5 − 10)² = 0.1·25 = 2.5; times d_in = 3 against sae-lens' summed MSE
    assert float(afa_loss(f, x, 0.1)) == pytest.approx(7.5)


def test_topafa_training_loss_balance_equals_the_reference_times_d_in() -> None:
    """sae-lens' loss (summed MSE + evalkit AFA term) is d_in × the reference's (mean MSE + afa_coeff·gap²),
    with the raw input x — not x − b_dec — in the AFA gap."""
    d_in, coeff = 6, 0.05
    sae = training_sae("topafa", d_in, 10, afa_loss_coefficient=coeff, aux_loss_coefficient=0.0)
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1.0, 2.0, d_in))
    x = torch.randn(8, d_in, generator=torch.Generator().manual_seed(5)) * 3
    out = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    f, x_hat = out.feature_acts.detach(), out.sae_out.detach()
    reference = (x_hat - x).pow(2).mean() + coeff * (f.norm(dim=-1) - x.norm(dim=-1)).pow(2).mean()
    evalkit = out.losses["mse_loss"] + out.losses["afa_loss"]
    assert float(evalkit) == pytest.approx(d_in * float(reference), rel=1e-5)
    centred = coeff * d_in * (f.norm(dim=-1) - (x - sae.b_dec).norm(dim=-1)).pow(2).mean()
    assert float(out.losses["afa_loss"]) != pytest.approx(float(centred), rel=1e-3)


@pytest.mark.parametrize("arch", ["topafa", "cosine"])
def test_training_decodes_with_unit_rows_and_saves_them(arch: str, tmp_path) -> None:
    """Both references hold decoder rows at unit norm throughout training."""
    sae = training_sae(arch, 8, 12, k=3)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.2, 3.0, 12)[:, None])  # raw rows far from unit norm
        sae.b_dec.normal_()
    f = torch.rand(5, 12)
    torch.testing.assert_close(sae.decode(f), f @ unit_rows(sae.W_dec) + sae.b_dec)
    sae.save_inference_model(tmp_path / arch)
    [loaded] = load_saes(tmp_path / arch)
    torch.testing.assert_close(loaded.sae.W_dec.norm(dim=-1), torch.ones(12))
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae.decode(f), sae.decode(f))
        if arch == "topafa":
            torch.testing.assert_close(loaded.sae.encode(x), sae.encode(x))


# ------------------------------------------------------------------------------------------------- cosine


def test_cosine_score_hand_case() -> None:
    """s = exp(a·log‖x_c‖ + b)·cos(x_c, w_i) + b_enc,i with the encoder columns' lengths ignored."""
    sae = make_sae("cosine", 2, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        sae.b_enc.copy_(torch.tensor([0.1, -0.2]))
        sae.b_dec.zero_()
        sae.a.fill_(0.5)
        sae.b.fill_(math.log(2.0))
        s = score(sae, torch.tensor([[3.0, 4.0]]))
    # ‖x_c‖ = 5, cos = [0.6, 0.8], scale = 2·√5 = 4.47214
    torch.testing.assert_close(s, torch.tensor([[2.0 * 5**0.5 * 0.6 + 0.1, 2.0 * 5**0.5 * 0.8 - 0.2]]))


def test_cosine_per_feature_a_and_b_are_per_latent() -> None:
    sae = make_sae("cosine_per_feature", 2, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.a.copy_(torch.tensor([0.0, 1.0]))
        sae.b.copy_(torch.tensor([0.0, math.log(3.0)]))
        s = score(sae, torch.tensor([[6.0, 8.0]]))
    # ‖x‖ = 10: latent 0 is pure cosine 0.6; latent 1 is 3·10·0.8 = 24
    torch.testing.assert_close(s, torch.tensor([[0.6, 24.0]]))


def test_cosine_training_initialisation_follows_the_reference() -> None:
    sae = training_sae("cosine", 16, 8, k=2, per_feature=True)
    torch.testing.assert_close(sae.a.detach(), torch.zeros(8))
    torch.testing.assert_close(sae.b.detach(), torch.full((8,), math.log(math.sqrt(16))))
    torch.testing.assert_close(sae.b_enc.detach(), torch.zeros(8))
    assert float(sae.threshold) == UNSET_THRESHOLD
    assert (sae.cfg.topk_threshold_lr, sae.cfg.threshold_start_step) == (0.001, 1000)


def test_batch_threshold_fires_strictly_above_theta() -> None:
    hidden_pre = torch.tensor([[0.5, 0.25, 0.75, -1.0]])
    expected = torch.tensor([[0.0, 0.0, 0.75, 0.0]])  # 0.5 == θ does not fire (reference exp40: '>')
    torch.testing.assert_close(threshold_relu(hidden_pre, torch.tensor([0.5])), expected)


def test_threshold_ema_starts_from_the_first_batch_minimum() -> None:
    theta = torch.tensor([UNSET_THRESHOLD])
    update_batch_threshold(theta, torch.tensor([[0.0, 0.3, 0.5]]), lr=0.001)
    assert float(theta) == pytest.approx(0.3)
    update_batch_threshold(theta, torch.tensor([[0.2, 0.0, 1.0]]), lr=0.001)
    assert float(theta) == pytest.approx(0.999 * 0.3 + 0.001 * 0.2)
    update_batch_threshold(theta, torch.zeros(1, 3), lr=0.001)  # nothing fired: θ unchanged
    assert float(theta) == pytest.approx(0.2999)


def test_threshold_waits_for_the_start_step() -> None:
    sae = training_sae("cosine", 8, 12, k=2, activation="batchtopk", threshold_start_step=3)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    for step in range(3):
        sae.training_forward_pass(TrainStepInput(x, {}, None, step, False))
    assert float(sae.threshold) == UNSET_THRESHOLD
    out = sae.training_forward_pass(TrainStepInput(x, {}, None, 3, False))
    acts = out.feature_acts.detach()
    assert float(sae.threshold) == pytest.approx(float(acts[acts > 0].min()))


def test_unset_threshold_falls_back_to_batch_topk() -> None:
    """Reference: θ < 0 (never learned) → batch top-k over the tokens given, k·n_tokens values kept."""
    sae = make_sae("cosine_batchtopk", 6, 10)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.threshold.fill_(UNSET_THRESHOLD)
        f = sae.encode(x)
        relu_s = score(sae, x).relu()
    n_keep = int(sae.cfg.k * 4)
    kept = relu_s.flatten().topk(n_keep).values
    assert int((f > 0).sum()) == int((kept > 0).sum())
    torch.testing.assert_close(f.flatten().sort(descending=True).values[:n_keep], kept)
