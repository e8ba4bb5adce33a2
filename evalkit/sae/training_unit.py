"""Top-k family training with unit-norm encoder columns, and the registration of every evalkit training class.

Kept apart from evalkit.sae.training (the seed papers' variants) because these classes change only how sae-lens'
own top-k, batch-top-k and matryoshka SAEs are trained; each saves as that architecture's inference SAE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEConfig, TrainingSAE, TrainingSAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch import nn
from typing_extensions import override

from evalkit.sae.training import (
    AUX_K_COEFFICIENT,
    AlignedTopKTrainingSAE,
    AlignedTopKTrainingSAEConfig,
    CosineTrainingSAE,
    CosineTrainingSAEConfig,
    TopAFATrainingSAE,
    TopAFATrainingSAEConfig,
)

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


class UnitEncTopKTrainingSAE(UnitEncoderMixin, TopKTrainingSAE):  # type: ignore[misc]
    cfg: UnitEncTopKTrainingSAEConfig  # type: ignore[assignment]


@dataclass
class UnitEncBatchTopKTrainingSAEConfig(UnitEncoderConfigMixin, BatchTopKTrainingSAEConfig):
    """Batch top-k with unit encoder columns; saved, as sae-lens saves batch-top-k, as `jumprelu`."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "unit_enc_batchtopk"


class UnitEncBatchTopKTrainingSAE(UnitEncoderMixin, BatchTopKTrainingSAE):  # type: ignore[misc]
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


# ------------------------------------------------------------------------- batch-top-k threshold calibration

CALIBRATION_BATCHES = 32


@torch.no_grad()
def calibrate_batch_threshold(sae: BatchTopKTrainingSAE, batches: Iterator[torch.Tensor]) -> float:
    """Set a batch-top-k SAE's inference threshold to the mean, over batches, of the smallest activation that batch
    top-k keeps, computed with the final weights (the BatchTopK paper's estimate; Bussmann et al. 2024).

    Why: sae-lens tracks it during training as an exponential average (rate 0.01) that starts at 0 and is not
    bias-corrected, so after a short run it is low (0.99^120 = 30% of the weight is still on the 0 start) and the
    saved SAE fires more than k latents per token. Returns the new threshold.
    """
    minima = []
    for batch_BD in batches:
        acts_BF = sae.encode(batch_BD)
        if (acts_BF > 0).any():
            minima.append(acts_BF[acts_BF > 0].min().double())
    if minima:
        sae.topk_threshold = torch.stack(minima).mean().to(sae.topk_threshold)
    return float(sae.topk_threshold)


# --------------------------------------------------------------------------------------------- registration

TRAINING_VARIANTS: dict[str, tuple[type[TrainingSAE[Any]], type[TrainingSAEConfig]]] = {
    "cosine": (CosineTrainingSAE, CosineTrainingSAEConfig),
    "topafa": (TopAFATrainingSAE, TopAFATrainingSAEConfig),
    "aligned_topk": (AlignedTopKTrainingSAE, AlignedTopKTrainingSAEConfig),
    "unit_enc_topk": (UnitEncTopKTrainingSAE, UnitEncTopKTrainingSAEConfig),
    "unit_enc_batchtopk": (UnitEncBatchTopKTrainingSAE, UnitEncBatchTopKTrainingSAEConfig),
    "unit_enc_matryoshka_batchtopk": (UnitEncMatryoshkaTrainingSAE, UnitEncMatryoshkaTrainingSAEConfig),
}


def register_training_variants() -> None:
    """Register evalkit's training classes into sae-lens once (its registry raises on a repeat)."""
    for name, (sae_cls, cfg_cls) in TRAINING_VARIANTS.items():
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, sae_cls, cfg_cls)
