"""The unit-encoder family: sae-lens' top-k, batch-top-k and matryoshka training with unit-norm encoder columns.

These classes change only how sae-lens' own SAEs are trained; each saves as that architecture's inference SAE
(topk, or jumprelu for the batch-top-k ones), so results call them `topk`, `batchtopk`, `matryoshka`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch import nn
from typing_extensions import override

from evalkit.sae.registration import Variant
from evalkit.sae.score import alignment_slopes, norm_exponents, unit_exponents
from evalkit.sae.variants.common import AUX_K_COEFFICIENT, NormalizedAuxMixin

# --------------------------------------------------------------------------- top-k with unit encoder columns


def unit_columns(W_enc_DF: torch.Tensor) -> torch.Tensor:
    return W_enc_DF / W_enc_DF.norm(dim=0, keepdim=True).clamp_min(1e-12)


class UnitEncoderMixin:
    """Top-k family training with unit-norm encoder columns, by reparameterisation w_i = U_i/‖U_i‖.

    Why: on the embedded world plain top-k training let a few latents grow their encoder norm and win every
    top-k slot (dead latents had half the live ones' encoder norm); with unit columns latents compete on
    direction (plus b_enc) only, as cosine SAEs do, and the decoder rows carry the scale. The saved SAE is
    the architecture's own inference SAE (topk, or jumprelu for batch-top-k) with the unit columns in W_enc.
    """

    W_enc: nn.Parameter
    b_enc: nn.Parameter

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        hidden_pre = self.hook_sae_acts_pre(sae_in @ unit_columns(self.W_enc) + self.b_enc)  # type: ignore[attr-defined]
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre  # type: ignore[attr-defined]

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)  # type: ignore[misc]
        with torch.no_grad():
            state_dict["W_enc"] = unit_columns(self.W_enc).detach().clone().contiguous()


@dataclass
class UnitEncoderConfigMixin:
    """Config fields shared by the unit-encoder classes; listed first among the bases, before sae-lens' config."""

    aux_loss_coefficient: float = AUX_K_COEFFICIENT
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self) -> None:
        if self.rescale_acts_by_decoder_norm:
            raise ValueError("unit-encoder training ranks by w_i·x + b_i; rescale_acts_by_decoder_norm must be False")
        super().__post_init__()  # type: ignore[misc]


@dataclass
class UnitEncTopKTrainingSAEConfig(UnitEncoderConfigMixin, TopKTrainingSAEConfig):
    """Per-token top-k with unit encoder columns; saved as plain `topk`."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "unit_enc_topk"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKSAEConfig


class UnitEncTopKTrainingSAE(NormalizedAuxMixin, UnitEncoderMixin, TopKTrainingSAE):  # type: ignore[misc]
    cfg: UnitEncTopKTrainingSAEConfig  # type: ignore[assignment]


@dataclass
class UnitEncBatchTopKTrainingSAEConfig(UnitEncoderConfigMixin, BatchTopKTrainingSAEConfig):
    """Batch top-k with unit encoder columns; saved, as sae-lens saves batch-top-k, as `jumprelu`."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "unit_enc_batchtopk"


class UnitEncBatchTopKTrainingSAE(NormalizedAuxMixin, UnitEncoderMixin, BatchTopKTrainingSAE):  # type: ignore[misc]
    cfg: UnitEncBatchTopKTrainingSAEConfig  # type: ignore[assignment]


@dataclass
class UnitEncMatryoshkaTrainingSAEConfig(UnitEncoderConfigMixin, MatryoshkaBatchTopKTrainingSAEConfig):
    """Matryoshka batch top-k with unit encoder columns; saved as `jumprelu`."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "unit_enc_matryoshka_batchtopk"


class UnitEncMatryoshkaTrainingSAE(UnitEncoderMixin, MatryoshkaBatchTopKTrainingSAE):  # type: ignore[misc]
    cfg: UnitEncMatryoshkaTrainingSAEConfig  # type: ignore[assignment]


UnitEncoderSAE = UnitEncTopKTrainingSAE | UnitEncBatchTopKTrainingSAE | UnitEncMatryoshkaTrainingSAE


@alignment_slopes.register(UnitEncTopKTrainingSAE)
@alignment_slopes.register(UnitEncBatchTopKTrainingSAE)
@alignment_slopes.register(UnitEncMatryoshkaTrainingSAE)
def _unit_encoder_alpha(sae: UnitEncoderSAE, median_norm: float) -> torch.Tensor:
    """⟨w_i, d_i⟩ with the unit encoder columns the class computes with."""
    W_enc_DF = unit_columns(sae.W_enc).detach().double().cpu()
    W_dec_FD = sae.W_dec.detach().double().cpu()
    return (W_enc_DF.T * W_dec_FD).sum(dim=1)


for _cls in (UnitEncTopKTrainingSAE, UnitEncBatchTopKTrainingSAE, UnitEncMatryoshkaTrainingSAE):
    norm_exponents.register(_cls, unit_exponents)

VARIANT = Variant(
    name="unit_encoder",
    training={
        "unit_enc_topk": (UnitEncTopKTrainingSAE, UnitEncTopKTrainingSAEConfig),
        "unit_enc_batchtopk": (UnitEncBatchTopKTrainingSAE, UnitEncBatchTopKTrainingSAEConfig),
        "unit_enc_matryoshka_batchtopk": (UnitEncMatryoshkaTrainingSAE, UnitEncMatryoshkaTrainingSAEConfig),
    },
    saved_as={
        "unit_enc_topk": "topk",
        "unit_enc_batchtopk": "batchtopk",
        "unit_enc_matryoshka_batchtopk": "matryoshka",
    },
)
