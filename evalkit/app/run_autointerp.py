"""`evalkit run --autointerp baseline|llm`: explain and score latents from examples collected during the pass.

The runner feeds an AutointerpObserver during its one pass; afterwards each SAE's examples are explained and
scored, and the results join the run's outputs (results.csv rows, autointerp.csv, examples/<sae>.jsonl).

Cached like every metric: one shard per (SAE content hash, "autointerp", config hash) holding the SAE-level
values, plus the autointerp.csv rows next to it; a cached SAE is not observed again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evalkit.core.identity import stable_hash
from evalkit.core.io import atomic_write_text, dump_checked, file_stem, load_checked
from evalkit.core.records import ResultKey, Shard
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
from evalkit.engine.store import ResultStore

if TYPE_CHECKING:
    from autointerp.pipeline import AutointerpResult
    from autointerp.sampling import LatentExamples
    from evalkit.app.request import RunRequest

Decode = Callable[[list[int]], list[str]]
ENTRY = "autointerp"


class AutointerpStage:
    """Owns the observer; turns its collected examples into shards, autointerp.csv rows and example files."""

    def __init__(
        self,
        req: RunRequest,
        settings: EvalSettings,
        store: ResultStore,
        saes: Sequence[SaeLike],
        sources: dict[str, DataSource],
        hook_of: dict[str, str],
    ) -> None:
        from autointerp.observer import AutointerpObserver
        from autointerp.pipeline import config_for_mode

        config = config_for_mode(
            req.autointerp,
            seed=req.seed,
            base_url=req.llm_base_url,
            explainer_model=req.llm_model,
            scorer_model=req.llm_model,
            max_cost_usd=req.max_llm_cost,
        )
        assert config is not None  # the caller only builds a stage when --autointerp is not off
        self.config, self.store, self.settings, self.sources = config, store, settings, sources
        self.out_dir = Path(req.out)
        cfg_json = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        self.keys = {
            s.sae_id: ResultKey(
                s.content_hash,
                ENTRY,
                stable_hash(
                    {
                        "config": cfg_json,
                        "settings": settings.hashed(),
                        "data": sources[hook_of[s.sae_id]].fingerprint,
                        "source": sources[hook_of[s.sae_id]].description,
                    }
                ),
            )
            for s in saes
        }
        todo = {s.sae_id: s.d_sae for s in saes if settings.force or not self._cached(s.sae_id)}
        self.llm_usage: dict[str, dict[str, dict[str, int | float]]] = {}
        """Per scored SAE: what this process sent, and what the results took (replies cached by an earlier,
        perhaps killed, run included); run.json's execution block reports both."""
        self.observer = AutointerpObserver(config, todo)

    def _rows_path(self, key: ResultKey) -> Path:
        return self.store.root / key.sae_hash / f"{key.entry}-{key.config_hash}.rows.json"

    def _cached(self, sae_id: str) -> bool:
        key = self.keys[sae_id]
        return self.store.has(key) and self._rows(key) is not None

    def _rows(self, key: ResultKey) -> list[dict[str, str | int | float | None]] | None:
        record = load_checked(self._rows_path(key), "autointerp rows")
        return None if record is None else list(record["rows"])

    def finish(
        self, saes: Sequence[SaeLike], hook_of: dict[str, str], n_tokens: dict[str, int]
    ) -> tuple[dict[str, Shard], str, list[str]]:
        """Shards by sae_id, autointerp.csv text, and notes (e.g. a cost cap that stopped requests)."""
        shards: dict[str, Shard] = {}
        rows_by_sae: dict[str, list[dict[str, str | int | float | None]]] = {}
        notes: list[str] = []
        for s in saes:
            key = self.keys[s.sae_id]
            if self.observer.wants(s.sae_id):
                hook = hook_of[s.sae_id]
                shards[s.sae_id], rows_by_sae[s.sae_id], note = self._score(s, key, hook, n_tokens.get(hook, 0))
                notes += [note] if note else []
            else:
                shards[s.sae_id] = self.store.load(key)
                rows_by_sae[s.sae_id] = self._rows(key) or []
        return shards, self._csv(saes, rows_by_sae), notes

    def _score(
        self, s: SaeLike, key: ResultKey, hook: str, n_tokens: int
    ) -> tuple[Shard, list[dict[str, str | int | float | None]], str | None]:
        from autointerp.pipeline import example_records

        decode = decoder(self.sources[hook])
        examples, result = self.observer.finish(s.sae_id, decode, self.store.root / "llm", None)
        records = example_records(examples, decode, recorded_latents(examples, result, self.config.seed))
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        atomic_write_text(self.out_dir / "examples" / f"{file_stem(s.sae_id)}.jsonl", text)
        rows = [r.as_dict() for r in result.rows]
        self.llm_usage[s.sae_id] = {
            "sent_this_run": result.sent.as_dict(),
            "results_took": result.usage.as_dict(),
        }
        shard = Shard(key, tuple(result.metrics), n_tokens, int(time.time() * 1000))
        if result.stop_reason is None:  # a partial result (cap, unreachable endpoint) is reported, not cached
            dump_checked(self._rows_path(key), {"rows": rows})
            self.store.save(shard)
        error = result.input_error()
        if error is not None:
            raise error
        return shard, rows, result.stop_reason

    @staticmethod
    def _csv(saes: Sequence[SaeLike], rows_by_sae: dict[str, list[dict[str, str | int | float | None]]]) -> str:
        from autointerp.pipeline import AUTOINTERP_COLUMNS

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["sae_id", *AUTOINTERP_COLUMNS])
        for s in saes:
            for row in rows_by_sae.get(s.sae_id, []):
                writer.writerow([s.sae_id, *("" if row.get(c) is None else row.get(c) for c in AUTOINTERP_COLUMNS)])
        return buf.getvalue()


def recorded_latents(examples: dict[int, LatentExamples], result: AutointerpResult, seed: int) -> set[int]:
    """The latents whose windows go to examples/<sae>.jsonl: those autointerp scored, topped up (seeded) to
    the report's CARDS_PER_SAE with other latents that have top windows.

    The report's feature cards sample CARDS_PER_SAE latents among those with windows, explained ones first,
    so they always land in this set and every card has its windows; the file stays small (not every latent).
    """
    from reports.cards import CARDS_PER_SAE

    with_top = sorted(k for k, ex in examples.items() if any(w.kind == "top" for w in (*ex.explain, *ex.held_out)))
    chosen = {int(row.latent) for row in result.rows if int(row.latent) in examples}
    n_missing = CARDS_PER_SAE - sum(k in chosen for k in with_top)
    rest = [k for k in with_top if k not in chosen]
    if n_missing > 0 and rest:
        extra = np.random.default_rng([seed, 11]).permutation(rest)[:n_missing]
        chosen |= {int(k) for k in extra}
    return chosen


def decoder(source: DataSource) -> Decode:
    """Token ids to the text each token contributes (" word" for a sub-word tokenizer's word-initial token, not its
    raw vocabulary entry "Ġword"): the model's tokenizer when there is one, else the ids themselves."""
    tokenizer = getattr(source.model, "tokenizer", None)
    if tokenizer is None:
        return lambda ids: [str(i) for i in ids]
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = str(tokenizer.decode([i], clean_up_tokenization_spaces=False))
        return cache[i]

    return lambda ids: [text(int(i)) for i in ids]
