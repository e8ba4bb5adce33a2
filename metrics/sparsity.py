"""Per-latent firing density and the dead/dense counts derived from it (group `sparsity`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, stream_metric

DENSE_THRESHOLD = 0.1
"""A latent firing on more than this share of tokens counts as dense (docs/metrics.md)."""


@stream_metric(
    "feature_density",
    group="sparsity",
    produces=("dead_features", "frac_alive", "dense_features"),
    per_latent=("feature_density",),
    version=2,  # v2: no stderr (counts of latents past a threshold, docs/uncertainty.md)
    no_stderr=("dead_features", "frac_alive", "dense_features"),
)
class FeatureDensity:
    """Counts firings per latent; memory is one int64 vector of d_sae, whatever n_tokens is."""

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.counts_F: torch.Tensor | None = None
        self.n_tokens = 0

    def update(self, batch: SaeBatch) -> None:
        fired_F = batch.codes.latent_counts()
        self.counts_F = fired_F if self.counts_F is None else self.counts_F + fired_F
        self.n_tokens += batch.codes.n_tokens

    def state_dict(self) -> State:
        counts_F = torch.empty(0, dtype=torch.int64) if self.counts_F is None else self.counts_F.clone()
        return {"counts_F": counts_F, "n_tokens": self.n_tokens}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        counts_F = state["counts_F"]
        assert isinstance(counts_F, torch.Tensor)
        self.counts_F = counts_F.to(torch.int64).clone() if counts_F.numel() else None
        self.n_tokens = int(state["n_tokens"])

    def merge(self, other: FeatureDensity) -> None:
        if other.counts_F is not None:
            self.counts_F = other.counts_F.clone() if self.counts_F is None else self.counts_F + other.counts_F
        self.n_tokens += other.n_tokens

    def compute(self) -> list[MetricValue]:
        if self.counts_F is None or self.n_tokens == 0:
            return []
        density_F = self.counts_F.double() / self.n_tokens
        d_sae = density_F.shape[0]
        dead = int((self.counts_F == 0).sum())
        values = [
            MetricValue("dead_features", float(dead)),
            MetricValue("frac_alive", 1.0 - dead / d_sae),
            MetricValue("dense_features", float((density_F > DENSE_THRESHOLD).sum())),
        ]
        values += [MetricValue("feature_density", float(d), latent=i) for i, d in enumerate(density_F.tolist())]
        return values
