"""`evalkit run` end to end: output files, resume after SIGKILL, zero-recompute reruns, exit code 2.

Resume comparison: every output file must be byte-identical to an uninterrupted run's, except run.json's
`execution` block (timings and computed/reused counts), with SOURCE_DATE_EPOCH fixing the SAEBench JSON's
timestamp.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers.run_folders import output_files, run_argv
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from evalkit.app.cli import main

HOOK = "blocks.0.hook_resid_post"
COLUMNS = [
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
]
METRICS = "core,sparsity,downstream,saebench_weights"  # saebench_weights: computed only when named
ENTRIES_PER_SAE = 6  # reconstruction, shrinkage, sparsity_codes, saebench_core, saebench_weights, feature_density


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny")
    StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=meta)).save_model(root / "saes" / "a_standard")
    TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=3, metadata=meta)).save_model(root / "saes" / "b_topk")
    TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=5, metadata=meta)).save_model(root / "saes" / "c_topk")
    save_file({"activations": torch.randn(24, 8, 16) + 2.0}, root / "acts.safetensors")
    save_file({"activations": torch.randn(24, 8, 12)}, root / "acts12.safetensors")
    return root


def args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return run_argv(workdir / "saes", workdir / "acts.safetensors", METRICS, 32, out, *extra)


def execution(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["execution"]


@pytest.fixture(scope="module", autouse=True)
def fixed_build_date() -> Iterator[None]:
    """SOURCE_DATE_EPOCH pins the SAEBench JSON timestamp, so separate runs can be compared byte for byte."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    yield
    if old is None:
        os.environ.pop("SOURCE_DATE_EPOCH")
    else:
        os.environ["SOURCE_DATE_EPOCH"] = old


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> Path:
    out = workdir / "full"
    assert main(args(workdir, out)) == 0
    return out


def test_results_csv_has_the_contract_columns(uninterrupted: Path) -> None:
    with open(uninterrupted / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS
    by_metric = {(r[0], r[8], r[10]) for r in rows[1:]}
    assert ("a_standard", "fvu", "") in by_metric
    assert all(r[10] == "" for r in rows[1:])  # SAE-level rows only; every row is in results.parquet
    assert all(r[11] == "192" for r in rows[1:])  # 24 × 8 tokens, none special in an activation file
    table = pd.read_parquet(uninterrupted / "results.parquet")
    assert list(table.columns) == COLUMNS
    schema = pq.read_schema(uninterrupted / "results.parquet")
    assert (str(schema.field("latent").type), str(schema.field("value").type)) == ("int64", "double")
    per_latent = table[table["latent"].notna()]
    assert ((per_latent["sae_id"] == "c_topk") & (per_latent["metric"] == "feature_density")).sum() == 48
    assert len(table[table["latent"].isna()]) == len(rows) - 1
    summary = list(csv.DictReader(open(uninterrupted / "summary.csv", newline="")))
    assert [r["sae_id"] for r in summary] == ["a_standard", "b_topk", "c_topk"]
    assert float(summary[1]["l0"]) == pytest.approx(3.0)
    features = list(csv.DictReader(open(uninterrupted / "features.csv", newline="")))
    assert len(features) == 32 + 32 + 48


def test_downstream_skip_is_stated(uninterrupted: Path) -> None:
    run = json.loads((uninterrupted / "run.json").read_text())
    skipped = {s["entry"]: s for s in run["skipped"]}
    assert "needs the model" in skipped["downstream"]["reason"]
    assert run["n_tokens"] == 192
    rows = (uninterrupted / "results.csv").read_text()
    assert "ce_loss_score" not in rows


def test_saebench_json_needs_what_coreevaloutput_requires(uninterrupted: Path) -> None:
    """Without a model there is no CE/KL, which SAEBench's CoreEvalOutput requires: no file, a stated reason."""
    assert not (uninterrupted / "saebench" / "b_topk_core_eval_results.json").exists()
    run = json.loads((uninterrupted / "run.json").read_text())
    skipped = [s for s in run["skipped"] if s["entry"] == "saebench_json"]
    assert skipped and "ce_loss_score" in skipped[0]["reason"]
    assert sorted(skipped[0]["sae_ids"]) == ["a_standard", "b_topk", "c_topk"]
    rows = (uninterrupted / "results.csv").read_text()
    assert "mse_saebench" in rows and "max_decoder_cosine_sim" in rows


def test_rerun_recomputes_nothing(workdir: Path, uninterrupted: Path) -> None:
    before = output_files(uninterrupted)
    assert main(args(workdir, uninterrupted)) == 0
    assert execution(uninterrupted)["computed"] == 0
    assert execution(uninterrupted)["reused"] == 3 * ENTRIES_PER_SAE
    assert output_files(uninterrupted) == before
    assert main(args(workdir, uninterrupted, "--force")) == 0
    assert execution(uninterrupted)["computed"] == 3 * ENTRIES_PER_SAE


def test_sigkill_then_resume_matches_uninterrupted(workdir: Path, uninterrupted: Path) -> None:
    out = workdir / "killed"
    env = {**os.environ, "EVALKIT_TEST_KILL_AFTER_SHARDS": "5", "SOURCE_DATE_EPOCH": "1700000000"}
    proc = subprocess.run(
        [sys.executable, "-m", "evalkit", *args(workdir, out)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (out / "results.csv").exists()  # killed before any output table was written
    shards = [p for p in (out / ".evalkit-cache").rglob("*.json") if p.parent.name != "data"]
    assert len(shards) == 5
    assert main(args(workdir, out)) == 0
    assert execution(out)["reused"] == 5
    assert execution(out)["computed"] == 3 * ENTRIES_PER_SAE - 5
    assert output_files(out) == output_files(uninterrupted)


def test_bad_input_exits_2_with_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = [
        "run",
        "--sae",
        str(workdir / "saes"),
        "--activations",
        str(workdir / "acts12.safetensors"),
        "--out",
        str(workdir / "bad"),
    ]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_standard" in err[0] and "d_in 16" in err[0]
    missing = [
        "run",
        "--sae",
        str(workdir / "saes"),
        "--activations",
        str(workdir / "nope.safetensors"),
        "--out",
        str(workdir / "bad"),
    ]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.safetensors" in err[0]
