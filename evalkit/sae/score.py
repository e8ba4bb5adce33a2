"""The pre-activation score s(x) of every variant, and folding decoder norms into the encoder.

`score(sae, x_TD)` is the value the sparsifying nonlinearity (ReLU / top-k / threshold / gate) is applied to:
- standard, jumprelu (and batchtopk/matryoshka, which sae-lens saves as jumprelu): ⟨x_c, W_enc[:,i]⟩ +
  b_enc,i;
- topk: the same, times ‖d_i‖ when the config sets `rescale_acts_by_decoder_norm` (sae-lens ranks that
  product);
- gated: the MAGNITUDE path ⟨x_c, W_enc[:,i]⟩·exp(r_mag,i) + b_mag,i (METRICS.md alignment uses it; the gate
  path only decides on/off);
- cosine: exp(b)·‖x_c‖^a·cos(x_c, W_enc[:,i]) + b_enc,i;
- topafa: ⟨x_c, W_enc[:,i]⟩ (no bias);
- any sae-lens TrainingSAE: the hidden_pre its `encode_with_hidden_pre` returns.
Dispatch is by class (functools.singledispatch); an unknown class raises rather than guessing.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from sae_lens.saes.gated_sae import GatedSAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.sae import SAE, TrainingSAE
from sae_lens.saes.standard_sae import StandardSAE
from sae_lens.saes.topk_sae import TopKSAE

from evalkit.sae.variants import CosineSAE, TopAFASAE

UNIT_NORM_TOL = 1e-5


class NotFoldableError(ValueError):
    """Folding decoder norms into this SAE's encoder would change what it computes."""


@functools.singledispatch
def score(sae: SAE[Any], x_TD: torch.Tensor) -> torch.Tensor:
    """Pre-activation scores [..., d_sae] for activations [..., d_in]."""
    raise NotImplementedError(f"evalkit has no score() for SAE class {type(sae).__name__}")


def _linear_score(sae: SAE[Any], x_TD: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x_TD) @ sae.W_enc + sae.b_enc


score.register(StandardSAE, _linear_score)
score.register(JumpReLUSAE, _linear_score)


@score.register
def _topk_score(sae: TopKSAE, x_TD: torch.Tensor) -> torch.Tensor:
    hidden_pre = _linear_score(sae, x_TD)
    if sae.cfg.rescale_acts_by_decoder_norm:
        hidden_pre = hidden_pre * sae.W_dec.norm(dim=-1)
    return hidden_pre


@score.register
def _gated_score(sae: GatedSAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x_TD) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag


@score.register
def _cosine_score(sae: CosineSAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.hidden_pre(x_TD)


@score.register
def _topafa_score(sae: TopAFASAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.process_sae_in(x_TD) @ sae.W_enc


@score.register
def _training_score(sae: TrainingSAE, x_TD: torch.Tensor) -> torch.Tensor:
    return sae.encode_with_hidden_pre(x_TD)[1]


# --------------------------------------------------------------------------------------------------- folding


def has_unit_decoder_rows(sae: SAE[Any], tol: float = UNIT_NORM_TOL) -> bool:
    norms = sae.W_dec.detach().norm(dim=-1)
    return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol, rtol=0))


def fold_decoder_norms(sae: SAE[Any]) -> SAE[Any]:
    """A copy with unit decoder rows and norms folded into the encoder; the function is unchanged.

    An SAE whose rows are already unit-norm is returned as an (unchanged) copy whatever its class. Otherwise
    the fold is exact only for linear-score variants whose sparsifier commutes with per-latent positive
    scaling: standard, jumprelu/batchtopk/matryoshka (θ_i scales too), gated (both biases scale), topafa (its
    ranking uses a_i‖d_i‖), and topk when it ranks ‖d_i‖-scaled scores. Others raise NotFoldableError.
    """
    folded = copy.deepcopy(sae)
    if has_unit_decoder_rows(sae):
        return folded
    _fold_in_place(folded)
    return folded


@functools.singledispatch
def _fold_in_place(sae: SAE[Any]) -> None:
    raise NotFoldableError(
        f"folding decoder norms into a {type(sae).__name__} would change its output (its sparsifier compares "
        "latents or applies a shared threshold/scale); use the SAE as stored"
    )


@_fold_in_place.register(StandardSAE)
@_fold_in_place.register(JumpReLUSAE)
@_fold_in_place.register(GatedSAE)
def _fold_sae_lens(sae: SAE[Any]) -> None:
    sae.fold_W_dec_norm()


@_fold_in_place.register
def _fold_topk(sae: TopKSAE) -> None:
    if not sae.cfg.rescale_acts_by_decoder_norm:
        raise NotFoldableError(
            "folding decoder norms into a topk SAE that ranks unscaled scores would change which latents "
            "win; "
            "use the SAE as stored"
        )
    sae.fold_W_dec_norm()


@_fold_in_place.register
def _fold_topafa(sae: TopAFASAE) -> None:
    with torch.no_grad():
        norms_F = sae.W_dec.norm(dim=-1).clamp_min(1e-12)
        sae.W_dec.div_(norms_F.unsqueeze(1))
        sae.W_enc.mul_(norms_F.unsqueeze(0))
