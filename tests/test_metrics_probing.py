"""Sparse probing: a latent equal to a label probes perfectly; uninformative latents probe at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from metrics.base import EvalContext, MetricValue, SaeBatch
from metrics.probing import MAX_PER_CLASS, Reservoir, SparseProbing

N_TOKENS, D_IN, D_SAE = 6000, 16, 32
CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=N_TOKENS, label_names=("x", "y"),
                  seed=3)


def run(f_TF: torch.Tensor, x_TD: torch.Tensor,
        labels_TL: torch.Tensor) -> tuple[dict[str, float], SparseProbing]:
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    acc = SparseProbing(sae, CTX)
    for f, x, lab in zip(f_TF.chunk(5), x_TD.chunk(5), labels_TL.chunk(5), strict=True):
        acc.update(SaeBatch(sae=sae, x_TD=x, x_hat_TD=x, f_TF=f, positions_T=torch.zeros(len(f)),
                            labels_TL=lab))
    values: list[MetricValue] = acc.compute()
    return {v.metric: v.value for v in values}, acc


def test_latent_equal_to_label_probes_perfectly() -> None:
    gen = torch.Generator().manual_seed(0)
    labels_TL = torch.rand(N_TOKENS, 2, generator=gen) < torch.tensor([0.3, 0.5])
    f_TF = torch.rand(N_TOKENS, D_SAE, generator=gen) * (torch.rand(N_TOKENS, D_SAE, generator=gen) < 0.2)
    f_TF[:, 7] = 3.0 * labels_TL[:, 0]  # latent 7 is label x
    f_TF[:, 20] = 1.5 * labels_TL[:, 1]  # latent 20 is label y
    x_TD = torch.randn(N_TOKENS, D_IN, generator=gen)
    x_TD[:, 0] += 4.0 * labels_TL[:, 0]
    x_TD[:, 1] += 4.0 * labels_TL[:, 1]
    agg, acc = run(f_TF, x_TD, labels_TL)
    assert agg["probe_accuracy_k1"] == 1.0
    assert agg["probe_accuracy_k5"] == 1.0
    assert agg["probe_accuracy_dense"] > 0.95  # a 4σ shift along one axis: ≈ 0.977 by the Gaussian tail
    assert agg["probe_labels_probed"] == 2
    assert len(acc.store.codes) <= 2 * MAX_PER_CLASS * 2  # memory bounded by the reservoirs


def test_uninformative_latents_probe_at_chance() -> None:
    gen = torch.Generator().manual_seed(1)
    labels_TL = torch.rand(N_TOKENS, 2, generator=gen) < 0.4
    f_TF = torch.rand(N_TOKENS, D_SAE, generator=gen) * (torch.rand(N_TOKENS, D_SAE, generator=gen) < 0.3)
    agg, _ = run(f_TF, torch.randn(N_TOKENS, D_IN, generator=gen), labels_TL)
    # Test sets hold ~960 tokens per label, so chance accuracy has σ ≈ 0.016 per label.
    for name in ("probe_accuracy_k1", "probe_accuracy_k5", "probe_accuracy_dense"):
        assert agg[name] == pytest.approx(0.5, abs=0.06), name


def test_rare_label_is_skipped() -> None:
    labels_TL = torch.zeros(N_TOKENS, 2, dtype=torch.bool)
    labels_TL[:5, 0] = True  # 5 positives: too few to probe
    labels_TL[::2, 1] = True
    f_TF = torch.zeros(N_TOKENS, D_SAE)
    f_TF[:, 3] = labels_TL[:, 1].float()
    agg, _ = run(f_TF, torch.randn(N_TOKENS, D_IN), labels_TL)
    assert agg["probe_labels_probed"] == 1 and agg["probe_accuracy_k1"] == 1.0


def test_reservoir_is_uniform() -> None:
    """Algorithm R keeps each of N offered keys with probability cap/N, whatever the batch split."""
    rng = np.random.default_rng(0)
    first_half = []
    for _ in range(300):
        res = Reservoir(50)
        for chunk in np.array_split(np.arange(1000), 7):
            res.offer(chunk, rng)
        sample = res.sample()
        assert sample.size == 50 and np.unique(sample).size == 50
        first_half.append(int((sample < 500).sum()))
    # Hypergeometric: mean 25, σ ≈ 3.4 per trial, so the mean over 300 trials has σ ≈ 0.2.
    assert np.mean(first_half) == pytest.approx(25.0, abs=1.0)
