"""The report's sections, each built from stored results only; a section whose data is absent says so."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports import plots
from reports.claims import claims_section
from reports.load import RunTables, read_afa_samples
from reports.matched import OUT_OF_RANGE, Family
from reports.views import Section, TableView, table_view

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
    "seed_stability_matched_cos",
    "concept_aligned_frac",
    "probe_accuracy_k1",
    "autointerp_detection_balanced_accuracy",
)
SAE_INFO = ("family_label", "architecture", "hook", "d_sae", "seed", "seed_group")


@dataclass
class ReportData:
    tables: RunTables
    families: list[Family]
    matched: pd.DataFrame
    match_by: str
    differences: pd.DataFrame | None = None
    """Pairwise family differences at each target with 95% intervals (reports.differences)."""


def _metric(data: ReportData, sae_id: str, metric: str) -> float:
    m = data.tables.sae_metrics
    if metric not in m.columns or sae_id not in m.index:
        return math.nan
    return float(m.loc[sae_id, metric])


def _present(data: ReportData, metrics: tuple[str, ...]) -> list[str]:
    return [m for m in metrics if m in data.tables.sae_metrics.columns]


def _feature_column(data: ReportData, column: str) -> pd.DataFrame | None:
    f = data.tables.features
    if f is None or column not in f.columns:
        return None
    return f[["sae_id", "latent", column]].assign(**{column: pd.to_numeric(f[column], errors="coerce")})


def _add(section: Section, fig_id: str, fig: plots.Figure | None) -> None:
    if fig is None:
        section.notes.append(f"Nothing to plot for {fig_id}.")
    else:
        section.figures.append((fig_id, fig))


def _info(saes: pd.DataFrame, sae_id: str, column: str) -> object:
    value = saes.loc[sae_id, column]
    # seed-group keys are "<family>::<name>"; the family is already a column of its own
    return str(value).split("::", 1)[-1] if column == "seed_group" else value


def summary_section(data: ReportData) -> Section:
    saes, metrics = data.tables.saes, _present(data, HEADLINE_METRICS)
    rows = [
        [sae_id, *[_metric(data, sae_id, m) for m in metrics], *[_info(saes, sae_id, c) for c in SAE_INFO]]
        for sae_id in sorted(saes.index)
    ]
    # Headline numbers first: a reader opening the report sees them without scrolling past long identity strings.
    headers = ["sae_id", *metrics, "family", "architecture", "hook", "d_sae", "seed", "seed group"]
    section = Section("summary", "Summary", "One row per SAE; click a column header to sort.")
    section.tables.append(table_view(headers, rows, sortable=True, css_id="summary-table"))
    every = sorted(data.tables.sae_metrics.columns)
    all_rows = [[sae_id, *[_metric(data, sae_id, m) for m in every]] for sae_id in sorted(saes.index)]
    section.tables.append(table_view(["sae_id", *every], all_rows, "Every SAE-level metric", sortable=True))
    # Named by file (and folder, when several were read), never by absolute path: the page moves with its folder.
    several = len(data.tables.dirs) > 1
    section.notes.extend(
        f"Not found: {Path(path).parent.name + '/' if several else ''}{Path(path).name}" for path in data.tables.missing
    )
    return section


def pareto_section(data: ReportData) -> Section:
    section = Section("pareto", "Pareto fronts", "One line per family; seed groups are averaged into one point.")
    for fig_id, y, log_x in (("pareto-fvu", "fvu", True), ("pareto-ce", "ce_loss_score", False)):
        fig = plots.pareto_figure(data.families, "l0", y, log_x=log_x)
        if fig is None:
            section.notes.append(f"No SAE has both l0 and {y}; the {y} front is not drawn.")
        else:
            section.figures.append((fig_id, fig))
    return section


def matched_section(data: ReportData) -> Section:
    m = data.matched
    section = Section(
        "matched",
        "Matched reconstruction",
        f"Families compared at equal {data.match_by} (interpolated linearly between the two bracketing SAEs; "
        "never extrapolated). value = (1 − weight)·lower + weight·upper. Full table: matched.csv.",
    )
    if m.empty:
        section.notes.append(f"No family has {data.match_by}; nothing to match.")
        return section
    shown = [x for x in HEADLINE_METRICS if x in set(m["metric"])]
    for target, at_target in m.groupby("target", sort=True):
        rows = []
        for family, fam in at_target.groupby("family", sort=True):
            values = fam.set_index("metric")
            brackets = values.iloc[0]
            cells: list[object] = [
                OUT_OF_RANGE
                if brackets["lower_sae"] == OUT_OF_RANGE
                else values.loc[x, "value"]
                if x in values.index
                else math.nan
                for x in shown
            ]
            rows.append([family, *cells, brackets["lower_sae"], brackets["upper_sae"], brackets["weight"]])
        caption = f"{data.match_by} = {target:.4g}"
        section.tables.append(table_view(["family", *shown, "lower", "upper", "weight"], rows, caption))
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
        seeds = "yes" if (pair["seed_spread"] == "included").all() else "no"
        rows.append([fam_a, fam_b, *cells, seeds])
    caption = (
        f"Differences a − b at {data.match_by} = {target:.4g}, 95% interval (token and seed noise); "
        "'within noise' = the interval contains 0. Full table: matched_differences.csv."
    )
    headers = ["family a", "family b", *metrics, "seed spread in interval"]
    section.tables.append(table_view(headers, rows, caption, sortable=True))


def density_section(data: ReportData) -> Section:
    section = Section("density", "Feature density", "Histogram of log10(feature density) over alive latents.")
    dens = _feature_column(data, "feature_density")
    if dens is None:
        section.notes.append("No feature_density in features.csv.")
        return section
    per_sae = {}
    for sae_id, g in dens.groupby("sae_id", sort=True):
        d = g["feature_density"].to_numpy(dtype=float)
        alive = d[d > 0]
        edges = plots.shared_edges([np.log10(alive)])
        per_sae[str(sae_id)] = [plots.binned_bar(np.log10(alive), edges, f"alive ({int((d == 0).sum())} dead)")]
    _add(section, "density-hist", plots.selector_figure(per_sae, "log10 density", "log10 density", "latents"))
    return section


def alignment_section(data: ReportData) -> Section:
    section = Section("alignment", "Encoder–decoder alignment α", "α_i histogram, alive and dead latents apart.")
    alpha = _feature_column(data, "alignment_score")
    if alpha is None:
        section.notes.append("No alignment_score in features.csv.")
        return section
    dens = _feature_column(data, "feature_density")
    if dens is None:
        section.notes.append("No feature_density in features.csv: alive and dead latents cannot be told apart.")
        alpha = alpha.assign(feature_density=1.0)
    else:
        alpha = alpha.merge(dens, on=["sae_id", "latent"], how="left")
    per_sae = {}
    for sae_id, g in alpha.groupby("sae_id", sort=True):
        a = g["alignment_score"].to_numpy(dtype=float)
        alive = g["feature_density"].to_numpy(dtype=float) > 0
        edges = plots.shared_edges([a])
        per_sae[str(sae_id)] = [
            plots.binned_bar(a[alive], edges, "alive"),
            plots.binned_bar(a[~alive], edges, "dead"),
        ]
    _add(section, "alpha-hist", plots.selector_figure(per_sae, "α", "α", "latents", barmode="stack"))
    return section


def _bars(data: ReportData, metrics: tuple[str, ...], title: str, y_title: str) -> plots.Figure | None:
    present = _present(data, metrics)
    ids = sorted(data.tables.sae_metrics.index)
    series = {m: [_metric(data, s, m) for s in ids] for m in present}
    return plots.grouped_bars(ids, series, title, y_title) if present else None


def _latent_histograms(
    data: ReportData, column: str, keep: Callable[[np.ndarray], bool]
) -> dict[str, list[plots.Trace]]:
    """Per SAE, a histogram of one per-latent column, for the SAEs whose finite values pass `keep`."""
    values = _feature_column(data, column)
    if values is None:
        return {}
    per_sae = {}
    for sae_id, g in values.groupby("sae_id", sort=True):
        v = g[column].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size and keep(v):
            per_sae[str(sae_id)] = [plots.binned_bar(v, plots.shared_edges([v]), "latents")]
    return per_sae


def norm_section(data: ReportData) -> Section:
    section = Section("norm", "Norm dependence", "FVU per token-norm quartile and norm-detector counts (METRICS.md).")
    quartiles = ("fvu_norm_q1", "fvu_norm_q2", "fvu_norm_q3", "fvu_norm_q4")
    counts = (
        "norm_detectors",
        "norm_detectors_q4",
        "norm_detectors_auroc",
        "norm_detectors_renorm",
        "sink_detectors",
    )
    for fig_id, metrics, title, y in (
        ("norm-fvu", quartiles, "FVU by norm quartile", "fvu"),
        ("norm-detectors", counts, "norm-detector counts", "latents"),
    ):
        fig = _bars(data, metrics, title, y)
        if fig is None:
            section.notes.append(f"No {metrics[0]} … in results.csv.")
        else:
            section.figures.append((fig_id, fig))
    exponents = _latent_histograms(data, "norm_dependence_a_latent", keep=lambda v: bool(np.any(v != 1.0)))
    if exponents:  # cosine SAEs learn a per-feature exponent a_i; inner-product SAEs are all 1
        fig = plots.selector_figure(exponents, "norm exponent a_i", "a_i", "latents")
        _add(section, "norm-exponent-hist", fig)
    outliers = _present(data, ("norm_outlier_tokens", "l2_ratio_norm_q4", "norm_dependence_a"))
    if outliers:
        rows = [[s, *[_metric(data, s, m) for m in outliers]] for s in sorted(data.tables.sae_metrics.index)]
        section.tables.append(table_view(["sae_id", *outliers], rows, "Outlier tokens and norm exponent"))
    return section


def afa_section(data: ReportData) -> Section:
    section = Section(
        "afa",
        "AFA expected-activation error",
        "ε_LBO per SAE, and ‖z‖ vs ‖f̃‖ per token with AFA's bounds ‖z‖/√(1 ± ε(h−1)) drawn at the SAE's p90 ε_LBO.",
    )
    fig = _bars(data, ("afa_eps_lbo_median", "afa_eps_lbo_mean", "afa_eps_lbo_p90"), "ε_LBO", "ε_LBO")
    if fig is None:
        section.notes.append("No afa_eps_lbo_* in results.csv.")
    else:
        fig["layout"]["yaxis"]["type"] = "log"  # type: ignore[index]
        section.figures.append(("afa-eps", fig))
    scatter, hist = {}, {}
    for sae_id in sorted(data.tables.saes.index):
        sample = read_afa_samples(data.tables.source_dir(sae_id), sae_id)
        if sample is None:
            continue
        z, ft = sample["z_norm"].to_numpy(dtype=float), sample["ftilde_norm"].to_numpy(dtype=float)
        h = int(data.tables.saes.loc[sae_id, "d_sae"]) if pd.notna(data.tables.saes.loc[sae_id, "d_sae"]) else 0
        scatter[sae_id] = plots.afa_scatter_traces(z, ft, _metric(data, sae_id, "afa_eps_lbo_p90"), h)
        if "eps_lbo" in sample.columns:
            eps = sample["eps_lbo"].to_numpy(dtype=float)
            log_eps = np.log10(eps[eps > 0])
            hist[sae_id] = [plots.binned_bar(log_eps, plots.shared_edges([log_eps]), "tokens")]
    if scatter:
        _add(section, "afa-scatter", plots.selector_figure(scatter, "‖f̃‖ vs ‖z‖", "‖z‖", "‖f̃‖"))
    else:
        section.notes.append(
            "No per-token samples (DIR/afa/<sae_id>.csv with z_norm, ftilde_norm): the ‖z‖ vs ‖f̃‖ scatter is not drawn."
        )
    if hist:
        _add(section, "afa-eps-hist", plots.selector_figure(hist, "log10 ε_LBO", "log10 ε_LBO", "tokens"))
    return section


def stability_section(data: ReportData) -> Section:
    section = Section("stability", "Seed stability", "SAEs that differ only in training seed, per seed group.")
    saes = data.tables.saes
    groups = [(g, sorted(m.index)) for g, m in saes.groupby("seed_group", sort=True) if len(m) > 1]
    metrics = _present(data, ("seed_stability_matched_cos", "seed_stability_shared_frac", "seed_stability_mmcs"))
    if not groups:
        section.notes.append("No seed group with two or more SAEs.")
        return section
    rows = [
        [
            str(g).split("::", 1)[-1],
            ", ".join(members),
            len(members),
            *[np.nanmean([_metric(data, s, m) for s in members]) for m in metrics],
        ]
        for g, members in groups
    ]
    section.tables.append(table_view(["seed group", "members", "n", *metrics], rows, "Means over each group's SAEs"))
    if not metrics:
        section.notes.append("No seed_stability_* metrics in results.csv.")
    fig = _bars(
        data,
        ("seed_stability_matched_cos", "seed_stability_shared_frac", "seed_stability_mmcs"),
        "seed stability per SAE",
        "",
    )
    if fig is not None:
        section.figures.append(("stability-bars", fig))
    hist = _latent_histograms(data, "seed_match_cos", keep=lambda v: True)
    if hist:
        _add(section, "seed-match-hist", plots.selector_figure(hist, "seed_match_cos", "cosine", "latents"))
    return section


def _autointerp_table(ai: pd.DataFrame) -> tuple[pd.DataFrame, TableView]:
    ai = ai.assign(score=pd.to_numeric(ai["score"], errors="coerce"))
    if "model" not in ai.columns:
        ai = ai.assign(model="")
    failures = pd.to_numeric(ai.get("parse_failures", pd.Series(0, index=ai.index)), errors="coerce").fillna(0)
    ai = ai.assign(parse_failures=failures, model=ai["model"].fillna("").astype(str))
    agg = ai.groupby(["sae_id", "scorer", "model"], sort=True).agg(
        mean=("score", "mean"),
        std=("score", "std"),
        scored=("score", "count"),
        latents=("latent", "nunique"),
        parse_failures=("parse_failures", "sum"),
    )
    rows = [[*key, r["mean"], r["std"], r["scored"], r["latents"], r["parse_failures"]] for key, r in agg.iterrows()]
    headers = ["sae_id", "scorer", "model", "mean", "std", "scored", "latents", "parse failures"]
    return agg, table_view(headers, rows, "Per SAE, scorer and model (baseline rows are the reference to beat)")


def autointerp_section(data: ReportData) -> Section:
    section = Section(
        "autointerp",
        "Auto-interpretability",
        "Scores per SAE and scorer; baseline explainer/scorer rows give the reference, 0.5 is chance for "
        "balanced "
        "accuracy.",
    )
    ai = data.tables.autointerp
    if ai is None or ai.empty:
        section.notes.append("No autointerp.csv (run with --autointerp baseline or llm).")
        return section
    agg, view = _autointerp_table(ai)
    section.tables.append(view)
    ids = sorted({k[0] for k in agg.index})
    series = {}
    for (scorer, model), g in agg.groupby(level=["scorer", "model"]):
        by_sae = g.droplevel(["scorer", "model"])
        name = f"{scorer} ({model})" if model else str(scorer)
        series[name] = (
            [by_sae["mean"].get(s, math.nan) for s in ids],
            [by_sae["std"].get(s, math.nan) for s in ids],
        )
    fig = plots.scores_figure(ids, series, chance=0.5)
    if fig is not None:
        section.figures.append(("autointerp-scores", fig))
    return section


SECTION_BUILDERS: tuple[Callable[[ReportData], Section], ...] = (
    summary_section,
    claims_section,  # the seed-paper verdicts, right after the first-screen leaderboard
    pareto_section,
    matched_section,
    density_section,
    alignment_section,
    norm_section,
    afa_section,
    stability_section,
    autointerp_section,
)
