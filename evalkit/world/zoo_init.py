"""Initialisation of zoo SAEs: sae-lens' own random init, a robust b_dec, and an outlier-aware option.

Decoder directions are sae-lens' (Kaiming-uniform rows at `decoder_init_norm`, W_enc = W_decᵀ): random directions in
d_in = 128 never start as duplicates. (Rows copied from random training tokens, the previous init, started 35% of a
standard SAE's latents in pairs with |cos| > 0.99, because the word-level world repeats tokens and their activations.)
b_dec starts at the coordinate-wise median of the training activations (robust to the heavy tail), as the reference
recipes start it at a (geometric) median.

The outlier-aware option (TopK family): the random directions are projected off the span of the outlier tokens (above
10x the median norm) and the first m latents take that span's directions. Why: on the first world 8% of training
tokens (the sentence delimiters) were one fixed vector u at ~35x the median norm. A latent whose encoder overlaps u by
only cos 0.05 scores ~17x more on those tokens than on its own ordinary tokens, so at initialisation every latent fired
on them; per-token top-k survives that, batch top-k does not: the massive tokens took ~110 latents each, the batch
threshold rose past what ordinary tokens reach, and batch-top-k k=16 ended with 75% dead latents. Starting the encoders
orthogonal to the outlier directions removed that transient (75% -> 2% dead). Training is free to move every weight
afterwards; nothing is frozen or constrained.
"""

from __future__ import annotations

import torch

from metrics.norm import OUTLIER_MULTIPLE  # one definition of an outlier token: > 10x the median norm

OUTLIER_ENERGY = 0.99
"""Outlier directions are the fewest top singular vectors holding this share of the outliers' energy."""
MAX_OUTLIER_DIRECTIONS = 4


def outlier_directions(centred_ND: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows [m, D] spanning the outlier tokens (m = 0 when there are none)."""
    norms_N = centred_ND.norm(dim=1)
    outliers_OD = centred_ND[norms_N > OUTLIER_MULTIPLE * norms_N.median()]
    if len(outliers_OD) == 0:
        return centred_ND.new_zeros((0, centred_ND.shape[1]))
    _, s_K, v_DK = torch.linalg.svd(outliers_OD.double(), full_matrices=False)
    energy_K = torch.cumsum(s_K.pow(2), 0) / s_K.pow(2).sum()
    m = min(int((energy_K < OUTLIER_ENERGY).sum()) + 1, MAX_OUTLIER_DIRECTIONS)
    directions_MD = v_DK[:m].to(centred_ND.dtype)
    # Orient each direction along the outliers' mean projection, so its latent fires on them (score > 0).
    signs_M = torch.sign(outliers_OD @ directions_MD.T).sum(0).sign()
    return directions_MD * torch.where(signs_M == 0, 1.0, signs_M).unsqueeze(1)


@torch.no_grad()
def init_from_data(sae: torch.nn.Module, scaled_ND: torch.Tensor, outlier_aware: bool) -> None:
    """b_dec at the coordinate-wise median of `scaled_ND`; with `outlier_aware`, sae-lens' random decoder directions
    are projected off the m outlier directions and the first m latents take those directions (unit encoder column
    and unit decoder row, so one latent alone reconstructs its outlier tokens); encoder tied to the decoder, as
    sae-lens initialises it."""
    sae.b_dec.copy_(scaled_ND.median(dim=0).values)
    if not outlier_aware:
        return
    outlier_MD = outlier_directions(scaled_ND - sae.b_dec)
    m = len(outlier_MD)
    W_dec_FD = sae.W_dec.detach().clone()
    row_norms_F1 = W_dec_FD.norm(dim=1, keepdim=True)
    W_dec_FD = W_dec_FD - (W_dec_FD @ outlier_MD.T) @ outlier_MD
    W_dec_FD = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12) * row_norms_F1
    W_dec_FD[:m] = outlier_MD
    sae.W_dec.copy_(W_dec_FD)
    sae.W_enc.copy_(W_dec_FD.T)
