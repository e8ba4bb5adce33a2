"""Sparse probing: a latent equal to a label probes perfectly; uninformative latents probe at chance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics import probing
from metrics.probing import K_VALUES, MAX_PER_CLASS, TEST_SHARE, Reservoir, SparseProbing

N_TOKENS, D_IN, D_SAE = 6000, 16, 32
CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=N_TOKENS, label_names=("x", "y"), seed=3)


def run(f_TF: torch.Tensor, x_TD: torch.Tensor, labels_TL: torch.Tensor) -> tuple[dict[str, float], SparseProbing]:
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    acc = SparseProbing(sae, CTX)
    for f, x, lab in zip(f_TF.chunk(5), x_TD.chunk(5), labels_TL.chunk(5), strict=True):
        acc.update(SaeBatch(sae=sae, x_TD=x, x_hat_TD=x, f_TF=f, positions_T=torch.zeros(len(f)), labels_TL=lab))
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
    assert acc.store.n_rows <= 2 * MAX_PER_CLASS * 2  # memory bounded by the reservoirs


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
    """Priority sampling keeps each of N offered keys with probability cap/N, whatever the batch split."""
    first_half = []
    for seed in range(300):
        res = Reservoir(50, seed)
        for chunk in np.array_split(np.arange(1000), 7):
            res.offer(chunk)
        sample = res.sample()
        assert sample.size == 50 and np.unique(sample).size == 50
        first_half.append(int((sample < 500).sum()))
    # Hypergeometric: mean 25, σ ≈ 3.4 per trial, so the mean over 300 trials has σ ≈ 0.2.
    assert np.mean(first_half) == pytest.approx(25.0, abs=1.0)


def reference_probe(f_TF: torch.Tensor, x_TD: torch.Tensor, labels_TL: torch.Tensor) -> dict[str, float]:
    """The definition written out plainly: one dict per token, a scikit-learn pipeline per fit, no memo.

    Same seeded reservoirs (priorities of the same token keys) so the sampled tokens agree.
    """
    res = [(Reservoir(MAX_PER_CLASS, CTX.seed), Reservoir(MAX_PER_CLASS, CTX.seed)) for _ in range(labels_TL.shape[1])]
    codes_by_key: dict[int, np.ndarray] = {}
    acts_by_key: dict[int, np.ndarray] = {}
    offset = 0
    for f, x, lab in zip(f_TF.chunk(5), x_TD.chunk(5), labels_TL.chunk(5), strict=True):
        keys = offset + np.arange(len(f))
        for j, (neg, pos) in enumerate(res):
            neg.offer(keys[~lab[:, j].numpy()])
            pos.offer(keys[lab[:, j].numpy()])
        for row, key in enumerate(keys.tolist()):
            codes_by_key[key], acts_by_key[key] = f[row].numpy(), x[row].numpy()
        offset += len(f)
    per_label: list[dict[str, float]] = []
    for neg, pos in res:
        n = min(neg.sample().size, pos.sample().size)
        pick = np.random.default_rng(CTX.seed)
        keys = np.concatenate(
            [pick.choice(neg.sample(), n, replace=False), pick.choice(pos.sample(), n, replace=False)]
        )
        y = np.repeat([0, 1], n)
        train, test = train_test_split(np.arange(2 * n), test_size=TEST_SHARE, stratify=y, random_state=CTX.seed)
        codes = np.stack([codes_by_key[int(k)] for k in keys])
        acts = np.stack([acts_by_key[int(k)] for k in keys])
        out: dict[str, float] = {}
        for k in K_VALUES:
            diff = np.abs(codes[train][y[train] == 1].mean(0) - codes[train][y[train] == 0].mean(0))
            X = codes[:, np.argsort(-diff, kind="stable")[:k]]
            out[f"probe_accuracy_k{k}"] = fit_score(X, y, train, test)
        out["probe_accuracy_dense"] = fit_score(acts, y, train, test)
        per_label.append(out)
    return {name: float(np.mean([r[name] for r in per_label])) for name in per_label[0]}


def fit_score(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=CTX.seed))
    return float(probe.fit(X[train], y[train]).score(X[test], y[test]))


def test_optimised_path_matches_reference_implementation() -> None:
    """Array store, float64 standardisation and the memo give the plain pipeline's accuracies exactly."""
    gen = torch.Generator().manual_seed(5)
    labels_TL = torch.rand(N_TOKENS, 2, generator=gen) < torch.tensor([0.2, 0.45])
    f_TF = torch.rand(N_TOKENS, D_SAE, generator=gen) * (torch.rand(N_TOKENS, D_SAE, generator=gen) < 0.2)
    f_TF[:, 4] += 0.8 * labels_TL[:, 0] * torch.rand(N_TOKENS, generator=gen)  # informative, noisy latents
    f_TF[:, 9] += 0.5 * labels_TL[:, 1] * torch.rand(N_TOKENS, generator=gen)
    f_TF[:, 30] = 0.0  # a dead latent: a constant column
    x_TD = torch.randn(N_TOKENS, D_IN, generator=gen)
    x_TD[:, 2] += 0.7 * labels_TL[:, 0]
    x_TD[:, 5] = 1.0  # a constant activation dimension
    expected = reference_probe(f_TF, x_TD, labels_TL)
    assert 0.55 < expected["probe_accuracy_k1"] < 0.99  # not a trivial (perfect or chance) case
    probing._MEMO.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no invalid/overflow values reach the solver
        got, _ = run(f_TF, x_TD, labels_TL)
    again, _ = run(f_TF, x_TD, labels_TL)  # the second run is answered from the memo
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
        assert again[name] == got[name], name


def test_store_rows_match_the_batches() -> None:
    """The array-backed store returns exactly the codes and activations of the keys asked for."""
    gen = torch.Generator().manual_seed(2)
    labels_TL = torch.rand(N_TOKENS, 2, generator=gen) < 0.5
    f_TF = torch.rand(N_TOKENS, D_SAE, generator=gen) * (torch.rand(N_TOKENS, D_SAE, generator=gen) < 0.3)
    x_TD = torch.randn(N_TOKENS, D_IN, generator=gen)
    _, acc = run(f_TF, x_TD, labels_TL)
    keys = acc.reservoirs[1][1].sample()[:50]
    codes = acc.store.code_matrix(keys)
    assert isinstance(codes, csr_matrix)
    np.testing.assert_array_equal(codes.toarray(), f_TF[torch.as_tensor(keys)].numpy())
    np.testing.assert_array_equal(acc.store.act_matrix(keys), x_TD[torch.as_tensor(keys)].numpy())
