"""matched.csv on constructed families (tests/helpers/report_fixture.py) with hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from helpers.report_fixture import SAES, write_run_dir

from evalkit.app.cli import main
from evalkit.core.errors import EvalkitInputError
from reports.html import plotly_bundle_gz_b64
from reports.load import load_run
from reports.matched import MATCHED_COLUMNS, OUT_OF_RANGE, build_families, compute_matched, parse_targets

TOPK_K8 = "topk_k8_seed0+topk_k8_seed1"
TOPK_K4 = "topk_k4_seed0+topk_k4_seed1"


@pytest.fixture
def tables(tmp_path: Path):
    return load_run(write_run_dir(tmp_path / "run", extras=False))


def cell(matched: pd.DataFrame, target: float, family: str, metric: str) -> pd.Series:
    rows = matched[(matched["target"] == target) & (matched["family"] == family) & (matched["metric"] == metric)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_interpolates_linear_metrics_exactly_and_names_brackets(tables) -> None:
    m = compute_matched(tables, by="fvu", targets=[0.3])
    assert list(m.columns) == list(MATCHED_COLUMNS)
    std = cell(m, 0.3, "standard", "ce_loss_score")
    assert (std["lower_sae"], std["upper_sae"]) == ("std_l1b", "std_l1c")
    assert std["weight"] == pytest.approx(0.5, abs=1e-12)
    assert std["value"] == pytest.approx(0.7, abs=1e-12)  # 1 − 0.3
    assert cell(m, 0.3, "standard", "alignment_mean")["value"] == pytest.approx(1.1, abs=1e-12)  # 2·0.3 + 0.5
    assert cell(m, 0.3, "standard", "mse")["value"] == pytest.approx(3.0, abs=1e-12)
    assert cell(m, 0.3, "standard", "l0")["value"] == pytest.approx(20.0, abs=1e-12)
    assert std["architecture"] == "standard" and std["match_by"] == "fvu"
    assert "fvu" not in set(m["metric"])  # the matching metric is the target itself


def test_seed_groups_are_averaged_into_one_point(tables) -> None:
    families = {f.label: f for f in build_families(tables)}
    topk = {p.name: p for p in families["topk"].points}
    assert set(topk) == {TOPK_K8, TOPK_K4}
    assert topk[TOPK_K8].metrics["fvu"] == pytest.approx(0.2, abs=1e-12)  # mean of 0.15 and 0.25
    assert topk[TOPK_K4].metrics["ce_loss_score"] == pytest.approx(0.75, abs=1e-12)
    m = compute_matched(tables, by="fvu", targets=[0.3])
    row = cell(m, 0.3, "topk", "ce_loss_score")
    assert (row["lower_sae"], row["upper_sae"]) == (TOPK_K8, TOPK_K4)
    assert row["weight"] == pytest.approx(1 / 3, abs=1e-12)  # (0.3 − 0.2) / (0.5 − 0.2)
    assert row["value"] == pytest.approx(0.85, abs=1e-12)  # 1 − 0.5·0.3
    assert cell(m, 0.3, "topk", "alignment_mean")["value"] == pytest.approx(0.3, abs=1e-12)


def test_target_on_a_point_and_out_of_range_cells(tables) -> None:
    m = compute_matched(tables, by="fvu", targets=[0.3, 0.05, 0.65])
    on_point = cell(m, 0.3, "cosine", "ce_loss_score")
    assert (on_point["lower_sae"], on_point["upper_sae"], on_point["weight"]) == ("cos_a", "cos_a", 0.0)
    assert on_point["value"] == pytest.approx(0.6, abs=1e-12)
    outside = m[m["target"].isin([0.05, 0.65])]
    assert len(outside) > 0
    assert outside["value"].isna().all() and outside["weight"].isna().all()
    assert (outside["lower_sae"] == OUT_OF_RANGE).all() and (outside["upper_sae"] == OUT_OF_RANGE).all()
    # 0.45 is inside topk and cosine but past standard's last point (0.4): no extrapolation.
    m45 = compute_matched(tables, by="fvu", targets=[0.45])
    assert math.isnan(cell(m45, 0.45, "standard", "l0")["value"])
    assert cell(m45, 0.45, "cosine", "l0")["value"] == pytest.approx(16 + (0.15 / 0.3) * (4 - 16), abs=1e-12)


def test_l0_matching_interpolates_in_log_l0(tables) -> None:
    m = compute_matched(tables, by="l0", targets=[16.0, 12.0, 6.0])
    # standard: l0 8 (fvu 0.4) and 32 (fvu 0.2) bracket 16; in log l0 16 is halfway (linear would say 1/3).
    row = cell(m, 16.0, "standard", "fvu")
    assert (row["lower_sae"], row["upper_sae"]) == ("std_l1c", "std_l1b")
    assert row["weight"] == pytest.approx(0.5, abs=1e-12)
    assert row["value"] == pytest.approx(0.3, abs=1e-12)
    w12 = math.log(12 / 8) / math.log(32 / 8)
    assert cell(m, 12.0, "standard", "fvu")["value"] == pytest.approx(0.4 + w12 * (0.2 - 0.4), abs=1e-12)
    w6 = math.log(6 / 4) / math.log(8 / 4)
    assert cell(m, 6.0, "topk", "fvu")["value"] == pytest.approx(0.5 + w6 * (0.2 - 0.5), abs=1e-12)
    assert cell(m, 6.0, "topk", "fvu")["weight"] == pytest.approx(w6, abs=1e-12)
    assert cell(m, 16.0, "topk", "fvu")["lower_sae"] == OUT_OF_RANGE  # topk spans l0 4..8


def test_default_targets_span_the_range_two_families_cover(tables) -> None:
    # fvu ranges: standard [0.1, 0.4], topk [0.2, 0.5], cosine [0.3, 0.6] -> covered twice on [0.2, 0.5].
    targets = sorted(compute_matched(tables, by="fvu")["target"].unique())
    assert targets == pytest.approx([0.2, 0.275, 0.35, 0.425, 0.5], abs=1e-12)


def test_compare_merges_folders_and_counts_one_sae_once(tmp_path: Path) -> None:
    a = write_run_dir(tmp_path / "a", extras=False)
    b_saes = {"cos_a": SAES["cos_a"], "std_l1a": SAES["std_l1a"]}
    b = write_run_dir(tmp_path / "b", saes=b_saes, extras=False)
    # Same cos_a content (same path) in both; std_l1a in b is another SAE (another path) that shares the id.
    frame = pd.read_csv(b / "results.csv")
    frame.loc[frame["sae_id"] == "std_l1a", "sae_path"] = "/elsewhere/std_l1a"
    frame.to_csv(b / "results.csv", index=False)
    tables = load_run(a, b)
    assert sorted(tables.saes.index) == sorted([*SAES, "std_l1a@b"])
    assert (tables.results["sae_id"] == "cos_a").sum() == (load_run(a).results["sae_id"] == "cos_a").sum()
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--by", "l0", "--at", "16"]) == 0
    written = pd.read_csv(out / "matched.csv")
    assert list(written.columns) == list(MATCHED_COLUMNS)
    assert written[(written["family"] == "cosine") & (written["metric"] == "fvu")]["value"].iloc[0] == pytest.approx(
        0.3
    )
    assert (out / "report.html").is_file()


def test_cli_report_writes_both_files_and_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    run = write_run_dir(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    written = pd.read_csv(run / "matched.csv", keep_default_na=False)
    assert set(written["lower_sae"]) >= {OUT_OF_RANGE}  # standard stops at fvu 0.4, below the top default target 0.5
    assert plotly_bundle_gz_b64() in (run / "report.html").read_text(encoding="utf-8")  # plotly inside
    assert main(["report", str(run), "--by", "fvv"]) == 2
    assert "did you mean fvu" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert main(["report", str(run), "--at", "0.1,x"]) == 2


def test_parse_targets() -> None:
    assert parse_targets("0.1, 0.2,") == [0.1, 0.2]
    assert parse_targets(None) is None
    with pytest.raises(EvalkitInputError):
        parse_targets("a")


def test_no_family_has_the_matching_metric(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", extras=False)
    results = pd.read_csv(run / "results.csv")
    results[results["metric"] != "mse"].to_csv(run / "results.csv", index=False)
    matched = compute_matched(load_run(run), by="mse")
    assert matched.empty and list(matched.columns) == list(MATCHED_COLUMNS)
    assert main(["report", str(run), "--by", "mse"]) == 0
    assert "No family has mse; nothing to match." in (run / "report.html").read_text(encoding="utf-8")
