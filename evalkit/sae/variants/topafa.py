"""The `topafa` variant (docs/variants.md; reference top-afa-sae training/sae.py): no b_enc, and the number of active
latents k(x) is chosen per token from ‖x_c‖. Inference and training classes, configs, score and fold rules, the
alignment slope and norm exponent, and its test factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
)
from typing_extensions import override

from evalkit.sae.registration import Variant
from evalkit.sae.score import alignment_slopes, fold_in_place, linear_alpha, norm_exponents, score, unit_exponents
from evalkit.sae.variants.common import (
    AUX_K_COEFFICIENT,
    NormalizedAuxMixin,
    decode_with,
    linear_decode,
    save_training_decoder,
    training_decoder,
)

TOPAFA_LAST_SUM_SENTINEL = 1e8
"""The reference (top-afa-sae training/sae.py) overwrites the last cumulative sum C_h with 1e8 before the
square root, so √C_h = 1e4: k(x) = d_sae only when ‖x_c‖ > (1e4 + √C_(h−1))/2, otherwise k(x) ≤ d_sae − 1.
evalkit keeps that exact sentinel rather than excluding C_h outright, so the two agree on every input."""


def topafa_order_and_k(
    acts_TF: torch.Tensor, dec_norm_F: torch.Tensor, target_norm_T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent order by s = (a_i‖d_i‖)² descending [T, F], k(x) [T]); one sort serves both k and the mask.

    k(x) = argmin_j |√C_j − ‖x_c‖| + 1, C_j the cumulative sum of the sorted s (first minimum on ties).
    """
    s_TF = (acts_TF * dec_norm_F).pow(2)
    sorted_TF, order_TF = s_TF.sort(dim=-1, descending=True)
    cum_TF = sorted_TF.cumsum(dim=-1)
    cum_TF[..., -1] = TOPAFA_LAST_SUM_SENTINEL
    k_T = (cum_TF.sqrt() - target_norm_T.unsqueeze(-1)).abs().argmin(dim=-1) + 1
    return order_TF, k_T


def topafa_k(acts_TF: torch.Tensor, dec_norm_F: torch.Tensor, target_norm_T: torch.Tensor) -> torch.Tensor:
    """k(x) per token; see `topafa_order_and_k` and TOPAFA_LAST_SUM_SENTINEL."""
    return topafa_order_and_k(acts_TF, dec_norm_F, target_norm_T)[1]


def topafa_mask(acts_TF: torch.Tensor, dec_norm_F: torch.Tensor, target_norm_T: torch.Tensor) -> torch.Tensor:
    """0/1 mask keeping, per token, the k(x) latents with the largest a_i‖d_i‖."""
    order_TF, k_T = topafa_order_and_k(acts_TF, dec_norm_F, target_norm_T)
    rank_F = torch.arange(acts_TF.shape[-1], device=acts_TF.device)
    keep_sorted_TF = (rank_F < k_T.unsqueeze(-1)).to(acts_TF.dtype)
    return torch.zeros_like(acts_TF).scatter(-1, order_TF, keep_sorted_TF)


# --------------------------------------------------------------------------------------------------- top-AFA


@dataclass
class TopAFASAEConfig(SAEConfig):
    """Top-AFA SAE: no b_enc; the number of active latents k(x) is chosen per token from ‖x_c‖."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topafa"


def topafa_encode(
    sae: SAE[Any], sae_in: torch.Tensor, dec_norm_F: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature_acts, hidden_pre) of a top-AFA SAE for an already-centred input.

    dec_norm_F: the decoder row norms the selection uses; default the stored ‖d_i‖ (training passes ones
    when it decodes with unit rows).
    """
    hidden_pre = sae.hook_sae_acts_pre(sae_in @ sae.W_enc)
    acts = hidden_pre.relu()
    norms_F = sae.W_dec.detach().norm(dim=-1) if dec_norm_F is None else dec_norm_F
    mask = topafa_mask(acts.detach(), norms_F, sae_in.detach().norm(dim=-1))
    return acts * mask, hidden_pre


class TopAFASAE(SAE[TopAFASAEConfig]):
    """Inference top-AFA SAE."""

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        feature_acts, _ = topafa_encode(self, self.process_sae_in(x))
        return self.hook_sae_acts_post(feature_acts)

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return linear_decode(self, feature_acts)


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


class TopAFATrainingSAE(NormalizedAuxMixin, TrainingSAE[TopAFATrainingSAEConfig]):  # type: ignore[misc]
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
    def aux_decoder(self) -> torch.Tensor:
        return training_decoder(self)

    @override
    def aux_hidden(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return hidden_pre.relu()

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        return losses | {"afa_loss": afa_loss(feature_acts, step_input.sae_in, self.cfg.afa_loss_coefficient)}

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


# ------------------------------------------------------------------------------------------ per-variant rules


@score.register(TopAFASAE)
def _topafa_score(sae: TopAFASAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x_TD) @ sae.W_enc


@fold_in_place.register(TopAFASAE)
def _fold_topafa(sae: TopAFASAE) -> None:
    # Exact: the selection ranks a_i‖d_i‖, which folding leaves unchanged.
    with torch.no_grad():
        norms_F = sae.W_dec.norm(dim=-1).clamp_min(1e-12)
        sae.W_dec.div_(norms_F.unsqueeze(1))
        sae.W_enc.mul_(norms_F.unsqueeze(0))


alignment_slopes.register(TopAFASAE, linear_alpha)
alignment_slopes.register(TopAFATrainingSAE, linear_alpha)
norm_exponents.register(TopAFASAE, unit_exponents)
norm_exponents.register(TopAFATrainingSAE, unit_exponents)


def _test_factory(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    from evalkit.sae.factory import randomise, test_metadata

    return randomise(TopAFASAE(TopAFASAEConfig(d_in=d_in, d_sae=d_sae, metadata=test_metadata())), gen)


VARIANT = Variant(
    name="topafa",
    inference=(TopAFASAE, TopAFASAEConfig),
    training={"topafa": (TopAFATrainingSAE, TopAFATrainingSAEConfig)},
    test_factories={"topafa": _test_factory},
)
