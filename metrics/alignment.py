"""Encoder–decoder alignment (seed 002): α_i = ⟨W_enc[:,i], d_i⟩ per variant, aggregates, bimodality.

α_i is the rise of latent i's pre-activation per unit of feature i written by the decoder (x_c = c·d_i), so
α_i = 1 means the latent reads back its own coefficient. Per-variant formulas live in `ALIGNMENT_RULES`, keyed
by the sae-lens architecture name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats
from sklearn.mixture import GaussianMixture

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue
from evalkit.core.registry import Registry
from metrics.base import weights_metric

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 0.1
"""`alignment_frac_unit` counts latents with |α − 1| ≤ this."""

AlignmentRule = Callable[[torch.nn.Module, EvalContext], torch.Tensor]
ALIGNMENT_RULES: Registry[AlignmentRule] = Registry("architecture for alignment")


def architecture_of(sae: torch.nn.Module) -> str:
    """The sae-lens architecture name (`cfg.architecture()`), e.g. 'standard', 'gated', 'cosine'."""
    return str(sae.cfg.architecture())


def _weights(sae: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in]) as float64 on CPU, detached."""
    return sae.W_enc.detach().double().cpu(), sae.W_dec.detach().double().cpu()


def linear_alpha(sae: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
    """α_i = ⟨W_enc[:,i], d_i⟩ for linear-score variants (decoder rows as stored)."""
    W_enc_DF, W_dec_FD = _weights(sae)
    return (W_enc_DF.T * W_dec_FD).sum(dim=1)


def gated_alpha(sae: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
    """Gated: the magnitude path's slope, exp(r_mag,i)·⟨W_enc[:,i], d_i⟩."""
    return torch.exp(sae.r_mag.detach().double().cpu()) * linear_alpha(sae, ctx)


def cosine_params(sae: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine variant's exponent a and log-scale b, broadcast to per-latent vectors [d_sae] (float64)."""
    d_sae = int(sae.W_dec.shape[0])
    a_F = torch.as_tensor(sae.a).detach().double().cpu().reshape(-1).expand(d_sae)
    b_F = torch.as_tensor(sae.b).detach().double().cpu().reshape(-1).expand(d_sae)
    return a_F.clone(), b_F.clone()


def alignment_cosine_values(sae: torch.nn.Module) -> torch.Tensor:
    """cos(W_enc[:,i], d_i) per latent; 0 where either vector is zero."""
    W_enc_DF, W_dec_FD = _weights(sae)
    dots_F = (W_enc_DF.T * W_dec_FD).sum(dim=1)
    norms_F = W_enc_DF.norm(dim=0) * W_dec_FD.norm(dim=1)
    return torch.where(norms_F > 0, dots_F / norms_F.clamp_min(1e-300), torch.zeros_like(dots_F))


def cosine_alpha(sae: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
    """Cosine: score/c at input norm m for x_c = c·d_i.

    That is exp(b_i)·m^(a_i − 1)·‖d_i‖·cos(W_enc[:,i], d_i) (METRICS.md: the slope at the median norm).
    """
    a_F, b_F = cosine_params(sae)
    dec_norms_F = sae.W_dec.detach().double().cpu().norm(dim=1)
    m = float(ctx.median_norm)
    if m <= 0:
        raise EvalkitInputError("activations", "median token norm is 0; cosine alignment slope undefined")
    return torch.exp(b_F) * m ** (a_F - 1.0) * dec_norms_F * alignment_cosine_values(sae)


LINEAR_ARCHITECTURES = ("standard", "topk", "batchtopk", "matryoshka", "jumprelu", "topafa", "abstopk")
"""Variants whose score is ⟨x_c, W_enc[:,i]⟩ (+ b_enc,i): α is the plain dot product."""
for _arch in LINEAR_ARCHITECTURES:
    ALIGNMENT_RULES.add(_arch, linear_alpha)
ALIGNMENT_RULES.add("gated", gated_alpha)
ALIGNMENT_RULES.add("cosine", cosine_alpha)


def alignment_scores(sae: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
    """α per latent [d_sae] (float64) by the SAE's architecture rule."""
    rule = ALIGNMENT_RULES.get(architecture_of(sae), where="alignment")
    return rule(sae, ctx)


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
