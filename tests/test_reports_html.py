"""report.html: self-contained, escaped, every section present, absent data stated instead of crashing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
from helpers.report_fixture import PLOT_IDS, SAES, XSS, write_run_dir

from reports.html import figure_json, plotly_bundle, write_report

SECTIONS = (
    "summary",
    "claims",
    "pareto",
    "matched",
    "density",
    "alignment",
    "norm",
    "afa",
    "stability",
    "autointerp",
    "cards",
)
EVIL_ID = "evil<img src=x onerror=alert(2)>"


def _without_bundle(html: str) -> str:
    return html.replace(plotly_bundle(), "")


def test_report_is_self_contained_escaped_and_complete(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", saes=SAES | {EVIL_ID: SAES["cos_b"]}, afa_samples=True)
    html = write_report(run).read_text(encoding="utf-8")
    bundle = plotly_bundle()
    assert html.count(bundle) == 1
    assert html.count(bundle[:300]) == 1  # and no second copy of its head either
    rest = _without_bundle(html)
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", rest) is None  # nothing fetched from the network
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert EVIL_ID not in html and "evil&lt;img src=x onerror=alert(2)&gt;" in html
    assert "alert(1)" not in "".join(re.findall(r"<script>(.*?)</script>", rest, flags=re.S))
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    plots = re.findall(r'<script type="application/json" data-plot="([\w-]+)">', html)
    assert set(plots) == set(PLOT_IDS)
    exponent_fig = re.search(r'data-plot="norm-exponent-hist">(.*?)</script>', html, flags=re.S).group(1)
    buttons = json.loads(exponent_fig)["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["cos_a", "cos_b", "evil&lt;img src=x onerror=alert(2)&gt;"]
    assert 'id="summary-table" class="sortable"' in html
    assert "out of range" in html  # a matched cell past the standard family's last point
    assert 'class="card"' in html and "the tokens &lt;script&gt;" in html


def test_absent_data_is_stated_not_crashed(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", extras=False)
    html = write_report(run).read_text(encoding="utf-8")
    for note in (
        "No feature_density in features.csv",
        "No alignment_score in features.csv",
        "No autointerp.csv",
        "No example windows",
        "No per-token samples",
        "Not found:",
    ):
        assert note in html, note
    for section in SECTIONS:
        assert f'<section id="{section}">' in html


def test_single_sae_without_downstream_metrics(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", saes={"only": SAES["cos_a"]}, extras=False)
    results = pd.read_csv(run / "results.csv")
    results[results["metric"] != "ce_loss_score"].to_csv(run / "results.csv", index=False)
    html = write_report(run).read_text(encoding="utf-8")
    assert "No SAE has both l0 and ce_loss_score" in html
    assert "No seed group with two or more SAEs" in html
    matched = pd.read_csv(run / "matched.csv")
    assert set(matched["target"]) == {0.3} and (matched["lower_sae"] == "only").all()


def test_figure_json_escapes_markup_and_nulls_nan() -> None:
    text = str(figure_json({"data": [{"name": "</script><b>", "y": [1.0, math.nan, math.inf]}], "layout": {}}))
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"data": [{"name": "</script><b>", "y": [1.0, None, None]}], "layout": {}}
