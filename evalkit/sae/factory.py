"""Small random SAEs of every variant, for tests: `make_sae("cosine", 16, 32, seed=0)`.

Weights are random with non-unit decoder rows and nonzero biases, so tests exercise every term of each forward
pass.

The `dl_*_state` / `write_*` helpers write dictionary_learning and sparsify files from their documented key
layouts (docs/variants.md; sparsify SparseCoder.save_to_disk), so loader tests need neither library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAE, SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from safetensors.torch import save_file

from evalkit.core.registry import Registry
from evalkit.sae.registration import SaeMaker, ensure_registered

VARIANT_FACTORIES: Registry[SaeMaker] = Registry("test SAE variant")
"""sae-lens' own classes (here) and every evalkit variant's `test_factories` (added by `variant_factories`)."""


def test_metadata(**extra: Any) -> SAEMetadata:
    return SAEMetadata(model_name="tiny-model", hook_name="blocks.0.hook_resid_post", **extra)


def randomise(sae: SAE[Any], gen: torch.Generator) -> SAE[Any]:
    """Gaussian weights (decoder rows with norms in [0.5, 2]), small random biases, positive thresholds."""
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        d_norm_F = 0.5 + 1.5 * torch.rand(sae.cfg.d_sae, generator=gen)
        sae.W_dec.copy_(sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True) * d_norm_F[:, None])
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.nn.Parameter):
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(sae.threshold.shape, generator=gen))
    return sae


@VARIANT_FACTORIES.register("standard")
def _standard(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return randomise(StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=test_metadata())), gen)


@VARIANT_FACTORIES.register("topk")
def _topk(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return randomise(TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4, metadata=test_metadata())), gen)


@VARIANT_FACTORIES.register("topk_rescaled")
def _topk_rescaled(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4, rescale_acts_by_decoder_norm=True, metadata=test_metadata())
    return randomise(TopKSAE(cfg), gen)


def _jumprelu_like(d_in: int, d_sae: int, gen: torch.Generator, trained_as: str | None) -> SAE[Any]:
    extra = {"training_architecture": trained_as} if trained_as else {}
    sae = randomise(JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=test_metadata(**extra))), gen)
    if trained_as:  # batch top-k variants infer with ONE threshold for every latent
        with torch.no_grad():
            sae.threshold.fill_(float(sae.threshold[0]))
    return sae


@VARIANT_FACTORIES.register("jumprelu")
def _jumprelu(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return _jumprelu_like(d_in, d_sae, gen, None)


@VARIANT_FACTORIES.register("batchtopk")
def _batchtopk(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return _jumprelu_like(d_in, d_sae, gen, "batchtopk")


@VARIANT_FACTORIES.register("matryoshka")
def _matryoshka(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return _jumprelu_like(d_in, d_sae, gen, "matryoshka_batchtopk")


@VARIANT_FACTORIES.register("gated")
def _gated(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    return randomise(GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae, metadata=test_metadata())), gen)


def variant_factories() -> Registry[SaeMaker]:
    """Every test factory: sae-lens' classes and each registered evalkit variant's."""
    for _, variant in ensure_registered().items():
        for name, maker in variant.test_factories.items():
            VARIANT_FACTORIES.add(name, maker)
    return VARIANT_FACTORIES


def make_sae(variant: str, d_in: int = 16, d_sae: int = 32, seed: int = 0) -> SAE[Any]:
    """A random inference SAE of the named variant (names: `list(variant_factories())`)."""
    gen = torch.Generator().manual_seed(seed)
    return variant_factories().get(variant)(d_in, d_sae, gen).eval()


# --------------------------------------------------------------------------------- foreign-format writers


def dl_relu_state(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """AutoEncoder (StandardTrainer, StandardTrainerAprilUpdate, PAnnealTrainer) keys of a standard SAE."""
    return {
        "encoder.weight": sae.W_enc.T,
        "encoder.bias": sae.b_enc,
        "decoder.weight": sae.W_dec.T,
        "bias": sae.b_dec,
    }


def dl_gated_state(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """GatedAutoEncoder keys of a gated SAE."""
    return {
        "encoder.weight": sae.W_enc.T,
        "decoder.weight": sae.W_dec.T,
        "decoder_bias": sae.b_dec,
        "r_mag": sae.r_mag,
        "gate_bias": sae.b_gate,
        "mag_bias": sae.b_mag,
    }


def dl_topk_state(sae: SAE[Any], threshold: float = -1.0) -> dict[str, torch.Tensor]:
    """AutoEncoderTopK / BatchTopKSAE keys (linear layers, b_dec, buffers k and threshold; −1 = never set)."""
    return {
        "encoder.weight": sae.W_enc.T,
        "encoder.bias": sae.b_enc,
        "decoder.weight": sae.W_dec.T,
        "b_dec": sae.b_dec,
        "k": torch.tensor(int(getattr(sae.cfg, "k", 4)), dtype=torch.int),
        "threshold": torch.tensor(threshold),
    }


def dl_batchtopk_state(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """BatchTopKSAE keys of a jumprelu SAE whose thresholds are all equal (θ = threshold[0])."""
    return dl_topk_state(sae, float(sae.threshold[0].detach()))


def dl_matryoshka_state(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """MatryoshkaBatchTopKSAE keys (W_enc layout, one θ, three nested groups) of a jumprelu SAE."""
    d_sae = int(sae.cfg.d_sae)
    return {
        "W_enc": sae.W_enc,
        "b_enc": sae.b_enc,
        "W_dec": sae.W_dec,
        "b_dec": sae.b_dec,
        "k": torch.tensor(4, dtype=torch.int),
        "threshold": sae.threshold[0].clone(),
        "group_sizes": torch.tensor([d_sae // 4, d_sae // 4, d_sae - 2 * (d_sae // 4)]),
    }


def dl_jumprelu_state(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """JumpReluAutoEncoder keys (it does not centre its input: compare with apply_b_dec_to_input=False)."""
    return {k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}


def write_dictionary_learning(
    folder: Path,
    trainer_class: str,
    state: dict[str, torch.Tensor],
    d_in: int = 16,
    d_sae: int = 32,
    **extra: Any,
) -> Path:
    """A dictionary_learning folder: config.json (trainer block) + ae.pt (torch.save of `state`)."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer = {
        "trainer_class": trainer_class,
        "dict_class": "whatever",
        "activation_dim": d_in,
        "dict_size": d_sae,
        "k": 4,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": "resid_post_layer_3",
        "seed": 7,
        **extra,
    }
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    torch.save({k: v.detach().clone() for k, v in state.items()}, folder / "ae.pt")
    return folder


def write_sparsify(run: Path, hookpoint: str, sae: SAE[Any], **cfg: Any) -> Path:
    """A sparsify run folder `run/hookpoint/{cfg.json, sae.safetensors}` (+ run/config.json), topk."""
    folder = run / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    state = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, folder / "sae.safetensors")
    sae_cfg = {
        "activation": "topk",
        "expansion_factor": 2,
        "normalize_decoder": True,
        "num_latents": int(sae.cfg.d_sae),
        "k": int(getattr(sae.cfg, "k", 4)),
    }
    (folder / "cfg.json").write_text(json.dumps({**sae_cfg, "multi_topk": False, "d_in": int(sae.cfg.d_in), **cfg}))
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m", "batch_size": 8}))
    return folder
