"""Write a run's output files: results.csv, summary.csv, features.csv|parquet, run.json, SAEBench core JSON.

Computes no metric; every file is rebuilt whole from the shards and written atomically.

Determinism: everything except run.json's `execution` block (timings, what was computed vs reused) depends
only on the shards, so an interrupted-and-resumed run writes byte-identical files to an uninterrupted one. The
SAEBench JSON's `datetime_epoch_millis` is when the SAE's results were first computed, or SOURCE_DATE_EPOCH
when that is set.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from evalkit.core.identity import JsonValue, stable_hash
from evalkit.core.io import atomic_write_text, evalkit_version, file_stem
from evalkit.core.records import Shard
from evalkit.engine.runconfig import SaeLike

RESULTS_COLUMNS = (
    "sae_id",
    "sae_path",
    "architecture",
    "family",
    "hook",
    "d_in",
    "d_sae",
    "seed",
    "metric",
    "value",
    "latent",
    "n_tokens",
    "config_hash",
    "evalkit_version",
)
SAE_COLUMNS = RESULTS_COLUMNS[:8]
FEATURES_PARQUET_ROWS = 1_000_000
"""features.csv becomes features.parquet above this many (SAE, latent) rows."""
LABEL_INDEX_COLUMNS = {"concept_best_index": "concept_best"}
"""Per-latent metrics holding an index into the run's label names -> the features.csv column of names."""

# SAEBench core-eval categories -> (their key, our metric) pairs.
SAEBENCH_CATEGORIES: dict[str, tuple[tuple[str, str], ...]] = {
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
        ("explained_variance", "explained_variance"),
        ("explained_variance_legacy", "explained_variance_legacy"),
        ("explained_variance_saebench", "explained_variance_saebench"),
        ("fvu", "fvu"),
        ("mse", "mse"),
        ("cossim", "cossim"),
    ),
    "shrinkage": (("l2_ratio", "l2_ratio"), ("relative_reconstruction_bias", "relative_reconstruction_bias")),
    "sparsity": (("l0", "l0"), ("l1", "l1")),
    "misc": (
        ("frac_alive", "frac_alive"),
        ("dead_features", "dead_features"),
        ("dense_features", "dense_features"),
    ),
}


@dataclass(frozen=True)
class SaeOutput:
    """One SAE's results as the tables need them."""

    handle: SaeLike
    hook: str
    shards: Sequence[Shard]


def _fmt(value: float | int | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[float | int | str | None]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_fmt(v) for v in row] for row in rows])
    return buf.getvalue()


def _sae_cells(o: SaeOutput) -> list[str | int | None]:
    h = o.handle
    return [h.sae_id, h.path, h.architecture, h.family, o.hook, h.d_in, h.d_sae, h.seed]


def results_rows(outputs: Sequence[SaeOutput]) -> list[list[float | int | str | None]]:
    ver = evalkit_version()
    rows: list[list[float | int | str | None]] = []
    for o in outputs:
        cells = _sae_cells(o)
        for shard in o.shards:
            for v in shard.values:
                rows.append([*cells, v.metric, float(v.value), v.latent, shard.n_tokens, shard.key.config_hash, ver])
    return rows


def _sae_level(o: SaeOutput) -> dict[str, float]:
    return {v.metric: float(v.value) for sh in o.shards for v in sh.values if v.latent is None}


def summary_text(outputs: Sequence[SaeOutput]) -> str:
    metric_names: dict[str, None] = {}
    for o in outputs:
        metric_names.update(dict.fromkeys(_sae_level(o)))
    rows = [[*_sae_cells(o), *(_sae_level(o).get(m) for m in metric_names)] for o in outputs]
    return _csv_text([*SAE_COLUMNS, *metric_names], rows)


def _label_name(index: float, names: Sequence[str]) -> str | None:
    i = int(index)
    return names[i] if float(i) == index and 0 <= i < len(names) else None


def features_frame(outputs: Sequence[SaeOutput]) -> pd.DataFrame | None:
    """One row per (SAE, latent). A per-latent label index (LABEL_INDEX_COLUMNS) also gets a column of label
    names, taken from the shard that holds the index, so results.csv stays numeric."""
    records: dict[tuple[int, int], dict[str, float | str | None]] = {}
    columns: dict[str, None] = {}
    for i, o in enumerate(outputs):
        for sh in o.shards:
            for v in sh.values:
                if v.latent is None:
                    continue
                row = records.setdefault((i, v.latent), {})
                name_col = LABEL_INDEX_COLUMNS.get(v.metric)
                if name_col is not None and sh.label_names:
                    row[name_col] = _label_name(float(v.value), sh.label_names)
                    columns[name_col] = None
                row[v.metric] = float(v.value)
                columns[v.metric] = None
    if not records:
        return None
    keys = sorted(records)
    frame = pd.DataFrame({"sae_id": [outputs[i].handle.sae_id for i, _ in keys], "latent": [lat for _, lat in keys]})
    for col in columns:
        missing = None if col in LABEL_INDEX_COLUMNS.values() else float("nan")
        frame[col] = [records[k].get(col, missing) for k in keys]
    return frame


def _write_features(out_dir: Path, outputs: Sequence[SaeOutput]) -> None:
    frame = features_frame(outputs)
    if frame is None:
        return
    if len(frame) > FEATURES_PARQUET_ROWS:
        tmp = out_dir / ".features.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / "features.parquet")
        return
    rows = frame.astype(object).where(frame.notna(), None).values.tolist()
    atomic_write_text(out_dir / "features.csv", _csv_text(list(frame.columns), rows))


def _write_samples(out_dir: Path, o: SaeOutput) -> None:
    """Each shard's per-token sample to DIR/<folder>/<stem>.csv (the report's AFA scatter reads DIR/afa/)."""
    for sh in o.shards:
        if sh.samples is None:
            continue
        names = list(sh.samples.columns)
        rows = list(zip(*sh.samples.columns.values(), strict=True))
        path = out_dir / sh.samples.folder / f"{file_stem(o.handle.sae_id)}.csv"
        atomic_write_text(path, _csv_text(names, rows))


def saebench_core_json(o: SaeOutput, eval_config: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The SAEBench core-eval result shape; `explained_variance` holds evalkit's honest (1 − fvu) value."""
    level = _sae_level(o)
    metrics: dict[str, JsonValue] = {}
    for category, pairs in SAEBENCH_CATEGORIES.items():
        present = {theirs: level[ours] for theirs, ours in pairs if ours in level}
        if present:
            metrics[category] = present
    n_tokens = max((sh.n_tokens for sh in o.shards), default=0)
    metrics["token_stats"] = {
        "total_tokens_eval_reconstruction": n_tokens,
        "total_tokens_eval_sparsity_variance": n_tokens,
    }
    density = sorted(
        (v.latent, v.value)
        for sh in o.shards
        for v in sh.values
        if v.metric == "feature_density" and v.latent is not None
    )
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = int(epoch) * 1000 if epoch else max((sh.computed_at_ms for sh in o.shards), default=0)
    h = o.handle
    cfg = getattr(h, "cfg", None) or {}
    return {
        "eval_type_id": "core",
        "eval_config": eval_config,
        "eval_id": stable_hash({"sae": h.content_hash, "configs": [sh.key.config_hash for sh in o.shards]}, 32),
        "datetime_epoch_millis": when,
        "eval_result_metrics": metrics,
        "eval_result_details": [{"index": lat, "feature_density": d} for lat, d in density],
        "eval_result_unstructured": None,
        "sae_bench_commit_hash": None,
        "sae_lens_id": h.sae_id,
        "sae_lens_release_id": None,
        "sae_lens_version": version("sae_lens"),
        "evalkit_version": evalkit_version(),
        "sae_cfg_dict": json.loads(json.dumps(cfg, default=str)),
    }


def write_outputs(
    out_dir: Path,
    outputs: Sequence[SaeOutput],
    run_info: dict[str, JsonValue],
    eval_config: dict[str, JsonValue],
) -> None:
    """Write every output file of a run into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.csv", _csv_text(RESULTS_COLUMNS, results_rows(outputs)))
    atomic_write_text(out_dir / "summary.csv", summary_text(outputs))
    _write_features(out_dir, outputs)
    for o in outputs:
        doc = saebench_core_json(o, {**eval_config, "hook_name": o.hook})
        path = out_dir / "saebench" / f"{file_stem(o.handle.sae_id)}_core_eval_results.json"
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        _write_samples(out_dir, o)
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2, default=str) + "\n")
