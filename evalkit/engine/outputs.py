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
import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evalkit.core.faults import fault_point
from evalkit.core.identity import JsonValue, stable_hash
from evalkit.core.io import atomic_path, atomic_write_text, evalkit_version, file_stem
from evalkit.core.records import Shard
from evalkit.engine.runconfig import SaeLike
from evalkit.engine.saebench import WEIGHTS_HINT, WEIGHTS_METRIC, SaeBenchInputs, core_eval_output, missing_inputs

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
    "stderr",
)
SAE_COLUMNS = RESULTS_COLUMNS[:8]
FEATURES_CSV_MAX_ROWS = 200_000
"""features.parquet is always written; features.csv as well while it has at most this many (SAE, latent) rows."""
PARQUET_TYPES = {
    "d_in": pa.int64(),
    "d_sae": pa.int64(),
    "seed": pa.int64(),
    "value": pa.float64(),
    "latent": pa.int64(),
    "n_tokens": pa.int64(),
    "stderr": pa.float64(),
}
"""results.parquet column types; every other column is a string."""
SEED_STATS = ("seed_mean", "seed_std", "seed_n")
"""summary.csv's seed-group columns, `<metric>_<stat>` per metric (every member of a group shows its group's)."""
LABEL_INDEX_COLUMNS = {"concept_best_index": "concept_best"}
"""Per-latent metrics holding an index into the run's label names -> the features.csv column of names."""


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
                rows.append(
                    [*cells, v.metric, float(v.value), v.latent, shard.n_tokens, shard.key.config_hash, ver, v.stderr]
                )
    return rows


def _sae_level(o: SaeOutput) -> dict[str, float]:
    return {v.metric: float(v.value) for sh in o.shards for v in sh.values if v.latent is None}


def _sae_stderr(o: SaeOutput) -> dict[str, float]:
    return {v.metric: v.stderr for sh in o.shards for v in sh.values if v.latent is None and v.stderr is not None}


def _seed_stats(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, std with ddof 1, n) of a seed group's finite values."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return None, None, 0
    return statistics.fmean(finite), statistics.stdev(finite) if n >= 2 else None, n


def summary_text(outputs: Sequence[SaeOutput], seed_groups: Sequence[Sequence[str]] = ()) -> str:
    """One row per SAE: its SAE-level metrics, then `<metric>_stderr` (token-level), then for SAEs in a seed group
    `<metric>_seed_mean/_seed_std/_seed_n` over the group (empty for SAEs in none)."""
    # Each SAE's values read once (its shards hold every per-latent value too).
    levels = {o.handle.sae_id: _sae_level(o) for o in outputs}
    stderrs = {o.handle.sae_id: _sae_stderr(o) for o in outputs}
    metric_names: dict[str, None] = {}
    for level in levels.values():
        metric_names.update(dict.fromkeys(level))
    with_se = [m for m in metric_names if any(m in se for se in stderrs.values())]
    group_of = {sid: [levels[m] for m in g if m in levels] for g in seed_groups for sid in g}
    seed_cols = [f"{m}_{stat}" for m in metric_names for stat in SEED_STATS] if group_of else []
    rows = []
    for o in outputs:
        level, se = levels[o.handle.sae_id], stderrs[o.handle.sae_id]
        row: list[float | int | str | None] = [*_sae_cells(o), *(level.get(m) for m in metric_names)]
        row += [se.get(m) for m in with_se]
        members = group_of.get(o.handle.sae_id)
        for m in metric_names if seed_cols else ():
            row += _seed_stats([x[m] for x in members if m in x]) if members else [None] * 3
        rows.append(row)
    return _csv_text([*SAE_COLUMNS, *metric_names, *(f"{m}_stderr" for m in with_se), *seed_cols], rows)


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


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Parquet through a temporary file in the same folder and os.replace (readers never see half a file)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def results_table(rows: Sequence[Sequence[float | int | str | None]]) -> pa.Table:
    """Rows of `results_rows` (SAE-level and per-latent) as a typed Arrow table, columns in RESULTS_COLUMNS order."""
    columns = list(zip(*rows, strict=True)) or [()] * len(RESULTS_COLUMNS)
    arrays = [
        pa.array(col, type=PARQUET_TYPES.get(name, pa.string()))
        for name, col in zip(RESULTS_COLUMNS, columns, strict=True)
    ]
    return pa.table(arrays, names=list(RESULTS_COLUMNS))


def _write_results(out_dir: Path, outputs: Sequence[SaeOutput]) -> None:
    """results.parquet holds every row; results.csv the SAE-level ones (per-latent values: features.*)."""
    rows = results_rows(outputs)
    latent_at = RESULTS_COLUMNS.index("latent")
    atomic_write_text(out_dir / "results.csv", _csv_text(RESULTS_COLUMNS, [r for r in rows if r[latent_at] is None]))
    atomic_write_parquet(out_dir / "results.parquet", results_table(rows))


def _write_features(out_dir: Path, outputs: Sequence[SaeOutput]) -> None:
    frame = features_frame(outputs)
    if frame is None:
        return
    atomic_write_parquet(out_dir / "features.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    csv_path = out_dir / "features.csv"
    if len(frame) > FEATURES_CSV_MAX_ROWS:
        csv_path.unlink(missing_ok=True)  # a smaller earlier run's CSV would contradict the parquet
        return
    rows = frame.astype(object).where(frame.notna(), None).values.tolist()
    atomic_write_text(csv_path, _csv_text(list(frame.columns), rows))


def _write_samples(out_dir: Path, o: SaeOutput) -> None:
    """Each shard's per-token sample to DIR/<folder>/<stem>.csv (the report's AFA scatter reads DIR/afa/)."""
    for sh in o.shards:
        if sh.samples is None:
            continue
        names = list(sh.samples.columns)
        rows = list(zip(*sh.samples.columns.values(), strict=True))
        path = out_dir / sh.samples.folder / f"{file_stem(o.handle.sae_id)}.csv"
        atomic_write_text(path, _csv_text(names, rows))


def _context_size(description: dict[str, JsonValue], settings: dict[str, JsonValue]) -> int:
    """Tokens per sequence, from the settings or the source's description (0 when unknown)."""
    for value in (settings.get("seq_len"), description.get("seq_len")):
        if isinstance(value, int) and value > 0:
            return value
    shape = description.get("shape")
    if isinstance(shape, str) and shape.startswith("["):
        dims = json.loads(shape)
        return int(dims[1]) if len(dims) == 3 else 1
    found = re.search(r"n_seq=(\d+)", str(description.get("fingerprint", "")))
    n_tokens = description.get("n_tokens")
    if found and isinstance(n_tokens, int) and int(found.group(1)) > 0:
        return n_tokens // int(found.group(1))
    return 0


def saebench_inputs(o: SaeOutput, eval_config: dict[str, JsonValue], source: dict[str, JsonValue]) -> SaeBenchInputs:
    """What evalkit.engine.saebench needs for one SAE, from its shards, the run's settings and its source's record."""
    per_latent: dict[str, dict[int, float]] = {}
    for sh in o.shards:
        for v in sh.values:
            if v.latent is not None:
                per_latent.setdefault(v.metric, {})[v.latent] = float(v.value)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = int(epoch) * 1000 if epoch else max((sh.computed_at_ms for sh in o.shards), default=0)
    h = o.handle
    description = source.get("description")
    description = description if isinstance(description, dict) else {}
    tokens_read = source.get("n_tokens_read")
    n_tokens = max((sh.n_tokens for sh in o.shards), default=0)
    dataset = eval_config.get("dataset") or eval_config.get("activations") or description.get("name") or "unknown"
    try:
        lens_version: str | None = version("sae_lens")
    except PackageNotFoundError:
        lens_version = None
    return SaeBenchInputs(
        sae_id=h.sae_id,
        sae_level=_sae_level(o),
        per_latent=per_latent,
        d_sae=int(h.d_sae),
        tokens_read=int(tokens_read) if isinstance(tokens_read, int) else n_tokens,
        tokens_evaluated=n_tokens,
        context_size=_context_size({**description, "fingerprint": source.get("fingerprint")}, eval_config),
        batch_tokens=int(eval_config.get("batch_size") or 0),  # type: ignore[arg-type]
        dataset=str(dataset),
        model_name=str(eval_config.get("model_name") or description.get("model") or ""),
        exclude_special=bool(eval_config.get("exclude_special", True)),
        eval_id=stable_hash({"sae": h.content_hash, "configs": [sh.key.config_hash for sh in o.shards]}, 32),
        datetime_epoch_millis=when,
        sae_lens_version=lens_version,
        evalkit_version=evalkit_version(),
        sae_cfg=json.loads(json.dumps(getattr(h, "cfg", None) or {}, default=str)),
        release=getattr(h, "release", None),
    )


def _write_saebench(out_dir: Path, o: SaeOutput, eval_config: dict[str, JsonValue], run_info: dict) -> str | None:
    """Write one SAE's SAEBench file; returns why it was not written (a required value is missing)."""
    sources = run_info.get("sources")
    source = sources.get(o.hook, {}) if isinstance(sources, dict) else {}
    inputs = saebench_inputs(o, eval_config, source if isinstance(source, dict) else {})
    doc = core_eval_output(inputs)
    path = out_dir / "saebench" / f"{file_stem(o.handle.sae_id)}_core_eval_results.json"
    if doc is None:
        path.unlink(missing_ok=True)  # a file from an earlier run would no longer match these results
        return ", ".join(missing_inputs(inputs))
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return None


def write_outputs(
    out_dir: Path,
    outputs: Sequence[SaeOutput],
    run_info: dict[str, JsonValue],
    eval_config: dict[str, JsonValue],
) -> None:
    """Write every output file of a run into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_results(out_dir, outputs)
    fault_point("report")
    groups = run_info.get("seed_groups")
    seed_groups = [[str(m) for m in g] for g in groups if isinstance(g, list)] if isinstance(groups, list) else []
    atomic_write_text(out_dir / "summary.csv", summary_text(outputs, seed_groups))
    fault_point("report")
    _write_features(out_dir, outputs)
    fault_point("report")
    unwritten: dict[str, list[str]] = {}
    for o in outputs:
        missing = _write_saebench(out_dir, o, eval_config, run_info)
        if missing:
            unwritten.setdefault(missing, []).append(o.handle.sae_id)
        _write_samples(out_dir, o)
        fault_point("report")
    skipped = run_info.setdefault("skipped", [])
    for missing, sae_ids in unwritten.items():
        # SAEBench's CoreEvalOutput requires every one of these; a file without them would not validate.
        reason = f"SAEBench 0.6.0 core JSON not written: it requires {missing}, which this run did not compute"
        if WEIGHTS_METRIC in missing:
            reason += f" ({WEIGHTS_HINT})"
        skipped.append({"entry": "saebench_json", "metrics": [], "reason": reason, "sae_ids": sae_ids})  # type: ignore[union-attr]
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2, default=str) + "\n")
