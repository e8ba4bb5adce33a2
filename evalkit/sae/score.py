"""Per-variant behaviour, dispatched by SAE class: the pre-activation score s(x), folding decoder norms into the
encoder, the encoder–decoder alignment slope α_i and the norm exponent a_i (metrics.alignment, metrics.norm).

Rules for sae-lens' own classes live here; evalkit's variants register theirs in their own module
(evalkit.sae.variants.*), next to the class, so an instance of a variant always brings its rules.

`score(sae, x_TD)` is the value the sparsifying nonlinearity (ReLU / top-k / threshold / gate) is applied to:
- standard, jumprelu (and batchtopk/matryoshka, which sae-lens saves as jumprelu): ⟨x_c, W_enc[:,i]⟩ +
  b_enc,i;
- topk: the same, times ‖d_i‖ when the config sets `rescale_acts_by_decoder_norm` (sae-lens ranks that
  product);
- gated: the MAGNITUDE path ⟨x_c, W_enc[:,i]⟩·exp(r_mag,i) + b_mag,i (docs/metrics.md alignment uses it; the gate
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
from sae_lens.saes.gated_sae import GatedSAE, GatedTrainingSAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUTrainingSAE
from sae_lens.saes.sae import SAE, TrainingSAE
from sae_lens.saes.standard_sae import StandardSAE, StandardTrainingSAE
from sae_lens.saes.topk_sae import TopKSAE, TopKTrainingSAE

from evalkit.core.errors import EvalkitInputError

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
    fold_in_place(folded)
    return folded


@functools.singledispatch
def fold_in_place(sae: SAE[Any]) -> None:
    raise NotFoldableError(
        f"folding decoder norms into a {type(sae).__name__} would change its output (its sparsifier compares "
        "latents or applies a shared threshold/scale); use the SAE as stored"
    )


@fold_in_place.register(StandardSAE)
@fold_in_place.register(JumpReLUSAE)
@fold_in_place.register(GatedSAE)
def _fold_sae_lens(sae: SAE[Any]) -> None:
    sae.fold_W_dec_norm()


@fold_in_place.register
def _fold_topk(sae: TopKSAE) -> None:
    if not sae.cfg.rescale_acts_by_decoder_norm:
        raise NotFoldableError(
            "folding decoder norms into a topk SAE that ranks unscaled scores would change which latents "
            "win; "
            "use the SAE as stored"
        )
    sae.fold_W_dec_norm()


# ----------------------------------------------------------------------------------------- firing on pairs

PAIR_CHUNK = 4096
"""(token, latent) pairs per chunk in `fires_on_pairs`: the gathered encoder rows are PAIR_CHUNK × d_in floats (small
enough to stay in cache)."""


@functools.singledispatch
def fires_on_pairs(
    sae: SAE[Any], x_TD: torch.Tensor, token_N: torch.Tensor, latent_N: torch.Tensor
) -> torch.Tensor | None:
    """Whether latent `latent_N[n]` fires on input `x_TD[token_N[n]]` [N] (bool), from those pairs' scores alone.

    Exact for variants whose firing rule looks at one latent's own pre-activation (ReLU, JumpReLU, gated): the
    cost is O(N·d_in) instead of a full encode's O(T·d_sae·d_in). None for every other variant (top-k and the
    rules that compare latents), whose callers then encode.
    """
    return None


def _pair_scores(
    sae_in_TD: torch.Tensor, W_DF: torch.Tensor, b_F: torch.Tensor, token_N: torch.Tensor, latent_N: torch.Tensor
) -> torch.Tensor:
    """⟨sae_in[t], W[:, i]⟩ + b[i] for each pair (t, i), in chunks so memory stays PAIR_CHUNK × d_in."""
    out = torch.empty(token_N.shape[0], dtype=sae_in_TD.dtype, device=sae_in_TD.device)
    # Latents as contiguous rows: gathering rows is several times faster than gathering strided columns.
    W_FD = W_DF.T.contiguous()
    for start in range(0, token_N.shape[0], PAIR_CHUNK):
        tok, lat = token_N[start : start + PAIR_CHUNK], latent_N[start : start + PAIR_CHUNK]
        out[start : start + PAIR_CHUNK] = (sae_in_TD[tok] * W_FD[lat]).sum(-1) + b_F[lat]
    return out


def _encode_is(sae: SAE[Any], cls: type) -> bool:
    """The rule below mirrors `cls.encode`; a subclass that overrides encode gets no shortcut."""
    return type(sae).encode is cls.encode  # type: ignore[attr-defined]


@fires_on_pairs.register
def _standard_pairs(sae: StandardSAE, x_TD, token_N, latent_N):  # type: ignore[no-untyped-def]
    if not _encode_is(sae, StandardSAE):
        return None
    pre_N = _pair_scores(sae.process_sae_in(x_TD), sae.W_enc, sae.b_enc, token_N, latent_N)
    return sae.activation_fn(pre_N) != 0


@fires_on_pairs.register
def _jumprelu_pairs(sae: JumpReLUSAE, x_TD, token_N, latent_N):  # type: ignore[no-untyped-def]
    if not _encode_is(sae, JumpReLUSAE):
        return None
    pre_N = _pair_scores(sae.process_sae_in(x_TD), sae.W_enc, sae.b_enc, token_N, latent_N)
    return (sae.activation_fn(pre_N) != 0) & (pre_N > sae.threshold[latent_N])


@fires_on_pairs.register
def _gated_pairs(sae: GatedSAE, x_TD, token_N, latent_N):  # type: ignore[no-untyped-def]
    if not _encode_is(sae, GatedSAE):
        return None
    sae_in_TD = sae.process_sae_in(x_TD)
    gate_N = _pair_scores(sae_in_TD, sae.W_enc, sae.b_gate, token_N, latent_N)
    mag_N = _pair_scores(sae_in_TD, sae.W_enc * sae.r_mag.exp(), sae.b_mag, token_N, latent_N)
    return (gate_N > 0) & (sae.activation_fn(mag_N) != 0)


@functools.singledispatch
def fires_after_rescale(
    sae: SAE[Any], scale_T: torch.Tensor, token_N: torch.Tensor, latent_N: torch.Tensor, value_N: torch.Tensor
) -> torch.Tensor | None:
    """Whether the firing pair (t, i) (code `value_N[n]` ≠ 0) still fires once token t is rescaled by `scale_T[t]`
    [N] (bool), from the pairs' own codes: O(N), not even a dot product per pair.

    Exact up to float rounding for an SAE whose firing code IS its pre-activation (a ReLU, or JumpReLU above its
    threshold) and whose input map is affine in x (no run-time input normalisation, its class's own encode):
    sae_in(s·x) = s·sae_in(x) + (s − 1)·b with b the bias subtracted from the input, so
    pre_i(s·x) = s·(f_i − b_enc,i) + (s − 1)·⟨b, W_enc[:,i]⟩ + b_enc,i. None for every other SAE, whose callers
    score the pairs (`fires_on_pairs`) or encode."""
    return None


def _rescaled_pre(
    sae: SAE[Any], scale_T: torch.Tensor, token_N: torch.Tensor, latent_N: torch.Tensor, value_N: torch.Tensor
) -> torch.Tensor | None:
    """pre_i(s_t·x_t) of each firing pair [N] (float64), or None when the SAE's input map is not affine."""
    if sae.cfg.normalize_activations not in (None, "none") or not isinstance(sae.activation_fn, torch.nn.ReLU):
        return None
    device = value_N.device
    W_DF = sae.W_enc.detach().to(device, torch.float64)
    b_D = (sae.b_dec * sae.cfg.apply_b_dec_to_input).detach().to(device, torch.float64)
    bW_N = (b_D @ W_DF)[latent_N]
    b_enc_N = sae.b_enc.detach().to(device, torch.float64)[latent_N]
    s_N = scale_T.to(device, torch.float64)[token_N]
    return s_N * (value_N.double() - b_enc_N) + (s_N - 1) * bW_N + b_enc_N


@fires_after_rescale.register
def _standard_rescaled(sae: StandardSAE, scale_T, token_N, latent_N, value_N):  # type: ignore[no-untyped-def]
    pre_N = _rescaled_pre(sae, scale_T, token_N, latent_N, value_N) if _encode_is(sae, StandardSAE) else None
    return None if pre_N is None else pre_N > 0


@fires_after_rescale.register
def _jumprelu_rescaled(sae: JumpReLUSAE, scale_T, token_N, latent_N, value_N):  # type: ignore[no-untyped-def]
    pre_N = _rescaled_pre(sae, scale_T, token_N, latent_N, value_N) if _encode_is(sae, JumpReLUSAE) else None
    if pre_N is None:
        return None
    return (pre_N > 0) & (pre_N > sae.threshold.detach().to(pre_N.device, torch.float64)[latent_N])


# ------------------------------------------------------------------------------------ alignment and norm exponent


def float64_weights(sae: SAE[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in]) as float64 on CPU, detached."""
    return sae.W_enc.detach().double().cpu(), sae.W_dec.detach().double().cpu()


@functools.singledispatch
def alignment_slopes(sae: SAE[Any], median_norm: float) -> torch.Tensor:
    """α_i [d_sae] (float64): the rise of latent i's score per unit of feature i written by the decoder (x_c = c·d_i),
    at input norm `median_norm` where the score depends on it (docs/metrics.md, alignment)."""
    raise EvalkitInputError(
        "alignment", f"evalkit has no alignment rule for SAE class {type(sae).__name__} ({sae.cfg.architecture()})"
    )


def linear_alpha(sae: SAE[Any], median_norm: float) -> torch.Tensor:
    """α_i = ⟨W_enc[:,i], d_i⟩ for linear-score variants (decoder rows as stored)."""
    W_enc_DF, W_dec_FD = float64_weights(sae)
    return (W_enc_DF.T * W_dec_FD).sum(dim=1)


# Linear scores ⟨x_c, W_enc[:,i]⟩ (+ b_enc,i): standard, topk (abstopk), jumprelu (batch-top-k and matryoshka save as
# jumprelu), and sae-lens' training classes of those (batch-top-k and matryoshka training subclass top-k training).
for _cls in (StandardSAE, TopKSAE, JumpReLUSAE, StandardTrainingSAE, TopKTrainingSAE, JumpReLUTrainingSAE):
    alignment_slopes.register(_cls, linear_alpha)


@alignment_slopes.register(GatedSAE)
@alignment_slopes.register(GatedTrainingSAE)
def gated_alpha(sae: SAE[Any], median_norm: float) -> torch.Tensor:
    """Gated: the magnitude path's slope, exp(r_mag,i)·⟨W_enc[:,i], d_i⟩."""
    return torch.exp(sae.r_mag.detach().double().cpu()) * linear_alpha(sae, median_norm)


@functools.singledispatch
def norm_exponents(sae: SAE[Any]) -> torch.Tensor:
    """The per-latent norm exponent a_i [d_sae] (float64): how the score scales with ‖x‖ (1 for inner products)."""
    raise EvalkitInputError(
        "norm_dependence",
        f"evalkit has no norm-exponent rule for SAE class {type(sae).__name__} ({sae.cfg.architecture()})",
    )


def unit_exponents(sae: SAE[Any]) -> torch.Tensor:
    return torch.ones(int(sae.W_dec.shape[0]), dtype=torch.float64)


for _cls in (StandardSAE, TopKSAE, JumpReLUSAE, GatedSAE, StandardTrainingSAE, TopKTrainingSAE, JumpReLUTrainingSAE):
    norm_exponents.register(_cls, unit_exponents)
norm_exponents.register(GatedTrainingSAE, unit_exponents)
