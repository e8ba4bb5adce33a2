"""The results store: one JSON shard per (SAE content hash, metric entry, config hash), written atomically.

A run persists each SAE's shards as soon as its metrics finish, so a run killed at any point loses at most the
SAE in flight; a rerun into the same folder finds every finished shard and recomputes nothing (`--force`
ignores them). Output tables are always rebuilt from the shards, which is what makes resumed and uninterrupted
runs byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from evalkit.core.identity import JsonValue
from evalkit.core.io import dump_checked, load_checked
from evalkit.core.records import MetricValue, ResultKey, SampleTable, Shard

CACHE_DIRNAME = ".evalkit-cache"


def _value(row: list[JsonValue]) -> MetricValue:
    metric, value, latent = row[0], row[1], row[2]
    stderr = row[3] if len(row) > 3 else None
    return MetricValue(
        str(metric),
        float(value),  # type: ignore[arg-type]
        None if latent is None else int(latent),  # type: ignore[arg-type]
        None if stderr is None else float(stderr),  # type: ignore[arg-type]
    )


class ResultStore:
    """Shards under `<out>/.evalkit-cache/<sae_hash>/<entry>-<config_hash>.json`."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / CACHE_DIRNAME

    def _path(self, key: ResultKey) -> Path:
        return self.root / key.sae_hash / f"{key.entry}-{key.config_hash}.json"

    def has(self, key: ResultKey) -> bool:
        """A valid shard is stored under `key` (a damaged one is warned about and counts as absent)."""
        return self.get(key) is not None

    def exists(self, key: ResultKey) -> bool:
        """A shard file is stored under `key` (not read: a damaged one is found when it is loaded)."""
        return self._path(key).is_file()

    def load(self, key: ResultKey) -> Shard:
        shard = self.get(key)
        if shard is None:
            raise KeyError(f"no valid shard at {self._path(key)}")
        return shard

    def get(self, key: ResultKey) -> Shard | None:
        """The stored shard, or None when absent or damaged (truncated, garbage, checksum mismatch)."""
        data = load_checked(self._path(key), "result shard")
        return None if data is None else self._shard(key, data)

    @staticmethod
    def _shard(key: ResultKey, data: dict[str, JsonValue]) -> Shard:
        values = tuple(_value(row) for row in data["values"])  # type: ignore[union-attr]
        raw_samples = data.get("samples")
        samples = (
            None
            if raw_samples is None
            else SampleTable(
                str(raw_samples["folder"]),
                {str(k): tuple(float(x) for x in col) for k, col in raw_samples["columns"].items()},
            )
        )
        labels = tuple(str(n) for n in data.get("label_names", ()))
        return Shard(key, values, int(data["n_tokens"]), int(data["computed_at_ms"]), labels, samples)

    def save(self, shard: Shard) -> None:
        k = shard.key
        payload = {
            "sae_hash": k.sae_hash,
            "entry": k.entry,
            "config_hash": k.config_hash,
            "n_tokens": shard.n_tokens,
            "computed_at_ms": shard.computed_at_ms,
            # [metric, value, latent] plus the stderr where one is defined (older shards have none).
            "values": [[v.metric, v.value, v.latent] + ([] if v.stderr is None else [v.stderr]) for v in shard.values],
        }
        # Optional parts are written only when present, so older shard files stay valid and unchanged.
        if shard.label_names:
            payload["label_names"] = list(shard.label_names)
        if shard.samples is not None:
            payload["samples"] = {
                "folder": shard.samples.folder,
                "columns": {k: list(col) for k, col in shard.samples.columns.items()},
            }
        dump_checked(self._path(k), payload)

    def _data_path(self, data_key: str) -> Path:
        return self.root / "data" / f"{data_key}.json"

    def save_data_stats(self, data_key: str, stats: dict[str, JsonValue]) -> None:
        """What a pass learned about the data (counts, norms), so a fully cached rerun reports it too."""
        dump_checked(self._data_path(data_key), dict(stats))

    def load_data_stats(self, data_key: str) -> dict[str, JsonValue] | None:
        return load_checked(self._data_path(data_key), "data statistics")
