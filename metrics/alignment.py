"""Encoder–decoder alignment (seed 002): α_i = ⟨W_enc[:,i], d_i⟩ per variant, aggregates, bimodality.

α_i is the rise of latent i's pre-activation per unit of feature i written by the decoder (x_c = c·d_i), so
α_i = 1 means the latent reads back its own coefficient. The per-variant formula comes from the SAE layer
(`evalkit.sae.score.alignment_slopes`, dispatched by class; each evalkit variant registers its own).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy import stats
from sklearn.mixture import GaussianMixture

from evalkit.core.records import EvalContext, MetricValue
from evalkit.sae.score import alignment_slopes
from metrics.base import weights_metric

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 0.1
"""`alignment_frac_unit` counts latents with |α − 1| ≤ this."""


def _weights(sae: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in]) as float64 on CPU, detached."""
    return sae.W_enc.detach().double().cpu(), sae.W_dec.detach().double().cpu()


def alignment_cosine_values(sae: torch.nn.Module) -> torch.Tensor:
    """cos(W_enc[:,i], d_i) per latent; 0 where either vector is zero."""
    W_enc_DF, W_dec_FD = _weights(sae)
    dots_F = (W_enc_DF.T * W_dec_FD).sum(dim=1)
    norms_F = W_enc_DF.norm(dim=0) * W_dec_FD.norm(dim=1)
    return torch.where(norms_F > 0, dots_F / norms_F.clamp_min(1e-300), torch.zeros_like(dots_F))


def alignment_scores(sae: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
    """α per latent [d_sae] (float64) by the SAE's own rule, at the evaluation data's median norm."""
    return alignment_slopes(sae, ctx.median_norm)


def bimodality_coefficient(values: np.ndarray) -> float:
    """Sarle's coefficient (skew² + 1)/(excess kurtosis + 3(n−1)²/((n−2)(n−3))), bias-corrected moments."""
    n = values.size
    if n < 4 or float(np.std(values)) == 0.0:
        return math.nan
    skew = float(stats.skew(values, bias=False))
    kurt = float(stats.kurtosis(values, fisher=True, bias=False))
    return (skew**2 + 1.0) / (kurt + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def gmm_separation(values: np.ndarray, seed: int) -> float:
    """|μ1 − μ2|/√(σ1σ2) of a 2-component 1-D Gaussian mixture when its BIC beats one component, else 0."""
    if values.size < 4 or float(np.std(values)) == 0.0:
        return 0.0
    data_N1 = values.reshape(-1, 1)
    one = GaussianMixture(1, random_state=seed).fit(data_N1)
    two = GaussianMixture(2, random_state=seed, n_init=3).fit(data_N1)
    if two.bic(data_N1) >= one.bic(data_N1):
        return 0.0
    mu_2 = two.means_.reshape(-1)
    sigma_2 = np.sqrt(two.covariances_.reshape(-1))
    return float(abs(mu_2[0] - mu_2[1]) / math.sqrt(sigma_2[0] * sigma_2[1]))


@weights_metric(
    "alignment",
    group="alignment",
    produces=(
        "alignment_mean",
        "alignment_median",
        "alignment_frac_unit",
        "alignment_bimodality_coefficient",
        "alignment_gmm_separation",
    ),
    per_latent=("alignment_score", "alignment_cosine"),
    requires=("norm_stats",),  # the cosine variant's slope is taken at the median token norm
    optional=("alignment_bimodality_coefficient",),
)
def alignment_metric(sae: torch.nn.Module, ctx: EvalContext) -> list[MetricValue]:
    alpha_F = alignment_scores(sae, ctx)
    cos_F = alignment_cosine_values(sae)
    alpha = alpha_F.numpy()
    out = [
        MetricValue("alignment_mean", float(alpha.mean())),
        MetricValue("alignment_median", float(np.median(alpha))),
        MetricValue("alignment_frac_unit", float(np.mean(np.abs(alpha - 1.0) <= UNIT_TOLERANCE))),
        MetricValue("alignment_gmm_separation", gmm_separation(alpha, ctx.seed)),
    ]
    bc = bimodality_coefficient(alpha)
    if math.isfinite(bc):  # constant α (e.g. aligned training) has no defined skew or kurtosis
        out.append(MetricValue("alignment_bimodality_coefficient", bc))
    out += [MetricValue("alignment_score", float(v), latent=i) for i, v in enumerate(alpha.tolist())]
    out += [MetricValue("alignment_cosine", float(v), latent=i) for i, v in enumerate(cos_F.tolist())]
    return out
