"""Concept alignment against token-level ground-truth labels (seed 000's "human-recognizable concepts").

Per (latent, label) we stream the count of tokens where the latent fires and the label is present. F1 of
"label present" as a predictor of "latent fires" is 2·TP / (n_label + n_fire). The best label per latent is
emitted as its index (`concept_best_index`); the runner stores ctx.label_names in this metric's shard and
evalkit.engine.outputs maps the index to features.csv's `concept_best` (the label's name) from there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, stream_metric

ALIGNED_F1 = 0.5


def f1_matrix(tp_FL: torch.Tensor, fires_F: torch.Tensor, label_counts_L: torch.Tensor) -> torch.Tensor:
    """F1 [d_sae, n_labels] = 2·TP/(n_fire + n_label); 0 where both counts are 0."""
    denom = fires_F.double().unsqueeze(1) + label_counts_L.double().unsqueeze(0)
    return torch.where(denom > 0, 2 * tp_FL.double() / denom.clamp_min(1), torch.zeros_like(denom))


@stream_metric(
    "concepts",
    group="concepts",
    produces=("concept_aligned_frac", "concept_coverage"),
    per_latent=("concept_best_f1", "concept_best_index"),
    requires=("labels",),
    version=3,  # v2 shards carry the label names that concept_best_index refers to; v3: no stderr
    no_stderr=("concept_aligned_frac", "concept_coverage"),  # shares of latents/labels past an F1 threshold
)
class ConceptAlignment:
    """Streams co-occurrence counts of latent firing and label presence."""

    def __init__(self, sae: torch.nn.Module, ctx: EvalContext) -> None:
        self.d_sae = int(sae.W_dec.shape[0])
        self.tp_FL: torch.Tensor | None = None
        self.fires_F = torch.zeros(self.d_sae, dtype=torch.float64)
        self.label_counts_L: torch.Tensor | None = None

    def update(self, batch: SaeBatch) -> None:
        if batch.labels_TL is None:
            raise EvalkitInputError("--labels", "the concepts metrics need token labels; this batch has none")
        codes = batch.codes  # co-occurrence over the nonzero codes: O(T·l0·n_labels)
        labels_TL = batch.labels_TL.double().cpu()
        if self.tp_FL is None:
            self.tp_FL = torch.zeros(self.d_sae, labels_TL.shape[1], dtype=torch.float64)
            self.label_counts_L = torch.zeros(labels_TL.shape[1], dtype=torch.float64)
        assert self.label_counts_L is not None
        token_N, latent_N = codes.token_N.cpu(), codes.latent_N.cpu()
        self.tp_FL.index_add_(0, latent_N, labels_TL[token_N])
        self.fires_F += codes.latent_counts().double()
        self.label_counts_L += labels_TL.sum(dim=0)

    def state_dict(self) -> State:
        seen = self.tp_FL is not None and self.label_counts_L is not None
        return {
            "tp_FL": self.tp_FL.clone() if seen else torch.empty(0, dtype=torch.float64),  # type: ignore[union-attr]
            "fires_F": self.fires_F.clone(),
            "label_counts_L": self.label_counts_L.clone() if seen else torch.empty(0, dtype=torch.float64),  # type: ignore[union-attr]
            "seen": seen,
        }

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        tp_FL, fires_F, counts_L = state["tp_FL"], state["fires_F"], state["label_counts_L"]
        assert (
            isinstance(tp_FL, torch.Tensor) and isinstance(fires_F, torch.Tensor) and isinstance(counts_L, torch.Tensor)
        )
        self.fires_F = fires_F.double().clone()
        self.tp_FL = tp_FL.double().clone() if state["seen"] else None
        self.label_counts_L = counts_L.double().clone() if state["seen"] else None

    def merge(self, other: ConceptAlignment) -> None:
        self.fires_F = self.fires_F + other.fires_F
        if other.tp_FL is None or other.label_counts_L is None:
            return
        if self.tp_FL is None or self.label_counts_L is None:
            self.tp_FL, self.label_counts_L = other.tp_FL.clone(), other.label_counts_L.clone()
            return
        self.tp_FL = self.tp_FL + other.tp_FL
        self.label_counts_L = self.label_counts_L + other.label_counts_L

    def compute(self) -> list[MetricValue]:
        if self.tp_FL is None or self.label_counts_L is None or self.tp_FL.shape[1] == 0:
            return []
        f1_FL = f1_matrix(self.tp_FL, self.fires_F, self.label_counts_L)
        best_f1_F, best_label_F = f1_FL.max(dim=1)
        alive = self.fires_F > 0
        covered_L = f1_FL.max(dim=0).values >= ALIGNED_F1
        out = [MetricValue("concept_coverage", float(covered_L.double().mean()))]
        if bool(alive.any()):
            aligned = (best_f1_F[alive] >= ALIGNED_F1).double().mean()
            out.append(MetricValue("concept_aligned_frac", float(aligned)))
        for i in alive.nonzero().flatten().tolist():  # a dead latent has no best concept
            out.append(MetricValue("concept_best_f1", float(best_f1_F[i]), latent=i))
            out.append(MetricValue("concept_best_index", float(best_label_F[i]), latent=i))
        return out
