"""Known-answer check: is the block jackknife valid for counts of latents past a threshold?

i.i.d. tokens; 512 latents fire independently with log-uniform rates from 2e-5 to 0.3, 16 of them right at the 0.1
density threshold of `dense_features`; 2,048 sequences of 8 tokens in 4 batches, K = 32 blocks of whole sequences.
Over `--repeats` seeded repeats, the true standard deviation of `dead_features` and `dense_features` (their spread
across repeats) against the mean jackknife standard error the wrapper would give them. Measured (100 repeats):
dead_features 4.28 vs 5.57 (1.30x), dense_features 2.10 vs 4.44 (2.12x): the jackknife overstates the spread of
these non-smooth statistics, by a factor that depends on the firing rates, so evalkit reports no stderr for them
(MetricSpec.no_stderr, docs/uncertainty.md).

    .venv/bin/python benchmarks/bench_count_stderr.py [--repeats 100]
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import torch

from evalkit.core.records import EvalContext, SaeBatch
from metrics.jackknife import BLOCK_KEY, BlockJackknife, block_index
from metrics.sparsity import FeatureDensity

log = logging.getLogger("bench_count_stderr")
CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=1.5, n_tokens=0)
N_LATENTS, N_SEQ, SEQ_LEN, K, N_BATCHES = 512, 2048, 8, 32, 4
COUNTS = ("dead_features", "dense_features")
RUN_LEN = 16
"""Sequences per run dealt to the blocks (each block gets one run of every batch)."""


def firing_rates() -> torch.Tensor:
    rng = np.random.default_rng(0)
    p = np.exp(rng.uniform(np.log(2e-5), np.log(0.3), size=N_LATENTS))
    p[:16] = 0.1 + rng.normal(0, 0.002, 16)  # near the dense threshold
    return torch.from_numpy(p).float()


def one_repeat(rep: int, p_F: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(value, jackknife stderr) of each count on one seeded stream."""
    gen = torch.Generator().manual_seed(rep)
    n = N_SEQ * SEQ_LEN
    f_TF = (torch.rand(n, N_LATENTS, generator=gen) < p_F).float()
    seq_T = torch.arange(N_SEQ).repeat_interleave(SEQ_LEN)
    acc = BlockJackknife(FeatureDensity, None, CTX)  # every SAE-level value, as before no_stderr existed
    for rows in torch.arange(n).chunk(N_BATCHES):
        extras = {BLOCK_KEY: block_index(seq_T[rows], RUN_LEN, K)}
        zeros = torch.zeros(len(rows), 1)
        acc.update(SaeBatch(None, zeros, zeros, f_TF[rows], torch.zeros(len(rows), dtype=torch.long), extras=extras))
    out = {}
    for v in acc.compute():
        if v.latent is None and v.metric in COUNTS:
            out[v.metric] = (v.value, math.nan if v.stderr is None else v.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p_F = firing_rates()
    results = [one_repeat(rep, p_F) for rep in range(args.repeats)]
    for name in COUNTS:
        values = np.array([r[name][0] for r in results])
        ses = np.array([r[name][1] for r in results])
        true_sd = float(values.std(ddof=1))
        log.info(
            "%s: mean %.2f, true sd %.3f, mean jackknife se %.3f (%.2fx)",
            name,
            values.mean(),
            true_sd,
            float(np.nanmean(ses)),
            float(np.nanmean(ses)) / true_sd,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
