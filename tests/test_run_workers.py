"""`evalkit run --workers N` with the local executor (evalkit.app.parallel): worker processes evaluate shares of
the SAEs into the store, and the outputs equal a single process's; seed groups stay whole in one share."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from helpers.demo import DemoRuns

from evalkit.app.cli import main
from evalkit.app.demo import run_request
from evalkit.app.parallel import shares
from evalkit.app.run_cli import run

# A seed group of three and two single SAEs of the small zoo: every metric group, autointerp included.
SUBSET = ("topk_k8", "topk_k8_seed1", "topk_k8_seed2", "cosine_k4", "topafa_afa1_32")


def test_shares_keep_seed_groups_whole_and_balance_counts() -> None:
    class S:
        def __init__(self, sae_id: str) -> None:
            self.sae_id = sae_id

    saes = [S(n) for n in "abcdefgh"]
    by_id = {s.sae_id: s for s in saes}
    groups = [[by_id["b"], by_id["e"], by_id["h"]], [by_id["c"], by_id["d"]]]
    got = shares(saes, groups, 2)  # type: ignore[arg-type]
    assert got == [["b", "e", "f", "h"], ["a", "c", "d", "g"]]
    assert shares(saes, groups, 9) == [["b", "e", "h"], ["c", "d"], ["a"], ["f"], ["g"]]  # type: ignore[arg-type]
    assert shares(saes[:1], [], 1) == [["a"]]  # type: ignore[arg-type]


def _values(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out / "results.parquet").drop(columns=["sae_path"])
    return frame.sort_values(["sae_id", "metric", "latent"], na_position="first").reset_index(drop=True)


def test_two_worker_processes_give_the_single_process_outputs(small_demo: DemoRuns, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    for name in SUBSET:
        shutil.copytree(small_demo.first.zoo_dir / name, zoo / name)
    base = replace(run_request(tmp_path / "one", zoo, small_demo.world), no_report=True)
    assert run(replace(base, workers=1)) == 0
    assert run(replace(base, out=tmp_path / "two", workers=2)) == 0
    one, two = _values(tmp_path / "one"), _values(tmp_path / "two")
    assert set(one["sae_id"]) == set(SUBSET) and len(one) > 1000
    assert {"seed_stability_mmcs", "autointerp_scored_latents", "probe_accuracy_k1"} <= set(one["metric"])
    pd.testing.assert_frame_equal(one, two)  # bit-identical values and stderrs, not close
    for name in ("results.csv", "summary.csv", "features.csv", "autointerp.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    # run.json counts the workers' results as computed by this run, not as reused by its collecting pass
    runs = [json.loads((tmp_path / d / "run.json").read_text())["execution"] for d in ("one", "two")]
    assert runs[0]["computed"] == runs[1]["computed"] > 0 and runs[0]["reused"] == runs[1]["reused"] == 0
    assert runs[0]["computed_by_workers"] == 0 and runs[1]["computed_by_workers"] == runs[1]["computed"]


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_nonpositive_workers_is_exit_2(tmp_path: Path, workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--sae", str(tmp_path), "--workers", workers, "--out", str(tmp_path / "o")]) == 2
    assert "--workers" in capsys.readouterr().err


def test_workers_start_only_for_results_not_stored(small_demo: DemoRuns, tmp_path: Path, caplog) -> None:
    """A rerun into a filled folder (the small demo's) spawns no worker process."""
    out = tmp_path / "out"
    shutil.copytree(small_demo.first.out_dir, out)
    req = replace(run_request(out, small_demo.first.zoo_dir, small_demo.world), no_report=True, workers=2)
    with caplog.at_level("INFO"):
        assert run(req) == 0
    assert "worker processes" not in caplog.text and "0 result(s) computed" in caplog.text


def test_pending_saes_are_those_with_a_shard_missing_and_their_seed_groups(
    small_demo: DemoRuns, tmp_path: Path
) -> None:
    from evalkit.app.run_cli import load_all_saes, resolve_sources
    from evalkit.engine.keys import pending_saes
    from evalkit.engine.store import ResultStore
    from metrics.base import select_metrics

    out = tmp_path / "out"
    shutil.copytree(small_demo.first.out_dir, out)
    req = run_request(out, small_demo.first.zoo_dir, small_demo.world)
    saes = load_all_saes(req.sae, None, "cpu", "float32")
    sources, hook_of = resolve_sources(req, saes)
    specs, store = select_metrics(req.metrics), ResultStore(out)
    assert pending_saes(store, req.settings(), specs, saes, sources, hook_of) == set()
    by_id = {s.sae_id: s for s in saes}
    for sae_id in ("cosine_k8_seed1", "batchtopk_k4"):
        shutil.rmtree(out / ".evalkit-cache" / by_id[sae_id].content_hash)
    got = pending_saes(store, req.settings(), specs, saes, sources, hook_of)
    assert got == {"cosine_k8", "cosine_k8_seed1", "cosine_k8_seed2", "batchtopk_k4"}
    assert pending_saes(store, replace(req, force=True).settings(), specs, saes, sources, hook_of) == set(by_id)
