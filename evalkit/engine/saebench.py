"""SAEBench v0.6.0 core-eval JSON (`saebench/<stem>_core_eval_results.json`), valid against its `CoreEvalOutput`.

SAEBench's keys hold SAEBench's meaning: its `mse` is the per-batch-normalised one (`mse_saebench`), its
`explained_variance` its own formula (`explained_variance_saebench`), its token counts every token of the
batches read (special tokens included). evalkit's honest values sit next to them under `evalkit_*` keys, and
`eval_result_unstructured["evalkit"]` says where SAEBench's formula breaks (docs/saebench.md).

The layout below is evalkit's own list of what `CoreEvalOutput` requires (written from SAEBench's
`evals/core/eval_output.py`, not copied from it); tests check every file against it, and against SAEBench's
model itself where sae-bench is installed (`pip install -e ".[saebench]"`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]

SAEBENCH_VERSION = "0.6.0"

# category -> ((SAEBench key, evalkit metric holding SAEBench's meaning), ...)
REQUIRED_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "model_behavior_preservation": (
        ("kl_div_score", "kl_div_score"),
        ("kl_div_with_ablation", "kl_div_zero_ablation"),
        ("kl_div_with_sae", "kl_div_sae"),
    ),
    "model_performance_preservation": (
        ("ce_loss_score", "ce_loss_score"),
        ("ce_loss_with_ablation", "ce_loss_zero_ablation"),
        ("ce_loss_with_sae", "ce_loss_sae"),
        ("ce_loss_without_sae", "ce_loss_clean"),
    ),
    "reconstruction_quality": (
        ("explained_variance", "explained_variance_saebench"),
        ("explained_variance_legacy", "explained_variance_legacy"),
        ("mse", "mse_saebench"),
        ("cossim", "cossim"),
    ),
    "shrinkage": (
        ("l2_norm_in", "l2_norm_in"),
        ("l2_norm_out", "l2_norm_out"),
        ("l2_ratio", "l2_ratio"),
        ("relative_reconstruction_bias", "relative_reconstruction_bias"),
    ),
    "sparsity": (("l0", "l0"), ("l1", "l1")),
    "misc_metrics": (
        ("freq_over_1_percent", "freq_over_1_percent"),
        ("freq_over_10_percent", "freq_over_10_percent"),
        ("normalized_freq_over_1_percent", "normalized_freq_over_1_percent"),
        ("normalized_freq_over_10_percent", "normalized_freq_over_10_percent"),
        ("average_max_encoder_cosine_sim", "average_max_encoder_cosine_sim"),
        ("average_max_decoder_cosine_sim", "average_max_decoder_cosine_sim"),
        ("frac_alive", "frac_alive"),
    ),
}
WEIGHTS_METRIC = "average_max_encoder_cosine_sim"
"""One of the values only the on-request entry `saebench_weights` computes (metrics/saebench.py)."""
WEIGHTS_HINT = "the weight cosines are computed only when asked: --metrics all,saebench_weights"
TOKEN_STATS = ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance")
# evalkit's own values, under keys SAEBench does not use, in the category they belong to.
EVALKIT_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "reconstruction_quality": (
        ("evalkit_explained_variance", "explained_variance"),
        ("evalkit_fvu", "fvu"),
        ("evalkit_mse", "mse"),
    ),
    "sparsity": (("evalkit_dead_features", "dead_features"), ("evalkit_dense_features", "dense_features")),
}
# Per-latent detail fields -> evalkit per-latent metric. A latent that never fired has no
# consistent_activation_heuristic row (0 firings / 0 sequences); it is written as 0 (SAEBench writes NaN,
# which is not JSON).
DETAIL_FIELDS: tuple[tuple[str, str], ...] = (
    ("feature_density", "feature_density"),
    ("consistent_activation_heuristic", "consistent_activation_heuristic"),
    ("encoder_bias", "encoder_bias"),
    ("encoder_norm", "encoder_norm"),
    ("encoder_decoder_cosine_sim", "encoder_decoder_cosine_sim"),
    ("max_decoder_cosine_sim", "max_decoder_cosine_sim"),
    ("max_encoder_cosine_sim", "max_encoder_cosine_sim"),
)
ZERO_WHEN_DEAD = frozenset({"consistent_activation_heuristic"})
EVAL_CONFIG_KEYS = (
    "model_name",
    "llm_dtype",
    "batch_size_prompts",
    "n_eval_reconstruction_batches",
    "n_eval_sparsity_variance_batches",
    "dataset",
    "context_size",
    "compute_kl",
    "compute_ce_loss",
    "compute_l2_norms",
    "compute_sparsity_metrics",
    "compute_variance_metrics",
    "compute_featurewise_density_statistics",
    "compute_featurewise_weight_based_metrics",
    "exclude_special_tokens_from_reconstruction",
    "verbose",
)
TOP_LEVEL_KEYS = (
    "eval_type_id",
    "eval_config",
    "eval_id",
    "datetime_epoch_millis",
    "eval_result_metrics",
    "eval_result_details",
    "eval_result_unstructured",
    "sae_bench_commit_hash",
    "sae_lens_id",
    "sae_lens_release_id",
    "sae_lens_version",
    "sae_cfg_dict",
)
EV_FORMULA_NOTE = (
    "SAEBench 0.6.0's explained_variance is 1 - E|x - x_hat|^2 / (E|x|^2 - (mean over tokens and dims of x^2)^2). "
    "Its denominator is not a variance; it is negative when E|x|^2 < (mean x^2)^2 and the value then exceeds 1. "
    "evalkit_explained_variance (1 - fvu) is the honest value."
)


@dataclass(frozen=True)
class SaeBenchInputs:
    """Everything one SAE's file is built from; every number is an evalkit result or run setting."""

    sae_id: str
    sae_level: Mapping[str, float]
    per_latent: Mapping[str, Mapping[int, float]]
    d_sae: int
    tokens_read: int
    """Every token of the batches read, special tokens included (SAEBench's count)."""
    tokens_evaluated: int
    context_size: int
    batch_tokens: int
    dataset: str
    model_name: str
    exclude_special: bool
    eval_id: str
    datetime_epoch_millis: int
    sae_lens_version: str | None
    evalkit_version: str
    sae_cfg: dict[str, JsonValue]
    release: str | None = None


def missing_inputs(inp: SaeBenchInputs) -> list[str]:
    """evalkit metrics the file needs but the run did not produce (e.g. CE/KL without a model)."""
    needed = [ours for pairs in REQUIRED_METRICS.values() for _, ours in pairs]
    missing = [m for m in needed if not math.isfinite(inp.sae_level.get(m, math.nan))]
    missing += [
        ours
        for _, ours in DETAIL_FIELDS
        if ours not in ZERO_WHEN_DEAD and len(inp.per_latent.get(ours, {})) < inp.d_sae
    ]
    return missing


def _eval_config(inp: SaeBenchInputs) -> dict[str, JsonValue]:
    n_batches = max(1, math.ceil(inp.tokens_read / max(inp.batch_tokens, 1)))
    return {
        "model_name": inp.model_name,
        "llm_dtype": "float32",
        "batch_size_prompts": max(1, inp.batch_tokens // max(inp.context_size, 1)),
        "n_eval_reconstruction_batches": n_batches,
        "n_eval_sparsity_variance_batches": n_batches,
        "dataset": inp.dataset,
        "context_size": inp.context_size,
        "compute_kl": True,
        "compute_ce_loss": True,
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": inp.exclude_special,
        "verbose": False,
    }


def _metrics(inp: SaeBenchInputs) -> dict[str, JsonValue]:
    level = inp.sae_level
    out: dict[str, JsonValue] = {}
    for category, pairs in REQUIRED_METRICS.items():
        cat: dict[str, JsonValue] = {theirs: float(level[ours]) for theirs, ours in pairs}
        cat |= {theirs: float(level[ours]) for theirs, ours in EVALKIT_KEYS.get(category, ()) if ours in level}
        out[category] = cat
    out["token_stats"] = {
        "total_tokens_eval_reconstruction": int(inp.tokens_read),
        "total_tokens_eval_sparsity_variance": int(inp.tokens_read),
        "evalkit_evaluated_tokens": int(inp.tokens_evaluated),
    }
    return out


def _details(inp: SaeBenchInputs) -> list[JsonValue]:
    rows: list[JsonValue] = []
    for i in range(inp.d_sae):
        row: dict[str, JsonValue] = {"index": i}
        for theirs, ours in DETAIL_FIELDS:
            value = inp.per_latent.get(ours, {}).get(i)
            row[theirs] = float(value) if value is not None else 0.0 if ours in ZERO_WHEN_DEAD else math.nan
        rows.append(row)
    return rows


def _flags(inp: SaeBenchInputs) -> dict[str, JsonValue]:
    ev = inp.sae_level["explained_variance_saebench"]
    return {
        "evalkit_version": inp.evalkit_version,
        "explained_variance_formula_breaks": ev > 1.0,
        "explained_variance_note": EV_FORMULA_NOTE,
        "mse_note": "mse is SAEBench's: each token's squared error divided by its batch's evaluated token count "
        f"({inp.batch_tokens} tokens per batch here); evalkit_mse is E|x - x_hat|^2.",
        "token_stats_note": "total_tokens_* count every token of the batches read, special tokens included "
        "(SAEBench's count); evalkit_evaluated_tokens is what the metrics averaged over.",
        "docs": "docs/saebench.md",
    }


def core_eval_output(inp: SaeBenchInputs) -> dict[str, JsonValue] | None:
    """The file's content, or None when a required value is missing (see `missing_inputs`)."""
    if missing_inputs(inp):
        return None
    return {
        "eval_type_id": "core",
        "eval_config": _eval_config(inp),
        "eval_id": inp.eval_id,
        "datetime_epoch_millis": int(inp.datetime_epoch_millis),
        "eval_result_metrics": _metrics(inp),
        "eval_result_details": _details(inp),
        "eval_result_unstructured": {"evalkit": _flags(inp)},
        # A string, as the model requires; no SAEBench commit ran this evaluation, and the value says so.
        "sae_bench_commit_hash": f"none (evalkit {inp.evalkit_version}, SAEBench {SAEBENCH_VERSION} format)",
        "sae_lens_id": inp.sae_id,
        "sae_lens_release_id": inp.release,
        "sae_lens_version": inp.sae_lens_version,
        "sae_cfg_dict": inp.sae_cfg,
    }


def check_required_keys(doc: Mapping[str, JsonValue]) -> list[str]:
    """What a file lacks against evalkit's pinned list of CoreEvalOutput's required keys (empty when valid)."""
    problems = [f"missing {k}" for k in TOP_LEVEL_KEYS if k not in doc]
    if doc.get("eval_type_id") != "core":
        problems.append("eval_type_id is not 'core'")
    if not isinstance(doc.get("sae_bench_commit_hash"), str):
        problems.append("sae_bench_commit_hash is not a string")
    config = doc.get("eval_config")
    config = config if isinstance(config, dict) else {}
    problems += [f"eval_config.{k} missing" for k in EVAL_CONFIG_KEYS if k not in config]
    if not isinstance(config.get("dataset"), str):
        problems.append("eval_config.dataset is not a string")
    metrics = doc.get("eval_result_metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    for category, pairs in (*REQUIRED_METRICS.items(), ("token_stats", tuple((k, k) for k in TOKEN_STATS))):
        cat = metrics.get(category)
        cat = cat if isinstance(cat, dict) else {}
        for theirs, _ in pairs:
            value = cat.get(theirs)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                problems.append(f"{category}.{theirs} is not a finite number")
    details = doc.get("eval_result_details")
    for row in details if isinstance(details, list) else []:
        keys = set(row) if isinstance(row, dict) else set()
        absent = [k for k in ("index", *(t for t, _ in DETAIL_FIELDS)) if k not in keys]
        if absent:
            problems.append(f"eval_result_details row lacks {', '.join(absent)}")
            break
    return problems
