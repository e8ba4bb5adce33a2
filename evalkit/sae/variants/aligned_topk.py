"""The `aligned_topk` training variant: top-k trained with unit decoder rows and ⟨W_enc[:,i], d̂_i⟩ = 1 exactly.

It saves as sae-lens' own `topk` inference SAE with `aligned: true` in its metadata, so results call it `topk`
(family `topk+aligned`). Training class, config, the effective weights' alignment rule, and its test factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import SAE, SAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from typing_extensions import override

from evalkit.sae.registration import Variant
from evalkit.sae.score import alignment_slopes, norm_exponents, unit_exponents
from evalkit.sae.variants.common import AUX_K_COEFFICIENT, NormalizedAuxMixin

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


class AlignedTopKTrainingSAE(NormalizedAuxMixin, TopKTrainingSAE):  # type: ignore[misc]
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
    def aux_decoder(self) -> torch.Tensor:
        return self.effective_weights()[1]

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


# ------------------------------------------------------------------------------------------ per-variant rules


@alignment_slopes.register(AlignedTopKTrainingSAE)
def _aligned_alpha(sae: AlignedTopKTrainingSAE, median_norm: float) -> torch.Tensor:
    """⟨w_i, d̂_i⟩ of the effective weights (1 by construction, up to rounding)."""
    W_enc_DF, W_dec_FD = (w.detach().double().cpu() for w in sae.effective_weights())
    return (W_enc_DF.T * W_dec_FD).sum(dim=1)


norm_exponents.register(AlignedTopKTrainingSAE, unit_exponents)


def _test_factory(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
    from evalkit.sae.factory import randomise, test_metadata

    meta = test_metadata(aligned=True, training_architecture="aligned_topk")
    sae = randomise(TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4, metadata=meta)), gen)
    with torch.no_grad():
        W_enc_DF, W_dec_FD = aligned_weights(sae.W_enc, sae.W_dec)
        sae.W_enc.copy_(W_enc_DF)
        sae.W_dec.copy_(W_dec_FD)
    return sae


VARIANT = Variant(
    name="aligned_topk",
    training={"aligned_topk": (AlignedTopKTrainingSAE, AlignedTopKTrainingSAEConfig)},
    saved_as={"aligned_topk": "topk"},
    test_factories={"aligned_topk": _test_factory},
)
