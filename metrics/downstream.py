"""Downstream loss metrics (group `downstream`): how much splicing x̂ into the model hurts its predictions.

The runner splices and runs the model (metrics never touch models); it hands over, per kept token, the values
named in `EXTRA_KEYS` through `SaeBatch.extras`. CE at position t is the loss of predicting token t+1 (NaN at
a sequence's last position); KL is KL(p_clean ‖ p_patched) summed over the vocabulary at position t.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, stream_metric

EXTRA_KEYS = ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")
"""Per-token tensors [T] the runner must put in `SaeBatch.extras` for this group."""


@stream_metric(
    "downstream",
    group="downstream",
    produces=(
        "ce_loss_clean",
        "ce_loss_sae",
        "ce_loss_zero_ablation",
        "ce_loss_score",
        "kl_div_sae",
        "kl_div_zero_ablation",
        "kl_div_score",
    ),
    requires=("model", "tokens"),
)
class DownstreamLoss:
    """Means of the per-token CE/KL values; scores are ratios of the means (SAEBench/sae-lens convention)."""

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.sums = dict.fromkeys(EXTRA_KEYS, 0.0)
        self.counts = dict.fromkeys(EXTRA_KEYS, 0)

    def update(self, batch: SaeBatch) -> None:
        for key in EXTRA_KEYS:
            values_T = batch.extras[key].detach().to("cpu", torch.float64)
            ok_T = ~torch.isnan(values_T)
            self.sums[key] += float(values_T[ok_T].sum())
            self.counts[key] += int(ok_T.sum())

    def state_dict(self) -> State:
        return {**{f"sum.{k}": v for k, v in self.sums.items()}, **{f"count.{k}": v for k, v in self.counts.items()}}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        self.sums = {k: float(state[f"sum.{k}"]) for k in EXTRA_KEYS}
        self.counts = {k: int(state[f"count.{k}"]) for k in EXTRA_KEYS}

    def merge(self, other: DownstreamLoss) -> None:
        for key in EXTRA_KEYS:
            self.sums[key] += other.sums[key]
            self.counts[key] += other.counts[key]

    def _mean(self, key: str) -> float:
        return self.sums[key] / self.counts[key] if self.counts[key] else float("nan")

    def compute(self) -> list[MetricValue]:
        ce_clean, ce_sae, ce_zero = self._mean("ce_clean"), self._mean("ce_sae"), self._mean("ce_zero")
        kl_sae, kl_zero = self._mean("kl_sae"), self._mean("kl_zero")
        ce_gap = ce_zero - ce_clean
        values = [
            MetricValue("ce_loss_clean", ce_clean),
            MetricValue("ce_loss_sae", ce_sae),
            MetricValue("ce_loss_zero_ablation", ce_zero),
            MetricValue("ce_loss_score", (ce_zero - ce_sae) / ce_gap if ce_gap != 0 else math.nan),
            MetricValue("kl_div_sae", kl_sae),
            MetricValue("kl_div_zero_ablation", kl_zero),
            MetricValue("kl_div_score", (kl_zero - kl_sae) / kl_zero if kl_zero != 0 else math.nan),
        ]
        return [v for v in values if math.isfinite(v.value)]
