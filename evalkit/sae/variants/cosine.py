"""The `cosine` variant (docs/variants.md; cosine-scored-saes exp40): inference and training classes, configs, its
score, alignment slope and norm exponent, and its test factories.

s_i = exp(b)·‖x_c‖^a·cos(x_c, W_enc[:,i]) + b_enc,i, then per-token top-k or a batch threshold θ. Kept from the
reference: unit decoder rows, a = 0 and b = log √d_in at the start of training, θ's EMA (β = 0.999, first value at
step 1000). Not kept: its b_dec initialisation (geometric median of the first batch), learning-rate schedule and
gradient clipping, which belong to the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import TopK
from torch import nn
from typing_extensions import override

from evalkit.core.errors import EvalkitInputError
from evalkit.sae.registration import SaeMaker, Variant
from evalkit.sae.score import alignment_slopes, norm_exponents, score
from evalkit.sae.variants.common import (
    AUX_K_COEFFICIENT,
    NORM_EPS,
    UNSET_THRESHOLD,
    NormalizedAuxMixin,
    decode_with,
    linear_decode,
    save_training_decoder,
    threshold_relu,
    training_decoder,
    update_batch_threshold,
)


def cosine_score(
    x_c_TD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """s_i = exp(b)·‖x_c‖^a·cos(x_c, W_enc[:,i]) + b_enc,i; a, b are [1] (global) or [d_sae] (per-feature).

    The encoder columns are normalised here, inside the forward pass, so only their direction matters. This is
    the reference's exp(a·log‖x_c‖ + b)·cos + b_enc (cosine-scored-saes exp40 `encode`, norm clamped at 1e-8).
    """
    norm_T1 = x_c_TD.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    w_hat_DF = W_enc_DF / W_enc_DF.norm(dim=0, keepdim=True).clamp_min(NORM_EPS)
    cos_TF = (x_c_TD @ w_hat_DF) / norm_T1
    return torch.exp(b) * norm_T1.pow(a) * cos_TF + b_enc_F


# --------------------------------------------------------------------------------------------------- cosine


@dataclass
class CosineSAEConfig(SAEConfig):
    """Cosine-scored SAE.

    k: latents kept per token when `activation == "topk"` (also the training batch-average for "batchtopk").
    per_feature: a and b are vectors [d_sae] instead of scalars [1].
    activation: "topk" (per-token top-k of ReLU(s)) or "batchtopk" (inference uses the single learned
    threshold θ; batch top-k over the given tokens while θ is unset, i.e. negative).
    """

    k: float = 32
    per_feature: bool = False
    activation: str = "topk"

    @override
    @classmethod
    def architecture(cls) -> str:
        return "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation not in COSINE_ACTIVATIONS:
            raise ValueError(f"cosine activation must be one of {sorted(COSINE_ACTIVATIONS)}, got {self.activation!r}")


def _cosine_topk(sae: CosineSAE, hidden_pre: torch.Tensor) -> torch.Tensor:
    return TopK(int(sae.cfg.k))(hidden_pre)


def _cosine_threshold(sae: CosineSAE, hidden_pre: torch.Tensor) -> torch.Tensor:
    # θ < 0 means training never set it (the reference's −1 sentinel): the reference then falls back to
    # batch top-k over the tokens it is given, and so does evalkit.
    if float(sae.threshold.detach().max()) < 0:
        return BatchTopK(sae.cfg.k)(hidden_pre)
    return threshold_relu(hidden_pre, sae.threshold)


COSINE_ACTIVATIONS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "topk": _cosine_topk,
    "batchtopk": _cosine_threshold,
}


def init_cosine_params(sae: SAE[Any], per_feature: bool) -> None:
    """b_enc, a (exponent), b (log-scale) and θ; a = 1, b = 0 starts as the inner product of a unit column."""
    n = sae.cfg.d_sae if per_feature else 1
    sae.b_enc = nn.Parameter(torch.zeros(sae.cfg.d_sae, dtype=sae.dtype, device=sae.device))
    sae.a = nn.Parameter(torch.ones(n, dtype=sae.dtype, device=sae.device))
    sae.b = nn.Parameter(torch.zeros(n, dtype=sae.dtype, device=sae.device))


class CosineSAE(SAE[CosineSAEConfig]):
    """Inference cosine SAE: score, then ReLU and top-k, or the batch threshold θ."""

    b_enc: nn.Parameter
    a: nn.Parameter
    b: nn.Parameter
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        init_cosine_params(self, self.cfg.per_feature)
        # θ is stored for every cosine SAE so all share one state-dict layout; only "batchtopk" reads it.
        # −1 = not learned yet (batch top-k fallback), as a fresh training SAE starts.
        self.threshold = nn.Parameter(torch.full((1,), UNSET_THRESHOLD, dtype=self.dtype, device=self.device))

    def hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        return cosine_score(sae_in, self.W_enc, self.b_enc, self.a, self.b)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hidden_pre = self.hook_sae_acts_pre(self.hidden_pre(x))
        return self.hook_sae_acts_post(COSINE_ACTIVATIONS[self.cfg.activation](self, hidden_pre))

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return linear_decode(self, feature_acts)

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("cosine SAEs cannot fold decoder norms exactly (the scale exp(b) is not per-row)")


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


class CosineTrainingSAE(NormalizedAuxMixin, TrainingSAE[CosineTrainingSAEConfig]):  # type: ignore[misc]
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
    def aux_decoder(self) -> torch.Tensor:
        return training_decoder(self)

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        save_training_decoder(self, state_dict)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}


# ------------------------------------------------------------------------------------------ per-variant rules

CosineLike = CosineSAE | CosineTrainingSAE


@score.register(CosineSAE)
def _cosine_score(sae: CosineSAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.hidden_pre(x_TD)


def cosine_params(sae: CosineLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The exponent a and log-scale b, broadcast to per-latent vectors [d_sae] (float64)."""
    d_sae = int(sae.W_dec.shape[0])
    a_F = torch.as_tensor(sae.a).detach().double().cpu().reshape(-1).expand(d_sae)
    b_F = torch.as_tensor(sae.b).detach().double().cpu().reshape(-1).expand(d_sae)
    return a_F.clone(), b_F.clone()


@alignment_slopes.register(CosineSAE)
@alignment_slopes.register(CosineTrainingSAE)
def cosine_alpha(sae: CosineLike, median_norm: float) -> torch.Tensor:
    """Score/c at input norm m for x_c = c·d_i: exp(b_i)·m^(a_i − 1)·‖d_i‖·cos(W_enc[:,i], d_i) (docs/metrics.md: the
    slope at the median norm)."""
    a_F, b_F = cosine_params(sae)
    W_enc_DF, W_dec_FD = sae.W_enc.detach().double().cpu(), sae.W_dec.detach().double().cpu()
    dec_norms_F = W_dec_FD.norm(dim=1)
    dots_F = (W_enc_DF.T * W_dec_FD).sum(dim=1)
    norms_F = W_enc_DF.norm(dim=0) * dec_norms_F
    cos_F = torch.where(norms_F > 0, dots_F / norms_F.clamp_min(1e-300), torch.zeros_like(dots_F))
    m = float(median_norm)
    if m <= 0:
        raise EvalkitInputError("activations", "median token norm is 0; cosine alignment slope undefined")
    return torch.exp(b_F) * m ** (a_F - 1.0) * dec_norms_F * cos_F


@norm_exponents.register(CosineSAE)
@norm_exponents.register(CosineTrainingSAE)
def _cosine_exponents(sae: CosineLike) -> torch.Tensor:
    return cosine_params(sae)[0]


# ---------------------------------------------------------------------------------------------- test factories


def _test_factory(per_feature: bool, activation: str) -> SaeMaker:
    def make(d_in: int, d_sae: int, gen: torch.Generator) -> SAE[Any]:
        from evalkit.sae.factory import randomise, test_metadata

        cfg = CosineSAEConfig(
            d_in=d_in, d_sae=d_sae, k=4, per_feature=per_feature, activation=activation, metadata=test_metadata()
        )
        sae = randomise(CosineSAE(cfg), gen)
        with torch.no_grad():  # a in [0, 1) as trained cosine SAEs have it; θ suited to cosine-sized scores
            sae.a.copy_(torch.rand(sae.a.shape, generator=gen))
            sae.threshold.fill_(0.2)
        return sae

    return make


VARIANT = Variant(
    name="cosine",
    inference=(CosineSAE, CosineSAEConfig),
    training={"cosine": (CosineTrainingSAE, CosineTrainingSAEConfig)},
    test_factories={
        "cosine": _test_factory(False, "topk"),
        "cosine_per_feature": _test_factory(True, "topk"),
        "cosine_batchtopk": _test_factory(False, "batchtopk"),
    },
)
