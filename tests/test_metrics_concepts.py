"""Concept F1 against planted latents that are (partial) indicators of known labels."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sklearn.metrics import f1_score

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.concepts import ConceptAlignment

N_TOKENS = 300
CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=N_TOKENS, label_names=("a", "b", "c"))


def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """Labels a, b, c; latent 0 = indicator of b (F1 1), latent 1 fires on every other a-token (F1 2/3),
    latent 2 fires on a random 10% (low F1), latent 3 never fires. No latent predicts c."""
    gen = torch.Generator().manual_seed(0)
    labels_TL = torch.rand(N_TOKENS, 3, generator=gen) < torch.tensor([0.3, 0.2, 0.25])
    f_TF = torch.zeros(N_TOKENS, 4)
    f_TF[:, 0] = 2.5 * labels_TL[:, 1]
    a_tokens = labels_TL[:, 0].nonzero().flatten()
    f_TF[a_tokens[::2], 1] = 1.0
    f_TF[:, 2] = (torch.rand(N_TOKENS, generator=gen) < 0.1).float() * 0.7
    return f_TF, labels_TL


def run(f_TF: torch.Tensor, labels_TL: torch.Tensor) -> list[MetricValue]:
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=4))
    acc = ConceptAlignment(sae, CTX)
    for f, lab in zip(f_TF.chunk(3), labels_TL.chunk(3), strict=True):
        acc.update(
            SaeBatch(
                sae=sae,
                x_TD=torch.zeros(len(f), 4),
                x_hat_TD=torch.zeros(len(f), 4),
                f_TF=f,
                positions_T=torch.zeros(len(f)),
                labels_TL=lab,
            )
        )
    return acc.compute()


def test_planted_concepts() -> None:
    f_TF, labels_TL = planted()
    values = run(f_TF, labels_TL)
    agg = {v.metric: v.value for v in values if v.latent is None}
    f1 = {v.latent: v.value for v in values if v.metric == "concept_best_f1"}
    best = {v.latent: v.value for v in values if v.metric == "concept_best_index"}
    assert f1[0] == 1.0 and best[0] == 1.0
    n_a = int(labels_TL[:, 0].sum())
    n_fire_1 = (n_a + 1) // 2
    assert f1[1] == pytest.approx(2 * n_fire_1 / (n_a + n_fire_1)) and best[1] == 0.0
    fires_2 = (f_TF[:, 2] > 0).numpy()
    expected_2 = max(f1_score(fires_2, labels_TL[:, j].numpy()) for j in range(3))
    assert f1[2] == pytest.approx(expected_2) and expected_2 < 0.5
    assert 3 not in f1  # dead latent: no best concept
    assert agg["concept_aligned_frac"] == pytest.approx(2 / 3)  # latents 0 and 1 of the 3 alive
    assert agg["concept_coverage"] == pytest.approx(2 / 3)  # labels a and b, not c


def test_labels_required() -> None:
    from evalkit.core.errors import EvalkitInputError

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=4))
    acc = ConceptAlignment(sae, CTX)
    with pytest.raises(EvalkitInputError):
        zeros = torch.zeros(2, 4)
        acc.update(SaeBatch(sae=sae, x_TD=zeros, x_hat_TD=zeros, f_TF=zeros, positions_T=torch.zeros(2)))
