"""Training classes for evalkit's variants; evalkit.sae.training_unit registers them into sae-lens.

sae-lens' `SAETrainer` drives them like its own: `training_forward_pass` gives the loss,
`save_inference_model` writes the inference SAE (cosine → `cosine`, topafa → `topafa`, aligned_topk → `topk`
with `aligned: true` in its metadata).

TopK-family classes here add the auxiliary-k loss against dead latents (Gao et al. 2024, App. A.2; k_aux =
d_in/2, scaled down when few latents are dead) with coefficient AUX_K_COEFFICIENT = 1/32, as both TopK papers
used. sae-lens' own `TopKTrainingSAEConfig` defaults `aux_loss_coefficient` to 1.0: pass 1/32 for sae-lens
topk / batchtopk / matryoshka runs to match. As in sae-lens, the aux loss is a summed squared error (not
divided by the residual variance as dictionary_learning and the cosine reference exp40 do; the top-AFA
reference averages it over elements with k_aux = 512 and no dead-count scaling).

Kept from the references (cosine-scored-saes exp40, top-afa-sae training/sae.py): unit decoder rows, a = 0
and b = log √d_in, θ's EMA (β = 0.999, first value at step 1000), the AFA loss on the raw input. Not kept:
their b_dec initialisation (cosine: geometric median of the first batch), learning-rate schedules and
gradient clipping, which belong to the trainer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
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

from evalkit.sae.variants import UNSET_THRESHOLD, cosine_score, topafa_encode

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
    """EMA of the smallest positive activation; inference thresholds at θ.

    As the cosine reference (exp40): θ starts unset (negative), the first update sets it to the batch's
    smallest positive activation, later ones move it by lr (reference β = 0.999, lr = 0.001). sae-lens'
    BatchTopK instead starts its EMA from 0.
    """
    positive = feature_acts[feature_acts > 0]
    if not positive.numel():
        return
    smallest = positive.min().to(threshold.dtype)
    if float(threshold.max()) < 0:
        threshold.fill_(smallest)
    else:
        threshold.mul_(1 - lr).add_(lr * smallest)


def unit_rows(W_dec_FD: torch.Tensor) -> torch.Tensor:
    return W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def training_decoder(sae: TrainingSAE[Any]) -> torch.Tensor:
    """The decoder a training SAE uses: W_dec, or its unit rows when `cfg.unit_decoder`.

    Both reference codes keep decoder rows at unit norm (renormalise after every step and project the row-
    parallel gradient out); reparameterising d_i = V_i/‖V_i‖ holds the same constraint exactly under
    sae-lens' trainer, which has no per-step hook. The saved inference SAE gets the unit rows.
    """
    return unit_rows(sae.W_dec) if sae.cfg.unit_decoder else sae.W_dec


def decode_with(sae: TrainingSAE[Any], feature_acts: torch.Tensor, W_dec_FD: torch.Tensor) -> torch.Tensor:
    sae_out_pre = sae.hook_sae_recons(feature_acts @ W_dec_FD + sae.b_dec)
    sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
    return sae.reshape_fn_out(sae_out_pre, sae.d_head)


def save_training_decoder(sae: TrainingSAE[Any], state_dict: dict[str, Any]) -> None:
    with torch.no_grad():
        state_dict["W_dec"] = training_decoder(sae).detach().clone().contiguous()


# --------------------------------------------------------------------------------------------------- cosine


@dataclass
class CosineTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the cosine SAE; see `CosineSAEConfig` for k / per_feature / activation."""

    k: float = 32
    per_feature: bool = False
    activation: str = "topk"
    init_a: float = 0.0
    init_b: float | None = None
    """Initial exponent a and log-scale b. Defaults follow the reference code (cosine-scored-saes exp40, the
    headline recipe): a = 0 (pure cosine) and b = log √d_in, so the optimiser has to earn any norm
    dependence."""
    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    topk_threshold_lr: float = 0.001
    threshold_start_step: int = 1000
    """θ (batchtopk only) is an EMA with lr 0.001 (β = 0.999) of the smallest kept activation, first set at
    step `threshold_start_step` (reference exp40: THRESHOLD_BETA = 0.999, THRESHOLD_START_STEP = 1000)."""
    unit_decoder: bool = True
    """Decode with unit-norm rows (the reference's constraint); see `training_decoder`."""

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
        # A buffer, not a parameter: θ is an EMA statistic, not learned by gradient. Negative = not set yet.
        self.register_buffer("threshold", torch.full((1,), UNSET_THRESHOLD, dtype=self.dtype, device=self.device))

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
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return decode_with(self, feature_acts, training_decoder(self))

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        started = step_input.n_training_steps >= self.cfg.threshold_start_step
        if self.cfg.activation == "batchtopk" and started:
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
        W_dec_FD = training_decoder(self)
        loss = topk_aux_loss(step_input, sae_out, hidden_pre, W_dec_FD, self.cfg.aux_loss_coefficient)
        return {"auxiliary_reconstruction_loss": loss}

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        save_training_decoder(self, state_dict)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}


# --------------------------------------------------------------------------------------------------- top-AFA


@dataclass
class TopAFATrainingSAEConfig(TrainingSAEConfig):
    """Top-AFA training (reference: top-afa-sae training/sae.py, TopAFASAE).

    afa_loss_coefficient: the reference's `afa_coeff` (its default 0 = off), in the reference's units. Its
    loss is mean-over-elements MSE + afa_coeff·mean_batch((‖f‖ − ‖x‖)²), with x the raw (not b_dec-centred)
    input and f the kept activations; sae-lens' MSE sums over d_in instead of averaging, so evalkit adds
    afa_loss_coefficient·d_in·mean((‖f‖ − ‖x‖)²) to keep the reference's balance. ‖f‖ stands for the norm
    of what the latents write only with unit decoder rows, hence `unit_decoder` (default on).
    """

    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    afa_loss_coefficient: float = 0.0
    unit_decoder: bool = True

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topafa"


class TopAFATrainingSAE(TrainingSAE[TopAFATrainingSAEConfig]):
    """Top-AFA SAE in training; the k(x) selection is a mask, gradients flow through the kept activations."""

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The norms of the rows actually decoded with (≈ 1 under unit_decoder), computed as the saved
        # inference SAE will compute them, so both select the same latents to the last bit.
        dec_norm_F = training_decoder(self).detach().norm(dim=-1)
        feature_acts, hidden_pre = topafa_encode(self, self.process_sae_in(x), dec_norm_F)
        return self.hook_sae_acts_post(feature_acts), hidden_pre

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return decode_with(self, feature_acts, training_decoder(self))

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        W_dec_FD = training_decoder(self)
        aux = topk_aux_loss(step_input, sae_out, hidden_pre.relu(), W_dec_FD, self.cfg.aux_loss_coefficient)
        return {
            "auxiliary_reconstruction_loss": aux,
            "afa_loss": afa_loss(feature_acts, step_input.sae_in, self.cfg.afa_loss_coefficient),
        }

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        save_training_decoder(self, state_dict)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}


def afa_loss(feature_acts_TF: torch.Tensor, x_TD: torch.Tensor, coefficient: float) -> torch.Tensor:
    """coefficient·d_in·mean((‖f‖ − ‖x‖)²): the reference's AFA term rescaled to sae-lens' summed MSE."""
    gap_T = feature_acts_TF.norm(dim=-1) - x_TD.norm(dim=-1)
    return coefficient * x_TD.shape[-1] * gap_T.pow(2).mean()


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
            raise ValueError("aligned_topk keeps unit decoder rows itself; rescale_acts_by_decoder_norm must be False")
        self.metadata.aligned = True
        super().__post_init__()


def aligned_weights(W_enc_raw_DF: torch.Tensor, W_dec_raw_FD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
