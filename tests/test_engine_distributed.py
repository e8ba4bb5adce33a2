"""The split-run driver (engine.distributed) with the in-process executor: by SAEs and by tokens give the local
runner's values (floats 1e-6 relative, counts exact, samples identical); a rerun reuses every stored unit."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.run_support import HOOK, handles, model_source, tiny_saes, tiny_tokens, trained_tiny_model

from evalkit.engine.distributed import DistributedRunner, LocalExecutor
from evalkit.engine.runconfig import EvalSettings
from evalkit.engine.runner import Runner, RunOutcome
from evalkit.engine.store import ResultStore
from metrics.base import load_metric_modules, select_metrics

SELECTION = "core,downstream,sparsity,norm,afa,alignment"


def outcome_values(outcome: RunOutcome) -> dict[tuple[str, str, int | None], float]:
    return {
        (r.handle.sae_id, v.metric, v.latent): v.value for r in outcome.results for sh in r.shards for v in sh.values
    }


def outcome_samples(outcome: RunOutcome) -> dict[tuple[str, str], object]:
    return {(r.handle.sae_id, sh.key.entry): sh.samples for r in outcome.results for sh in r.shards}


@pytest.fixture(scope="module")
def setup() -> tuple:
    load_metric_modules()
    saes = handles(tiny_saes())
    source = model_source(trained_tiny_model(), tiny_tokens(n_seq=24), batch_size=4)
    settings = EvalSettings(batch_size=4, n_tokens=300)  # the budget ends inside a batch: shards must carry it
    return saes, source, settings


def run_local(tmp: Path, setup: tuple) -> RunOutcome:
    saes, source, settings = setup
    return Runner(ResultStore(tmp), settings, select_metrics(SELECTION)).run(saes, {HOOK: source})


def run_split(tmp: Path, setup: tuple, split: str, n_workers: int) -> tuple[RunOutcome, DistributedRunner]:
    saes, source, settings = setup
    executor = LocalExecutor(saes, {HOOK: source}, n_workers)
    runner = DistributedRunner(ResultStore(tmp), settings, select_metrics(SELECTION), executor, split)
    return runner.run(saes, {HOOK: source}), runner


@pytest.mark.parametrize(("split", "n_workers"), [("saes", 2), ("tokens", 3)])
def test_split_run_equals_local_run(tmp_path: Path, setup: tuple, split: str, n_workers: int) -> None:
    local = run_local(tmp_path / "local", setup)
    got, runner = run_split(tmp_path / split, setup, split, n_workers)
    expected = outcome_values(local)
    values = outcome_values(got)
    assert values.keys() == expected.keys() and len(expected) > 100
    for key, want in expected.items():
        if float(want).is_integer():
            assert values[key] == want, key
        else:
            assert values[key] == pytest.approx(want, rel=1e-6, abs=1e-12), key
    assert outcome_samples(got) == outcome_samples(local)  # afa's token sample: identical
    assert got.hooks[HOOK].ctx == local.hooks[HOOK].ctx
    assert len(runner.units_computed) == (2 if split == "saes" else 3)
    assert {"ce_loss_score", "norm_detectors", "afa_eps_lbo_median"} <= {m for _, m, _ in values}


def test_rerun_reuses_stored_units(tmp_path: Path, setup: tuple) -> None:
    first, runner = run_split(tmp_path, setup, "tokens", 3)
    # Shards gone (as after a driver killed between storing units and merging them): units are reused.
    for shard_file in ResultStore(tmp_path).root.glob("*/*.json"):
        if shard_file.parent.name not in ("data", "units"):
            shard_file.unlink()
    again, rerun = run_split(tmp_path, setup, "tokens", 3)
    assert rerun.units_computed == [] and len(rerun.units_reused) == 3
    assert outcome_values(again) == outcome_values(first)


def test_ray_executor_without_ray_is_exit_2_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evalkit.app.cli import main
    from evalkit.engine import ray_executor

    monkeypatch.setattr(ray_executor, "ray_installed", lambda: False)
    code = main(["run", "--sae", str(tmp_path), "--executor", "ray", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--executor ray" in err[0] and "pip install 'evalkit[ray]'" in err[0]
    assert not (tmp_path / "o").exists()  # before any work
