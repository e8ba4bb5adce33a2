"""Read one or several output folders (docs/cli.md "Output folder") into typed tables; computes no metric.

Besides the CONTRACT files, two optional artefacts feed the report:
- `DIR/examples/<file_stem(sae_id)>.jsonl`: one JSON object per activating window,
  `{"latent": int, "kind": "top"|"iw"|"random"|..., "tokens": [str, ...], "activations": [float, ...]}`
  (the autointerp example store's windows; the report's feature cards show the `top` ones).
- `DIR/afa/<file_stem(sae_id)>.csv`: a per-token sample with columns `z_norm, ftilde_norm[, eps_lbo]`
  for the AFA ‖z‖ vs ‖f̃‖ scatter (the runner writes a seeded reservoir of 4,096 tokens: metrics/afa.py).
run.json's `saes` list (`sae_id`, `content_hash`) identifies one SAE across folders when merging.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.core.errors import EvalkitInputError
from evalkit.core.io import file_stem
from evalkit.engine.outputs import SAE_COLUMNS

log = logging.getLogger(__name__)

STRING_COLUMNS = (
    "sae_id",
    "sae_path",
    "architecture",
    "family",
    "hook",
    "metric",
    "config_hash",
    "evalkit_version",
)
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]

# `seed3`, `seed_3`, `seed-3` anywhere between separators, or `_s3` / `-s3` at the very end of an sae_id.
_SEED_TOKEN = re.compile(r"(?:^|(?<=[_\-.]))seed[_\-]?\d+(?=$|[_\-.])|[_\-]s\d+$", re.IGNORECASE)


@dataclass
class RunTables:
    """Everything the report reads, merged over one or several output folders."""

    dirs: tuple[Path, ...]
    results: pd.DataFrame
    """The long table (CONTRACT columns), duplicates across folders dropped."""
    saes: pd.DataFrame
    """One row per SAE (index sae_id): SAE_COLUMNS plus family_label, seed_group, source_dir."""
    sae_metrics: pd.DataFrame
    """Index sae_id, one float column per SAE-level metric."""
    sae_stderr: pd.DataFrame | None = None
    """Index sae_id, one float column per SAE-level metric: its token-level stderr (NaN where undefined)."""
    features: pd.DataFrame | None = None
    """One row per (sae_id, latent), one column per per-latent metric."""
    autointerp: pd.DataFrame | None = None
    run_info: list[dict[str, JsonValue]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Human-readable notes on files that were absent, for the report."""

    def source_dir(self, sae_id: str) -> Path:
        return Path(str(self.saes.loc[sae_id, "source_dir"]))


def seed_stripped_id(sae_id: str) -> str:
    """The sae_id without its seed token (`topk_k8_seed1` -> `topk_k8`, `cos-a_s2` -> `cos-a`)."""
    stripped = _SEED_TOKEN.sub("", sae_id)
    return re.sub(r"([_\-.])[_\-.]+", r"\1", stripped).strip("_-.") or sae_id


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={c: str for c in STRING_COLUMNS}, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise EvalkitInputError(path, f"not a readable CSV ({exc})") from exc
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise EvalkitInputError(path, f"missing column(s) {', '.join(absent)}")
    return df


def _read_parquet(path: Path, required: tuple[str, ...], sae_level_only: bool = False) -> pd.DataFrame:
    """A Parquet table (optionally only rows whose `latent` is null), checked for `required` columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, filters=pc.field("latent").is_null() if sae_level_only else None)
    except (OSError, ValueError) as exc:  # pyarrow's errors for a damaged or foreign file
        raise EvalkitInputError(path, f"not a readable Parquet file ({exc})") from exc
    df = table.to_pandas()
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise EvalkitInputError(path, f"missing column(s) {', '.join(absent)}")
    return df


def _read_results(run_dir: Path) -> pd.DataFrame:
    """The SAE-level rows of results.parquet (results.csv in folders written before it existed). Per-latent
    values come from features.parquet, so the report's memory does not grow with d_sae x metrics."""
    parquet, csv = run_dir / "results.parquet", run_dir / "results.csv"
    required = ("sae_id", "metric", "value", "latent")
    if parquet.is_file():
        df = _read_parquet(parquet, required, sae_level_only=True)
    elif csv.is_file():
        df = _read_csv(csv, required)
        df = df[pd.to_numeric(df["latent"], errors="coerce").isna()]
    else:
        raise EvalkitInputError(run_dir, "no results.parquet here; run `evalkit run --out DIR` first")
    for col in SAE_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    # Folders written before the stderr column existed read as "no stderr".
    df["stderr"] = pd.to_numeric(df["stderr"], errors="coerce") if "stderr" in df.columns else np.nan
    df["latent"] = pd.to_numeric(df["latent"], errors="coerce")
    df["source_dir"] = str(run_dir)
    return df


def _read_optional_table(run_dir: Path, stem: str, required: tuple[str, ...]) -> pd.DataFrame | None:
    """DIR/<stem>.parquet when present (the canonical copy), else DIR/<stem>.csv, else None."""
    csv, parquet = run_dir / f"{stem}.csv", run_dir / f"{stem}.parquet"
    if parquet.is_file():
        return _read_parquet(parquet, required)
    if csv.is_file():
        return _read_csv(csv, required)
    return None


def _read_run_json(run_dir: Path) -> dict[str, JsonValue]:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalkitInputError(path, f"not valid JSON ({exc})") from exc
    return loaded if isinstance(loaded, dict) else {}


def content_hashes(info: dict[str, JsonValue]) -> dict[str, str]:
    """sae_id -> SAE content hash, from run.json's `saes` list (evalkit.app.run_cli writes `content_hash`)."""
    saes = info.get("saes")
    entries = saes if isinstance(saes, list) else []
    return {
        str(e["sae_id"]): str(e["content_hash"])
        for e in entries
        if isinstance(e, dict) and e.get("sae_id") is not None and e.get("content_hash")
    }


def _identity(df: pd.DataFrame) -> pd.Series:
    """Same SAE content in two folders: its content hash (run.json) where known, else sae_id + sae_path."""
    fallback = "id:" + df["sae_id"].astype(str) + "\x00" + df["sae_path"].fillna("").astype(str)
    if "sae_hash" not in df.columns:
        return fallback
    return ("hash:" + df["sae_hash"].astype(str)).where(df["sae_hash"].notna(), fallback)


def _merge_results(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate folders; one SAE evaluated in two folders counts once (first folder wins per metric)."""
    merged = pd.concat(frames, ignore_index=True)
    merged["_identity"] = _identity(merged)
    # Two different SAEs that happen to share an sae_id across folders keep apart: suffix the later one.
    first_identity = merged.groupby("sae_id")["_identity"].transform("first")
    clash = merged["_identity"] != first_identity
    merged.loc[clash, "sae_id"] = (
        merged.loc[clash, "sae_id"] + "@" + merged.loc[clash, "source_dir"].map(lambda d: Path(d).name)
    )
    merged = merged.drop_duplicates(subset=["_identity", "metric", "latent"], keep="first")
    return merged.drop(columns="_identity").reset_index(drop=True)


def family_labels(saes: pd.DataFrame) -> pd.Series:
    """A family is one architecture (+ aligned flag) at one hook and width (docs/metrics.md).

    The label is results.csv's `family` value — evalkit writes `{architecture}[+aligned]|{hook}|{d_sae}`,
    which is already one family — or the architecture when empty. `@hook` is added only when one such name
    spans several hooks, and `/d_sae` when it spans several widths (families from other tools' names).
    """
    base = saes["family"].where(saes["family"].notna() & (saes["family"] != ""), saes["architecture"]).fillna("?")
    label = base.astype(str)
    hooks = saes.groupby(label)["hook"].transform(lambda s: s.nunique(dropna=True))
    label = label.where(hooks <= 1, label + "@" + saes["hook"].fillna("?").astype(str))
    widths = saes.groupby(label)["d_sae"].transform(lambda s: s.nunique(dropna=True))
    multi = widths > 1
    label = label.where(~multi, label + "/" + saes["d_sae"].astype(str))
    return label


def seed_groups(saes: pd.DataFrame, explicit: list[list[str]]) -> pd.Series:
    """Seed group of each SAE: explicit groups (run.json `seed_groups`) first, then a `seed_group` column of
    results.csv when present, else SAEs of one family whose sae_ids differ only by a seed token."""
    group = saes["family_label"] + "::" + saes.index.map(seed_stripped_id)
    if "seed_group" in saes.columns:
        given = saes["seed_group"].notna() & (saes["seed_group"].astype(str) != "")
        group = group.where(~given, saes["family_label"] + "::" + saes["seed_group"].astype(str))
    for members in explicit:
        present = [m for m in members if m in saes.index]
        if present:
            group.loc[present] = "explicit::" + "+".join(sorted(present))
    return group


def _explicit_groups(run_info: list[dict[str, JsonValue]]) -> list[list[str]]:
    groups: list[list[str]] = []
    for info in run_info:
        raw = info.get("seed_groups")
        items = raw.values() if isinstance(raw, dict) else raw if isinstance(raw, list) else []
        groups.extend([str(m) for m in item] for item in items if isinstance(item, list))
    return groups


def _sae_table(results: pd.DataFrame, run_info: list[dict[str, JsonValue]]) -> pd.DataFrame:
    cols = list(SAE_COLUMNS) + ["source_dir"] + (["seed_group"] if "seed_group" in results.columns else [])
    saes = results[cols].drop_duplicates(subset="sae_id", keep="first").set_index("sae_id")
    saes["family_label"] = family_labels(saes)
    saes["seed_group"] = seed_groups(saes, _explicit_groups(run_info))
    return saes


def _sae_metrics(results: pd.DataFrame) -> pd.DataFrame:
    sae_level = results[results["latent"].isna()]
    return sae_level.pivot_table(index="sae_id", columns="metric", values="value", aggfunc="first")


def _sae_stderr(results: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """The stderr of each value of `like` (the SAE-level metrics table), NaN where undefined."""
    sae_level = results[results["latent"].isna()]
    table = sae_level.pivot_table(index="sae_id", columns="metric", values="stderr", aggfunc="first", dropna=False)
    return table.reindex(index=like.index, columns=like.columns)


def load_run(*dirs: str | Path) -> RunTables:
    """Read results.csv (required), features, autointerp and run.json from each folder and merge them."""
    if not dirs:
        raise EvalkitInputError(None, "no output folder given")
    paths = tuple(Path(d) for d in dirs)
    for p in paths:
        if not p.is_dir():
            raise EvalkitInputError(p, "not a folder")
    run_info = [_read_run_json(p) for p in paths]
    frames = [_read_results(p) for p in paths]
    for df, info in zip(frames, run_info, strict=True):
        df["sae_hash"] = df["sae_id"].astype(str).map(content_hashes(info))
    results = _merge_results(frames).drop(columns="sae_hash")
    sae_metrics = _sae_metrics(results)
    missing = [f"{p}/run.json" for p, info in zip(paths, run_info, strict=True) if not info]
    features = _concat_optional(paths, "features", ("sae_id", "latent"), missing)
    autointerp = _concat_optional(paths, "autointerp", ("sae_id", "latent", "scorer", "score"), missing)
    return RunTables(
        dirs=paths,
        results=results,
        saes=_sae_table(results, run_info),
        sae_metrics=sae_metrics,
        sae_stderr=_sae_stderr(results, sae_metrics),
        features=features,
        autointerp=autointerp,
        run_info=run_info,
        missing=missing,
    )


def _concat_optional(
    paths: tuple[Path, ...], stem: str, required: tuple[str, ...], missing: list[str]
) -> pd.DataFrame | None:
    frames = []
    for p in paths:
        df = _read_optional_table(p, stem, required)
        if df is None:
            missing.append(f"{p}/{stem}.csv")
            continue
        frames.append(df)
    if not frames:
        return None
    merged = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("sae_id", "latent", "scorer", "model") if c in merged.columns]
    return merged.drop_duplicates(subset=keys, keep="first").reset_index(drop=True)


def read_examples(run_dir: Path, sae_id: str) -> pd.DataFrame | None:
    """Windows of one SAE from DIR/examples/<stem>.jsonl: columns latent, kind, tokens, activations."""
    path = run_dir / "examples" / f"{file_stem(sae_id)}.jsonl"
    if not path.is_file():
        return None
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rows.append(
                {
                    "latent": int(obj["latent"]),
                    "kind": str(obj.get("kind", "top")),
                    "tokens": [str(t) for t in obj["tokens"]],
                    "activations": [float(a) for a in obj["activations"]],
                }
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EvalkitInputError(path, f"line {n}: not an example window ({exc})") from exc
    return pd.DataFrame(rows, columns=["latent", "kind", "tokens", "activations"])


def read_afa_samples(run_dir: Path, sae_id: str) -> pd.DataFrame | None:
    """Per-token ‖z‖, ‖f̃‖ sample of one SAE from DIR/afa/<stem>.csv, or None when the runner wrote none."""
    path = run_dir / "afa" / f"{file_stem(sae_id)}.csv"
    if not path.is_file():
        return None
    return _read_csv(path, ("z_norm", "ftilde_norm"))
