"""The report's sections in reading order, each built from stored results only; a section whose data is absent
says so.

Reading order: the leaderboard (families × headline metrics at one matched target: reports/leaderboard.py), the
seed-paper claims (reports/claims.py), then the details — Pareto fronts, every matched target, every SAE, and
the distributions (reports/distributions.py) and feature cards (reports/cards.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports import plots
from reports.claims import claims_section
from reports.leaderboard import LEADERBOARD_METRICS, Board, leaderboard_section, short_family_names
from reports.load import RunTables
from reports.matched import OUT_OF_RANGE, Family
from reports.metric_info import info
from reports.views import FigureView, Section, table_view

HEADLINE_METRICS = (
    "l0",
    "fvu",
    "explained_variance",
    "mse",
    "ce_loss_score",
    "kl_div_score",
    "frac_alive",
    "dead_features",
    "dense_features",
    "alignment_mean",
    "alignment_frac_unit",
    "norm_detectors",
    "fvu_norm_q4",
    "norm_outlier_tokens",
    "afa_eps_lbo_median",
    "decoder_duplicate_pairs",
    "seed_stability_matched_cos",
    "concept_aligned_frac",
    "probe_accuracy_k1",
    "autointerp_detection_balanced_accuracy",
)
SAE_INFO = ("family_label", "architecture", "d_sae", "seed", "seed_group")


@dataclass
class ReportData:
    tables: RunTables
    families: list[Family]
    matched: pd.DataFrame
    match_by: str
    differences: pd.DataFrame | None = None
    """Pairwise family differences at each target with 95% intervals (reports.differences)."""
    names: dict[str, str] = field(default_factory=dict)
    """Family label -> short display name (the parts every family shares dropped)."""

    def __post_init__(self) -> None:
        if not self.names:
            labels = sorted({f.label for f in self.families} | set(self.tables.saes["family_label"].astype(str)))
            self.names = short_family_names(labels)

    def short(self, family: str) -> str:
        return self.names.get(family, family)


def feature_column(data: ReportData, column: str) -> pd.DataFrame | None:
    """(sae_id, latent, column) of features.csv/parquet, the column as numbers; None when absent."""
    f = data.tables.features
    if f is None or column not in f.columns:
        return None
    return f[["sae_id", "latent", column]].assign(**{column: pd.to_numeric(f[column], errors="coerce")})


def metric_value(data: ReportData, sae_id: str, metric: str) -> float:
    m = data.tables.sae_metrics
    if metric not in m.columns or sae_id not in m.index:
        return math.nan
    return float(m.loc[sae_id, metric])


def present_metrics(data: ReportData, metrics: tuple[str, ...]) -> list[str]:
    return [m for m in metrics if m in data.tables.sae_metrics.columns]


def _subheaders(metrics: list[str]) -> list[str]:
    return [" ".join(x for x in (info(m).arrow, info(m).unit) if x) for m in metrics]


def first_screen(data: ReportData) -> Section:
    board = Board(data.matched, data.match_by, data.names, data.tables.sae_metrics)
    return leaderboard_section(board)


def _info(data: ReportData, sae_id: str, column: str) -> object:
    value = data.tables.saes.loc[sae_id, column]
    if column == "family_label":
        return data.short(str(value))
    # seed-group keys are "<family>::<name>"; the family is already a column of its own
    return str(value).split("::", 1)[-1] if column == "seed_group" else value


def summary_section(data: ReportData) -> Section:
    saes, metrics = data.tables.saes, present_metrics(data, HEADLINE_METRICS)
    rows = [
        [sae_id, *[metric_value(data, sae_id, m) for m in metrics], *[_info(data, sae_id, c) for c in SAE_INFO]]
        for sae_id in sorted(saes.index)
    ]
    headers = ["SAE", *[info(m).label for m in metrics], "family", "architecture", "d_sae", "seed", "seed group"]
    hooks = sorted(set(saes["hook"].dropna().astype(str)))
    section = Section(
        "summary",
        "Every SAE",
        f"One row per SAE as measured (not matched); click a column header to sort. Hook: {', '.join(hooks)}.",
    )
    section.tables.append(
        table_view(
            headers,
            rows,
            sortable=True,
            css_id="summary-table",
            subheaders=["", *_subheaders(metrics), "", "", "", "", ""],
        )
    )
    every = sorted(data.tables.sae_metrics.columns)
    all_rows = [[sae_id, *[metric_value(data, sae_id, m) for m in every]] for sae_id in sorted(saes.index)]
    section.tables.append(table_view(["SAE", *every], all_rows, "Every SAE-level metric", sortable=True))
    # Named by file (and folder, when several were read), never by absolute path: the page moves with its folder.
    several = len(data.tables.dirs) > 1
    section.notes.extend(
        f"Not found: {Path(path).parent.name + '/' if several else ''}{Path(path).name}" for path in data.tables.missing
    )
    return section


def pareto_section(data: ReportData) -> Section:
    section = Section(
        "pareto",
        "Pareto fronts",
        "One line per family through its SAEs (seed groups averaged into one point); l0 on a log axis.",
    )
    for fig_id, y in (("pareto-fvu", "fvu"), ("pareto-ce", "ce_loss_score")):
        built = plots.pareto_figure(data.families, y, data.names)
        if built is None:
            section.notes.append(f"No SAE has both l0 and {y}; the {y} front is not drawn.")
            continue
        fig, off_scale = built
        note = (
            f"Off the plotted range (kept out so the rest stays readable): {'; '.join(off_scale)}." if off_scale else ""
        )
        section.figures.append(FigureView(fig_id, f"{info(y).label} vs L0", fig, note=note))
    return section


def matched_section(data: ReportData) -> Section:
    m = data.matched
    label = info(data.match_by).label
    section = Section(
        "matched",
        "Matched reconstruction, every target",
        f"Families compared at equal {label}, interpolated linearly between the two bracketing SAEs, never "
        "extrapolated: value = (1 − weight)·lower + weight·upper. Families whose sweep does not reach a target are "
        "listed under its table. Full table: matched.csv.",
    )
    if m.empty:
        section.notes.append(f"No family has {data.match_by}; nothing to match.")
        return section
    shown = [x for x in (*LEADERBOARD_METRICS, *HEADLINE_METRICS) if x in set(m["metric"]) and x != data.match_by]
    shown = list(dict.fromkeys(shown))
    for target, at_target in m.groupby("target", sort=True):
        rows, out_of_range = [], []
        for family, fam in at_target.groupby("family", sort=True):
            values = fam.set_index("metric")
            brackets = values.iloc[0]
            if brackets["lower_sae"] == OUT_OF_RANGE:
                out_of_range.append(data.short(str(family)))
                continue
            cells = [values.loc[x, "value"] if x in values.index else math.nan for x in shown]
            rows.append(
                [data.short(str(family)), *cells, brackets["lower_sae"], brackets["upper_sae"], brackets["weight"]]
            )
        caption = f"{label} = {target:.4g}"
        if out_of_range:
            caption += f" — {OUT_OF_RANGE}: {', '.join(out_of_range)}"
        headers = ["family", *[info(x).label for x in shown], "lower", "upper", "weight"]
        subheaders = ["", *_subheaders(shown), "", "", ""]
        section.tables.append(table_view(headers, rows, caption, subheaders=subheaders))
        _add_difference_table(section, data, target)
    return section


DIFFERENCE_METRICS = ("ce_loss_score", "kl_div_score", "l0", "fvu", "probe_accuracy_k1", "norm_detectors")
"""Metrics whose pairwise differences the report shows (all are in matched_differences.csv)."""


def _difference_cell(row: pd.Series) -> str:
    if not row["verdict"]:
        return f"{row['difference']:+.4g} (no noise estimate)"
    return f"{row['difference']:+.4g} [{row['ci_low']:+.4g}, {row['ci_high']:+.4g}] {row['verdict']}"


def _add_difference_table(section: Section, data: ReportData, target: float) -> None:
    """Family a − family b at one target, 95% interval, "within noise" when it contains 0 (docs/uncertainty.md)."""
    d = data.differences
    if d is None or d.empty:
        return
    here = d[(d["target"] == target) & d["metric"].isin(DIFFERENCE_METRICS)]
    metrics = [m for m in DIFFERENCE_METRICS if m in set(here["metric"])]
    if not metrics:
        return
    rows = []
    for (fam_a, fam_b), pair in here.groupby(["family_a", "family_b"], sort=True):
        by_metric = pair.set_index("metric")
        cells = [_difference_cell(by_metric.loc[m]) if m in by_metric.index else "" for m in metrics]
        seeds = "yes" if pair["seed_spread"].str.startswith("included").all() else "no"
        rows.append([data.short(str(fam_a)), data.short(str(fam_b)), *cells, seeds])
    caption = (
        f"Differences a − b at {info(data.match_by).label} = {target:.4g}, 95% interval (token and seed noise); "
        "'within noise' = the interval contains 0. Full table: matched_differences.csv."
    )
    headers = ["family a", "family b", *[info(m).label for m in metrics], "seed spread in interval"]
    section.tables.append(table_view(headers, rows, caption, sortable=True))


def overview_builders() -> tuple[Callable[[ReportData], Section], ...]:
    """First screen, claims, then the comparisons; the distributions follow (reports/distributions.py)."""
    return (first_screen, claims_section, pareto_section, matched_section, summary_section)
