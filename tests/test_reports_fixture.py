"""load_run reads the constructed output folder of tests/helpers/report_fixture.py."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.report_fixture import D_SAE, SAES, write_run_dir

from reports.load import load_run, seed_stripped_id


def test_load_run_reads_the_constructed_folder(tmp_path: Path) -> None:
    tables = load_run(write_run_dir(tmp_path / "run"))
    assert sorted(tables.saes.index) == sorted(SAES)
    assert tables.sae_metrics.loc["std_l1b", "fvu"] == 0.2
    assert tables.sae_metrics.loc["cos_b", "l0"] == 4.0
    assert "feature_density" not in tables.sae_metrics.columns  # per-latent rows stay out of the SAE-level table
    assert len(tables.features) == len(SAES) * D_SAE
    assert tables.saes.loc["topk_k8_seed0", "seed_group"] == tables.saes.loc["topk_k8_seed1", "seed_group"]
    assert tables.saes.loc["topk_k8_seed0", "seed_group"] != tables.saes.loc["topk_k4_seed0", "seed_group"]
    assert tables.saes.loc["std_l1a", "seed_group"] != tables.saes.loc["std_l1b", "seed_group"]
    assert tables.missing == []


def test_seed_stripped_id() -> None:
    assert seed_stripped_id("topk_k8_seed1") == "topk_k8"
    assert seed_stripped_id("topk-seed_2-k8") == "topk-k8"
    assert seed_stripped_id("cos_a_s3") == "cos_a"
    assert seed_stripped_id("cos_s3_a") == "cos_s3_a"  # `_s<N>` only counts as a suffix
    assert seed_stripped_id("seedless") == "seedless"


def test_explicit_seed_groups_and_family_labels(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", extras=False)
    (run / "run.json").write_text(json.dumps({"seed_groups": [["std_l1a", "std_l1b"]]}))
    tables = load_run(run)
    assert tables.saes.loc["std_l1a", "seed_group"] == tables.saes.loc["std_l1b", "seed_group"]
    assert tables.saes.loc["std_l1a", "family_label"] == "standard"  # one hook, one width: the bare family
    assert len(tables.missing) == 2  # features.csv and autointerp.csv
