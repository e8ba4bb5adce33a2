"""Training classes for evalkit's variants, registered into sae-lens' training registry.

sae-lens' `SAETrainer` drives them like its own: `training_forward_pass` gives the loss,
`save_inference_model` writes the inference SAE (cosine → `cosine`, topafa → `topafa`, aligned_topk → `topk`
with `aligned: true` in its metadata).

TopK-family classes here add the auxiliary-k loss against dead latents (Gao et al. 2024, App. A.2; k_aux =
d_in/2, scaled down when few latents are dead) with coefficient AUX_K_COEFFICIENT = 1/32, as both TopK papers
used. sae-lens' own `TopKTrainingSAEConfig` defaults `aux_loss_coefficient` to 1.0: pass 1/32 for sae-lens
topk / batchtopk / matryoshka runs to match. As in sae-lens, the aux loss is a summed squared error (not
divided by the residual variance as dictionary_learning does).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.sae import (
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import (
    TopK,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    calculate_topk_aux_acts,
)
from torch import nn
from typing_extensions import override

from evalkit.sae.variants import cosine_score, topafa_encode

log = logging.getLogger(__name__)

AUX_K_COEFFICIENT = 1 / 32


def topk_aux_loss(
    step_input: TrainStepInput,
    sae_out: torch.Tensor,
    hidden_pre: torch.Tensor,
    W_dec_FD: torch.Tensor,
    coefficient: float,
) -> torch.Tensor:
    """Dead latents (top k_aux of their pre-activations) reconstruct the live latents' residual (no b_dec)."""
    dead_F = step_input.dead_neuron_mask
    if dead_F is None or (num_dead := int(dead_F.sum())) == 0 or coefficient == 0:
        return sae_out.new_tensor(0.0)
    residual = (step_input.sae_in - sae_out).detach()
    k_aux = step_input.sae_in.shape[-1] // 2
    scale = min(num_dead / k_aux, 1.0)
    aux_acts = calculate_topk_aux_acts(min(k_aux, num_dead), hidden_pre, dead_F)
    recons = aux_acts @ W_dec_FD
    return coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()


@torch.no_grad()
def update_batch_threshold(threshold: torch.Tensor, feature_acts: torch.Tensor, lr: float) -> None:
    """EMA of the smallest positive activation (sae-lens' BatchTopK rule); inference thresholds at θ."""
    positive = feature_acts[feature_acts > 0]
    if positive.numel():
        threshold.mul_(1 - lr).add_(lr * positive.min().to(threshold.dtype))


# --------------------------------------------------------------------------------------------------- cosine


@dataclass
class CosineTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the cosine SAE; see `CosineSAEConfig` for k / per_feature / activation."""

    k: float = 32
    per_feature: bool = False
    activation: str = "topk"
    init_a: float = 0.0
    init_b: float | None = None
    """Initial exponent a and log-scale b. Defaults follow the reference code (cosine-scored-saes exp10-17):
    a = 0 (pure cosine) and b = log √d_in, so the optimiser has to earn any norm dependence."""
    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    topk_threshold_lr: float = 0.01

    @override
    @classmethod
    def architecture(cls) -> str:
        return "cosine"


class CosineTrainingSAE(TrainingSAE[CosineTrainingSAEConfig]):
    """Cosine SAE in training: per-token top-k, or batch top-k with a running threshold for inference."""

    b_enc: nn.Parameter
    a: nn.Parameter
    b: nn.Parameter
    threshold: torch.Tensor

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        n = self.cfg.d_sae if self.cfg.per_feature else 1
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.a = nn.Parameter(torch.full((n,), self.cfg.init_a, dtype=self.dtype, device=self.device))
        init_b = self.cfg.init_b if self.cfg.init_b is not None else 0.5 * math.log(self.cfg.d_in)
        self.b = nn.Parameter(torch.full((n,), init_b, dtype=self.dtype, device=self.device))
        # A buffer, not a parameter: θ is an EMA statistic, not learned by gradient.
        self.register_buffer("threshold", torch.zeros(1, dtype=self.dtype, device=self.device))

    @override
    def get_activation_fn(self) -> nn.Module:
        if self.cfg.activation == "batchtopk":
            return BatchTopK(self.cfg.k)
        return TopK(int(self.cfg.k))

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(cosine_score(sae_in, self.W_enc, self.b_enc, self.a, self.b))
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        if self.cfg.activation == "batchtopk":
            update_batch_threshold(self.threshold, output.feature_acts, self.cfg.topk_threshold_lr)
        output.metrics["cosine_a_mean"] = float(self.a.detach().mean())
        return output

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        loss = topk_aux_loss(step_input, sae_out, hidden_pre, self.W_dec, self.cfg.aux_loss_coefficient)
        return {"auxiliary_reconstruction_loss": loss}

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}


# --------------------------------------------------------------------------------------------------- top-AFA


@dataclass
class TopAFATrainingSAEConfig(TrainingSAEConfig):
    """Top-AFA training; `afa_loss_coefficient` weights (‖f‖ − ‖x‖)² as in the reference code (0 = off)."""

    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    afa_loss_coefficient: float = 0.0

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topafa"


class TopAFATrainingSAE(TrainingSAE[TopAFATrainingSAEConfig]):
    """Top-AFA SAE in training; the k(x) selection is a mask, gradients flow through the kept activations."""

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_acts, hidden_pre = topafa_encode(self, self.process_sae_in(x))
        return self.hook_sae_acts_post(feature_acts), hidden_pre

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        aux = topk_aux_loss(step_input, sae_out, hidden_pre.relu(), self.W_dec, self.cfg.aux_loss_coefficient)
        afa_gap = feature_acts.norm(dim=-1) - step_input.sae_in.norm(dim=-1)
        return {
            "auxiliary_reconstruction_loss": aux,
            "afa_loss": self.cfg.afa_loss_coefficient * afa_gap.pow(2).mean(),
        }

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}


# -------------------------------------------------------------------------------------------- aligned top-k


@dataclass
class AlignedTopKTrainingSAEConfig(TopKTrainingSAEConfig):
    """Aligned training on top-k: unit decoder rows d̂_i and ⟨W_enc[:,i], d̂_i⟩ = 1 exactly, by
    reparameterisation.

    The free parameters are a raw decoder V (d̂_i = V_i/‖V_i‖) and a raw encoder U; the encoder used is w_i =
    d̂_i + (I − d̂_i d̂_iᵀ) u_i. Saved as a plain `topk` SAE with `aligned: true` in its metadata.
    """

    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    rescale_acts_by_decoder_norm: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return "aligned_topk"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKSAEConfig

    def __post_init__(self) -> None:
        if self.rescale_acts_by_decoder_norm:
            raise ValueError(
                "aligned_topk keeps unit decoder rows itself; rescale_acts_by_decoder_norm must be False"
            )
        self.metadata.aligned = True
        super().__post_init__()


def aligned_weights(
    W_enc_raw_DF: torch.Tensor, W_dec_raw_FD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in]) with unit decoder rows and ⟨W_enc[:,i], d̂_i⟩ = 1."""
    d_hat_FD = W_dec_raw_FD / W_dec_raw_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u_FD = W_enc_raw_DF.T
    w_FD = d_hat_FD + u_FD - (u_FD * d_hat_FD).sum(dim=-1, keepdim=True) * d_hat_FD
    return w_FD.T, d_hat_FD


class AlignedTopKTrainingSAE(TopKTrainingSAE):
    """Top-k SAE trained under the alignment constraint; W_enc/W_dec hold the raw free parameters."""

    cfg: AlignedTopKTrainingSAEConfig  # type: ignore[assignment]

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return aligned_weights(self.W_enc, self.W_dec)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W_enc_DF, _ = self.effective_weights()
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ W_enc_DF + self.b_enc)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        _, W_dec_FD = self.effective_weights()
        sae_out_pre = self.hook_sae_recons(feature_acts @ W_dec_FD + self.b_dec)
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)
        return self.reshape_fn_out(sae_out_pre, self.d_head)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        _, W_dec_FD = self.effective_weights()
        loss = topk_aux_loss(step_input, sae_out, hidden_pre, W_dec_FD, self.cfg.aux_loss_coefficient)
        return {"auxiliary_reconstruction_loss": loss}

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        with torch.no_grad():
            W_enc_DF, W_dec_FD = self.effective_weights()
        state_dict["W_enc"] = W_enc_DF.detach().clone().contiguous()
        state_dict["W_dec"] = W_dec_FD.detach().clone().contiguous()

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("aligned training keeps unit decoder rows; there is nothing to fold")


# --------------------------------------------------------------------------------------------- registration

TRAINING_VARIANTS: dict[str, tuple[type[TrainingSAE[Any]], type[TrainingSAEConfig]]] = {
    "cosine": (CosineTrainingSAE, CosineTrainingSAEConfig),
    "topafa": (TopAFATrainingSAE, TopAFATrainingSAEConfig),
    "aligned_topk": (AlignedTopKTrainingSAE, AlignedTopKTrainingSAEConfig),
}


def register_training_variants() -> None:
    """Register evalkit's training classes into sae-lens once (its registry raises on a repeat)."""
    for name, (sae_cls, cfg_cls) in TRAINING_VARIANTS.items():
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, sae_cls, cfg_cls)
