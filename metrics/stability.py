"""Seed stability (seed 002; Paulo & Belrose 2025): how many features two SAEs differing in seed share.

For each pair (A, B) of a seed group: a one-to-one decoder-cosine matching (metrics/matching.py), then
- seed_stability_matched_cos: mean matched decoder cosine;
- seed_stability_shared_frac: share of matched pairs with decoder cosine > 0.7 and encoder cosine > 0.7;
- seed_stability_mmcs: mean max cosine to the other dictionary, averaged over both directions.
Each SAE gets the mean over its pairs; seed_match_cos (per latent) is its best matched cosine over its pairs.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue
from metrics.base import group_metric
from metrics.matching import match_dictionaries

log = logging.getLogger(__name__)

SHARED_COS = 0.7


ENCODER_COS_BLOCK = 8192
"""Matched pairs per block in `matched_encoder_cos` (two blocks of d_in × ENCODER_COS_BLOCK float64 columns)."""


def matched_encoder_cos(
    sae_A: torch.nn.Module, sae_B: torch.nn.Module, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """cos(W_enc^A[:, r], W_enc^B[:, c]) for each matched pair, in blocks of pairs: never a float64 copy of a
    whole encoder (65,536 latents × d_in 2,304 would be 1.2 GB each)."""
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), ENCODER_COS_BLOCK):
        r = torch.as_tensor(rows[start : start + ENCODER_COS_BLOCK])
        c = torch.as_tensor(cols[start : start + ENCODER_COS_BLOCK])
        enc_A = sae_A.W_enc.detach()[:, r.to(sae_A.W_enc.device)].to("cpu", torch.float64)
        enc_B = sae_B.W_enc.detach()[:, c.to(sae_B.W_enc.device)].to("cpu", torch.float64)
        norms = (enc_A.norm(dim=0) * enc_B.norm(dim=0)).clamp_min(1e-300)
        out[start : start + len(r)] = ((enc_A * enc_B).sum(dim=0) / norms).numpy()
    return out


def pair_stats(sae_A: torch.nn.Module, sae_B: torch.nn.Module) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """SAE-level values of one pair and each side's matched cosine per latent (NaN where unmatched)."""
    if sae_A.W_dec.shape[1] != sae_B.W_dec.shape[1]:
        raise EvalkitInputError(
            "--seed-group",
            f"SAEs of one seed group have different d_in ({sae_A.W_dec.shape[1]} vs {sae_B.W_dec.shape[1]})",
        )
    m = match_dictionaries(sae_A.W_dec, sae_B.W_dec)
    enc_cos = matched_encoder_cos(sae_A, sae_B, m.rows, m.cols)
    values = {
        "seed_stability_matched_cos": float(m.cos.mean()),
        "seed_stability_shared_frac": float(np.mean((m.cos > SHARED_COS) & (enc_cos > SHARED_COS))),
        "seed_stability_mmcs": float((m.best_A.mean() + m.best_B.mean()) / 2),
    }
    per_A = np.full(sae_A.W_dec.shape[0], np.nan)
    per_B = np.full(sae_B.W_dec.shape[0], np.nan)
    per_A[m.rows], per_B[m.cols] = m.cos, m.cos
    return values, per_A, per_B


@group_metric(
    "stability",
    group="stability",
    produces=("seed_stability_matched_cos", "seed_stability_shared_frac", "seed_stability_mmcs"),
    per_latent=("seed_match_cos",),
)
def seed_stability(saes: dict[str, torch.nn.Module], ctx: EvalContext) -> dict[str, list[MetricValue]]:
    ids = list(saes)
    sums: dict[str, dict[str, float]] = {i: {} for i in ids}
    n_pairs: dict[str, int] = dict.fromkeys(ids, 0)
    best: dict[str, np.ndarray] = {i: np.full(saes[i].W_dec.shape[0], -np.inf) for i in ids}
    for a, b in itertools.combinations(ids, 2):
        log.info("seed stability: matching %s with %s", a, b)
        values, per_a, per_b = pair_stats(saes[a], saes[b])
        for sae_id, per in ((a, per_a), (b, per_b)):
            n_pairs[sae_id] += 1
            for name, v in values.items():
                sums[sae_id][name] = sums[sae_id].get(name, 0.0) + v
            best[sae_id] = np.fmax(best[sae_id], per)
    out: dict[str, list[MetricValue]] = {}
    for sae_id in ids:
        if n_pairs[sae_id] == 0:
            out[sae_id] = []  # a group of one has no partner to compare with
            continue
        rows = [MetricValue(name, total / n_pairs[sae_id]) for name, total in sums[sae_id].items()]
        rows += [
            MetricValue("seed_match_cos", float(v), latent=i)
            for i, v in enumerate(best[sae_id].tolist())
            if np.isfinite(v)
        ]
        out[sae_id] = rows
    return out
