"""Inference classes for the variants sae-lens lacks: `cosine` and `topafa` (VARIANTS.md).

Each is one sae-lens `SAE` subclass plus one `SAEConfig` subclass, registered into sae-lens so that
`SAE.load_from_disk` rebuilds them from a folder whose cfg.json names the architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.sae import SAE, SAEConfig
from sae_lens.saes.topk_sae import TopK
from torch import nn
from typing_extensions import override

log = logging.getLogger(__name__)

UNSET_THRESHOLD = -1.0
"""θ before the first batch-threshold update (the reference's sentinel); inference then uses batch top-k."""

NORM_EPS = 1e-8
"""Floor for token and encoder-column norms, so a zero input scores b_enc instead of NaN."""


# ---------------------------------------------------------------------------------------------- shared math


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


def threshold_relu(hidden_pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Batch-threshold inference (JumpReLU with one θ): ReLU(s)·1[s > θ].

    Strict '>' as in the cosine paper's headline recipe (cosine-scored-saes exp40, rerun by exp61:
    `post_relu * (post_relu > threshold)`) and in sae-lens' JumpReLU; earlier experiments there (exp36, exp41)
    used '≥'. The two differ only for a score exactly equal to θ.
    """
    return hidden_pre.relu() * (hidden_pre > threshold).to(hidden_pre.dtype)


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
        return _linear_decode(self, feature_acts)

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("cosine SAEs cannot fold decoder norms exactly (the scale exp(b) is not per-row)")


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
        return _linear_decode(self, feature_acts)


def _linear_decode(sae: SAE[Any], feature_acts: torch.Tensor) -> torch.Tensor:
    sae_out_pre = sae.hook_sae_recons(feature_acts @ sae.W_dec + sae.b_dec)
    sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
    return sae.reshape_fn_out(sae_out_pre, sae.d_head)


# --------------------------------------------------------------------------------------------- registration

INFERENCE_VARIANTS: dict[str, tuple[type[SAE[Any]], type[SAEConfig]]] = {
    "cosine": (CosineSAE, CosineSAEConfig),
    "topafa": (TopAFASAE, TopAFASAEConfig),
}


def register_inference_variants() -> None:
    """Register evalkit's inference classes into sae-lens once (its registry raises on a repeat)."""
    for name, (sae_cls, cfg_cls) in INFERENCE_VARIANTS.items():
        if name in SAE_CLASS_REGISTRY:
            if SAE_CLASS_REGISTRY[name][0] is not sae_cls:
                log.debug("sae-lens already has a class for %r; keeping it", name)
            continue
        register_sae_class(name, sae_cls, cfg_cls)
