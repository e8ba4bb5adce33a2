"""Data-driven initialisation of zoo SAEs, aware of the massive-activation tokens.

Why: on the embedded world 8% of training tokens (the sentence delimiters) are one fixed vector u at ~35x the
median norm. A latent whose encoder overlaps u by only cos 0.05 scores ~17x more on those tokens than on its
own ordinary tokens, so at initialisation every latent fires on them. Per-token top-k survives that; batch
top-k does not: the massive tokens took ~110 latents each, the batch threshold rose past what ordinary tokens
reach, and batch-top-k k=16 ended with 75% dead latents whatever the step count, learning rate or decoder norm.
Starting the encoders orthogonal to the outlier directions, with one latent per direction ready to reconstruct
them, removes that transient (batch-top-k k=16: 75% -> 2% dead, FVU 0.0046 -> 0.0005). Training is free to
move every weight afterwards; nothing is frozen or constrained.
"""

from __future__ import annotations

import torch

from metrics.norm import OUTLIER_MULTIPLE  # one definition of an outlier token: > 10x the median norm

ORDINARY_MULTIPLE = 5.0
"""Decoder directions start at tokens below this multiple of the median norm."""
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
def init_from_data(
    sae: torch.nn.Module, scaled_ND: torch.Tensor, seed: int, directions: bool, outlier_aware: bool
) -> None:
    """Initialise `sae` (a sae-lens training SAE on activations `scaled_ND`) from the data.

    b_dec starts at the coordinate-wise median (robust to the outliers). With `directions`, decoder directions
    start at random ordinary tokens minus b_dec (decoder norms kept, encoder tied to the decoder as sae-lens
    initialises it). With `outlier_aware` as well, those directions are projected off the m outlier directions
    and the first m latents take the outlier directions themselves (unit encoder column and unit decoder row,
    so one latent alone reconstructs its outlier tokens).
    """
    sae.b_dec.copy_(scaled_ND.median(dim=0).values)
    if not directions:
        return
    centred_ND = scaled_ND - sae.b_dec
    no_outliers_0D = centred_ND.new_zeros((0, centred_ND.shape[1]))
    outlier_MD = outlier_directions(centred_ND) if outlier_aware else no_outliers_0D
    m = len(outlier_MD)
    gen = torch.Generator().manual_seed(seed)
    norms_N = scaled_ND.norm(dim=1)
    ordinary_OD = centred_ND[norms_N < ORDINARY_MULTIPLE * norms_N.median()]
    n_latents = sae.W_dec.shape[0]
    picks_FD = ordinary_OD[torch.randint(len(ordinary_OD), (n_latents,), generator=gen)]
    picks_FD = picks_FD - (picks_FD @ outlier_MD.T) @ outlier_MD
    row_norms_F1 = sae.W_dec.norm(dim=1, keepdim=True)
    W_dec_FD = picks_FD / picks_FD.norm(dim=1, keepdim=True).clamp_min(1e-6) * row_norms_F1
    W_dec_FD[:m] = outlier_MD
    sae.W_dec.copy_(W_dec_FD)
    sae.W_enc.copy_(W_dec_FD.T)
