"""Training classes: built from a config dict through sae-lens' registry, trained a few steps on random data,
saved as an inference SAE that `SAE.load_from_disk` (and `load_saes`) rebuild with the same outputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from evalkit.sae.loaders.formats import load_saes
from evalkit.sae.score import score
from evalkit.sae.variants.common import AUX_K_COEFFICIENT, threshold_relu

D_IN, D_SAE, BATCH = 16, 48, 64


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread is ~20x faster than two competing ones."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


CONFIGS: dict[str, dict[str, Any]] = {
    "cosine_topk": {"architecture": "cosine", "k": 4, "init_a": 0.5},
    "cosine_batchtopk_per_feature": {
        "architecture": "cosine",
        "k": 4,
        "activation": "batchtopk",
        "per_feature": True,
        "threshold_start_step": 0,  # the reference waits 1000 steps; these runs are 40 steps long
    },
    "topafa": {"architecture": "topafa", "afa_loss_coefficient": 0.1},
    "aligned_topk": {"architecture": "aligned_topk", "k": 4},
    "unit_enc_topk": {"architecture": "unit_enc_topk", "k": 4},
}
INFERENCE = {
    "cosine_topk": ("cosine", "cosine", False),
    "cosine_batchtopk_per_feature": ("cosine", "cosine", False),
    "topafa": ("topafa", "topafa", False),
    "aligned_topk": ("topk", "topk", True),
    "unit_enc_topk": ("topk", "topk", False),
}


def build(name: str, configs: dict[str, dict[str, Any]] = CONFIGS) -> TrainingSAE[Any]:
    cfg_dict = {"d_in": D_IN, "d_sae": D_SAE, **configs[name]}
    sae_cls, cfg_cls = get_sae_training_class(cfg_dict["architecture"])
    cfg = cfg_cls.from_dict(cfg_dict)
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.0.hook_resid_post", "tiny"
    return sae_cls(cfg)


def data(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, D_IN, generator=gen) * (1 + 3 * torch.rand(BATCH, 1, generator=gen))


def train(sae: TrainingSAE[Any], steps: int) -> list[float]:
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    dead_F = torch.zeros(D_SAE, dtype=torch.bool)
    dead_F[: D_SAE // 4] = True  # exercise the aux-k loss
    losses = []
    for step in range(steps):
        out = sae.training_forward_pass(TrainStepInput(data(step % 4), {}, dead_F, step, False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_save_and_reload(name: str, tmp_path) -> None:
    sae = build(name)
    losses = train(sae, 40)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4]), f"loss did not fall: {losses[:4]} → {losses[-4:]}"
    sae.save_inference_model(tmp_path / name)
    reloaded = SAE.load_from_disk(tmp_path / name)
    [loaded] = load_saes(tmp_path / name)
    sae_lens_arch, evalkit_arch, aligned = INFERENCE[name]
    assert reloaded.cfg.architecture() == sae_lens_arch
    assert (loaded.architecture, loaded.aligned) == (evalkit_arch, aligned)
    x = data(99)
    with torch.no_grad():
        if name == "cosine_batchtopk_per_feature":  # inference swaps batch top-k for the learned threshold θ
            assert float(reloaded.threshold) > 0
            expected = threshold_relu(score(sae, x), reloaded.threshold)
        else:
            expected = sae.encode(x)
        torch.testing.assert_close(reloaded.encode(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded.decode(expected), sae.decode(expected), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.sae(x), reloaded(x))
        # the training class and its saved inference SAE agree on the pre-activation score too
        torch.testing.assert_close(score(reloaded, x), score(sae, x), rtol=1e-5, atol=1e-5)


def test_aligned_training_holds_the_constraint_exactly(tmp_path) -> None:
    sae = build("aligned_topk")
    train(sae, 20)
    sae.save_inference_model(tmp_path / "aligned")
    [loaded] = load_saes(tmp_path / "aligned")
    W_enc, W_dec = loaded.sae.W_enc, loaded.sae.W_dec
    torch.testing.assert_close(W_dec.norm(dim=-1), torch.ones(D_SAE))
    torch.testing.assert_close((W_enc.T * W_dec).sum(-1), torch.ones(D_SAE))
    assert loaded.cfg["metadata"]["aligned"] is True
    assert not torch.allclose(W_enc.T, W_dec), "the encoder moved off the decoder directions while staying aligned"


UNIT_ENC_CONFIGS: dict[str, dict[str, Any]] = {
    "unit_enc_topk": {"architecture": "unit_enc_topk", "k": 4},
    "unit_enc_batchtopk": {"architecture": "unit_enc_batchtopk", "k": 4},
    "unit_enc_matryoshka_batchtopk": {
        "architecture": "unit_enc_matryoshka_batchtopk",
        "k": 4,
        "matryoshka_widths": [12, D_SAE],
    },
}


UNIT_ENC_VARIANT = {
    "unit_enc_topk": "topk",
    "unit_enc_batchtopk": "batchtopk",
    "unit_enc_matryoshka_batchtopk": "matryoshka",
}


@pytest.mark.parametrize("name", list(UNIT_ENC_CONFIGS))
def test_unit_encoder_training_saves_unit_columns_and_reloads(name: str, tmp_path) -> None:
    sae = build(name, UNIT_ENC_CONFIGS)
    assert sae.cfg.aux_loss_coefficient == AUX_K_COEFFICIENT and not sae.cfg.rescale_acts_by_decoder_norm
    raw_norms_F = sae.W_enc.detach().norm(dim=0)
    losses = train(sae, 40)
    assert sum(losses[-4:]) < sum(losses[:4]), f"loss did not fall: {losses[:4]} → {losses[-4:]}"
    assert not torch.allclose(sae.W_enc.detach().norm(dim=0), raw_norms_F)  # the raw parameter moved
    sae.save_inference_model(tmp_path / name)
    reloaded = SAE.load_from_disk(tmp_path / name)
    W_enc_DF = reloaded.W_enc.detach()
    torch.testing.assert_close(W_enc_DF.norm(dim=0), torch.ones(D_SAE))
    x = data(99)
    with torch.no_grad():
        _, hidden_pre = sae.encode_with_hidden_pre(x)
        linear_score = reloaded.process_sae_in(x) @ W_enc_DF + reloaded.b_enc
        torch.testing.assert_close(linear_score, hidden_pre, rtol=1e-5, atol=1e-5)
        if name == "unit_enc_topk":
            assert reloaded.cfg.architecture() == "topk"
            expected = sae.encode(x)
        else:  # sae-lens saves batch top-k as JumpReLU at the running threshold
            assert reloaded.cfg.architecture() == "jumprelu"
            theta = float(sae.topk_threshold)
            assert theta > 0
            expected = hidden_pre * (hidden_pre > theta)
        torch.testing.assert_close(reloaded.encode(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded.decode(expected), sae.decode(expected), rtol=1e-5, atol=1e-5)
    # evalkit still knows the variant (families and matched comparisons depend on it), not sae-lens' save name
    [loaded] = load_saes(tmp_path / name)
    assert loaded.architecture == UNIT_ENC_VARIANT[name]


def test_unit_encoder_training_rejects_decoder_norm_rescaling() -> None:
    _, cfg_cls = get_sae_training_class("unit_enc_topk")
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm"):
        cfg_cls(d_in=D_IN, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=True)


def test_aux_loss_is_on_with_the_papers_coefficient() -> None:
    for name in CONFIGS:
        assert build(name).cfg.aux_loss_coefficient == AUX_K_COEFFICIENT == 1 / 32
    sae = build("aligned_topk")
    dead_F = torch.ones(D_SAE, dtype=torch.bool)
    out = sae.training_forward_pass(TrainStepInput(data(0), {}, dead_F, 0, False))
    assert float(out.losses["auxiliary_reconstruction_loss"]) > 0
    out = sae.training_forward_pass(TrainStepInput(data(0), {}, None, 0, False))
    assert float(out.losses["auxiliary_reconstruction_loss"]) == 0


def test_aux_loss_is_the_residuals_normalized_error_in_input_units() -> None:
    """Hand case: one dead latent (k_aux = d_in/2 = 1, scale 1/1) with decoder row (1, 0); inputs x = (±2, ±2)
    (Var(x) summed over d = 8), outputs x̂ = x·0.5 + (0, 0) so the residual e = x/2 (Var(e) = 2); the dead latent's
    pre-activation 1 gives ê = (1, 0). ‖ê − e‖² is 1, 5, 1, 5 (mean 3), so the loss is α · 3 · 8/2 = 12α: the
    OpenAI reference's normalized_mse(ê, e) = 3/2, times Var(x) = 8 to be in the summed-MSE units of the main loss
    (sae-lens' unnormalized aux would be 3α)."""
    from evalkit.sae.variants.common import topk_aux_loss

    x_BD = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]])
    e_BD = x_BD / 2
    expected_mse = float(((torch.tensor([1.0, 0.0]) - e_BD) ** 2).sum(-1).mean())
    assert expected_mse == 3.0
    step_input = TrainStepInput(x_BD, {}, torch.ones(1, dtype=torch.bool), 0, False)
    loss = topk_aux_loss(step_input, x_BD / 2, torch.ones(4, 1), torch.tensor([[1.0, 0.0]]), 1 / 32)
    assert float(loss) == pytest.approx(12 / 32)


def test_cosine_trains_under_sae_lens_trainer(tmp_path) -> None:
    sae = build("cosine_topk")
    cfg = SAETrainerConfig(total_training_samples=BATCH * 30, train_batch_size_samples=BATCH, lr=3e-3, lr_end=3e-3)
    batches = (data(i) for i in range(10**6))
    before = sae.a.detach().clone()
    trained = SAETrainer(cfg=cfg, sae=sae, data_provider=batches).fit()
    assert not torch.equal(trained.a.detach(), before), "the exponent a is learned"
    trained.save_inference_model(tmp_path / "cos")
    [loaded] = load_saes(tmp_path / "cos")
    assert loaded.architecture == "cosine"
    torch.testing.assert_close(loaded.sae.a, trained.a.detach())
