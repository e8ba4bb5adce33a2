"""How the report shows a metric: a short label, its unit and which direction is better.

One table, keyed by metric name, read by the leaderboard, the tables and the plots' axis titles. A metric that is
not listed is shown under its own name, with no unit and no direction (never a guessed one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str = ""
    better: str = ""
    """'higher', 'lower', or '' when neither direction is better (e.g. α, whose ideal is 1)."""

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.better, "")


_FRACTION = "fraction"
_LATENTS = "latents"
METRIC_INFO: dict[str, MetricInfo] = {
    "l0": MetricInfo("L0", "latents/token", "lower"),
    "fvu": MetricInfo("FVU", _FRACTION, "lower"),
    "explained_variance": MetricInfo("explained variance", _FRACTION, "higher"),
    "mse": MetricInfo("MSE", "activation²", "lower"),
    "ce_loss_score": MetricInfo("CE loss score", "1 = lossless", "higher"),
    "kl_div_score": MetricInfo("KL score", "1 = lossless", "higher"),
    "kl_div_sae": MetricInfo("KL with SAE", "nats/token", "lower"),
    "ce_loss_sae": MetricInfo("CE with SAE", "nats/token", "lower"),
    "frac_alive": MetricInfo("alive", _FRACTION, "higher"),
    "dead_features": MetricInfo("dead", _LATENTS, "lower"),
    "dense_features": MetricInfo("dense (>10%)", _LATENTS, "lower"),
    "norm_detectors": MetricInfo("norm detectors", _LATENTS, "lower"),
    "fvu_norm_q4": MetricInfo("FVU, top norm quartile", _FRACTION, "lower"),
    "norm_outlier_tokens": MetricInfo("outlier tokens", "tokens"),
    "alignment_mean": MetricInfo("mean α", "1 = reads its own coefficient"),
    "alignment_frac_unit": MetricInfo("|α−1| ≤ 0.1", _FRACTION, "higher"),
    "afa_eps_lbo_median": MetricInfo("median ε_LBO", "", "lower"),
    "decoder_duplicate_pairs": MetricInfo("duplicate pairs", "pairs", "lower"),
    "seed_stability_matched_cos": MetricInfo("seed matched cos", "cosine", "higher"),
    "seed_stability_mmcs": MetricInfo("seed MMCS", "cosine", "higher"),
    "concept_aligned_frac": MetricInfo("concept-aligned", _FRACTION, "higher"),
    "concept_coverage": MetricInfo("concept coverage", _FRACTION, "higher"),
    "probe_accuracy_k1": MetricInfo("probe acc. k=1", _FRACTION, "higher"),
    "probe_accuracy_k5": MetricInfo("probe acc. k=5", _FRACTION, "higher"),
    "autointerp_detection_balanced_accuracy": MetricInfo("detection bal. acc.", "0.5 = chance", "higher"),
    "autointerp_fuzzing_balanced_accuracy": MetricInfo("fuzzing bal. acc.", "0.5 = chance", "higher"),
}


def info(metric: str) -> MetricInfo:
    return METRIC_INFO.get(metric, MetricInfo(metric))
