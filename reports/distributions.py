"""The report's detail sections: distributions per SAE (density, α, norm, AFA, seed stability, autointerp).

A per-SAE histogram or scatter holds every SAE's traces; the page shows one SAE at a time through a selector in
the plot's header, opening on the SAE with the most to show (the widest 5th–95th percentile spread), not merely
the first in alphabetical order. Bar charts over SAEs are horizontal, so SAE names are never truncated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from reports import plots
from reports.load import read_afa_samples
from reports.sections import ReportData, feature_column, metric_value, present_metrics
from reports.views import FigureView, Section, TableView, table_view

_feature_column, _metric, _present = feature_column, metric_value, present_metrics


def _selector(
    section: Section,
    fig_id: str,
    title: str,
    per_sae: dict[str, list[plots.Trace]],
    spreads: dict[str, float],
    x_title: str,
    y_title: str,
    barmode: str = "overlay",
    note: str = "",
) -> None:
    """A one-SAE-at-a-time figure, opening on the SAE whose values spread the most."""
    if not per_sae:
        section.notes.append(f"Nothing to plot for {title}.")
        return
    names = list(per_sae)
    initial = max(range(len(names)), key=lambda i: (spreads.get(names[i], 0.0), -i))
    fig = plots.selector_figure(per_sae, x_title, y_title, initial=initial, barmode=barmode)
    assert fig is not None
    section.figures.append(FigureView(fig_id, title, fig, options=names, initial=initial, note=note))


ROBUST_NOTE = "Bins span the 1st–99th percentile; values beyond it are counted in the end bins."


def density_section(data: ReportData) -> Section:
    section = Section("density", "Feature density", "Histogram of log10(feature density) over alive latents.")
    dens = _feature_column(data, "feature_density")
    if dens is None:
        section.notes.append("No feature_density in features.csv.")
        return section
    per_sae, spreads = {}, {}
    for sae_id, g in dens.groupby("sae_id", sort=True):
        d = g["feature_density"].to_numpy(dtype=float)
        alive = d[d > 0]
        log_d = np.log10(alive)
        edges = plots.robust_edges([log_d])
        per_sae[str(sae_id)] = [plots.binned_bar(log_d, edges, f"alive ({int((d == 0).sum())} dead)")]
        spreads[str(sae_id)] = plots.spread(log_d)
    _selector(
        section, "density-hist", "log10 feature density", per_sae, spreads, "log10 density", "latents", note=ROBUST_NOTE
    )
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
    per_sae, spreads = {}, {}
    for sae_id, g in alpha.groupby("sae_id", sort=True):
        a = g["alignment_score"].to_numpy(dtype=float)
        alive = g["feature_density"].to_numpy(dtype=float) > 0
        edges = plots.robust_edges([a])
        per_sae[str(sae_id)] = [
            plots.binned_bar(a[alive], edges, "alive"),
            plots.binned_bar(a[~alive], edges, "dead"),
        ]
        spreads[str(sae_id)] = plots.spread(a)
    _selector(
        section, "alpha-hist", "α per latent", per_sae, spreads, "α", "latents", barmode="stack", note=ROBUST_NOTE
    )
    return section


def _bars(data: ReportData, metrics: tuple[str, ...], x_title: str, log_x: bool = False) -> plots.Figure | None:
    present = _present(data, metrics)
    ids = sorted(data.tables.sae_metrics.index)
    series = {m: [_metric(data, s, m) for s in ids] for m in present}
    return plots.hbars(ids, series, x_title, log_x=log_x) if present else None


def _latent_histograms(
    data: ReportData, column: str, keep: Callable[[np.ndarray], bool]
) -> tuple[dict[str, list[plots.Trace]], dict[str, float]]:
    """Per SAE, a histogram of one per-latent column, for the SAEs whose finite values pass `keep`."""
    values = _feature_column(data, column)
    if values is None:
        return {}, {}
    per_sae, spreads = {}, {}
    for sae_id, g in values.groupby("sae_id", sort=True):
        v = g[column].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size and keep(v):
            per_sae[str(sae_id)] = [plots.binned_bar(v, plots.robust_edges([v]), "latents")]
            spreads[str(sae_id)] = plots.spread(v)
    return per_sae, spreads


def norm_section(data: ReportData) -> Section:
    section = Section(
        "norm", "Norm dependence", "FVU per token-norm quartile and norm-detector counts (docs/metrics.md)."
    )
    quartiles = ("fvu_norm_q1", "fvu_norm_q2", "fvu_norm_q3", "fvu_norm_q4")
    counts = (
        "norm_detectors",
        "norm_detectors_q4",
        "norm_detectors_auroc",
        "norm_detectors_renorm",
        "sink_detectors",
    )
    for fig_id, metrics, title, x, log_x in (
        ("norm-fvu", quartiles, "FVU by token-norm quartile", "FVU (log)", True),
        ("norm-detectors", counts, "Norm-detector counts", "latents", False),
    ):
        fig = _bars(data, metrics, x, log_x=log_x)
        if fig is None:
            section.notes.append(f"No {metrics[0]} … in results.csv.")
        else:
            section.figures.append(FigureView(fig_id, title, fig))
    exponents, spreads = _latent_histograms(data, "norm_dependence_a_latent", keep=lambda v: bool(np.any(v != 1.0)))
    if exponents:  # cosine SAEs learn a per-feature exponent a_i; inner-product SAEs are all 1
        _selector(
            section,
            "norm-exponent-hist",
            "Norm exponent a_i per latent (cosine SAEs)",
            exponents,
            spreads,
            "a_i",
            "latents",
            note=ROBUST_NOTE,
        )
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
    fig = _bars(data, ("afa_eps_lbo_median", "afa_eps_lbo_mean", "afa_eps_lbo_p90"), "ε_LBO (log)", log_x=True)
    if fig is None:
        section.notes.append("No afa_eps_lbo_* in results.csv.")
    else:
        section.figures.append(FigureView("afa-eps", "ε_LBO per SAE", fig))
    scatter, hist, z_spread, eps_spread = {}, {}, {}, {}
    for sae_id in sorted(data.tables.saes.index):
        sample = read_afa_samples(data.tables.source_dir(sae_id), sae_id)
        if sample is None:
            continue
        z, ft = sample["z_norm"].to_numpy(dtype=float), sample["ftilde_norm"].to_numpy(dtype=float)
        h = int(data.tables.saes.loc[sae_id, "d_sae"]) if pd.notna(data.tables.saes.loc[sae_id, "d_sae"]) else 0
        scatter[sae_id] = plots.afa_scatter_traces(z, ft, _metric(data, sae_id, "afa_eps_lbo_p90"), h)
        z_spread[sae_id] = plots.spread(ft / np.where(z > 0, z, np.nan))
        if "eps_lbo" in sample.columns:
            eps = sample["eps_lbo"].to_numpy(dtype=float)
            log_eps = np.log10(eps[eps > 0])
            hist[sae_id] = [plots.binned_bar(log_eps, plots.robust_edges([log_eps]), "tokens")]
            eps_spread[sae_id] = plots.spread(log_eps)
    if scatter:
        _selector(
            section,
            "afa-scatter",
            "‖f̃‖ vs ‖z‖ per token",
            scatter,
            z_spread,
            "‖z‖",
            "‖f̃‖",
            note=f"At most {plots.MAX_POINTS} tokens per SAE, evenly spaced through the stored sample.",
        )
    else:
        section.notes.append(
            "No per-token samples (DIR/afa/<sae_id>.csv with z_norm, ftilde_norm): the ‖z‖ vs ‖f̃‖ scatter is not drawn."
        )
    if hist:
        _selector(
            section,
            "afa-eps-hist",
            "log10 ε_LBO per token",
            hist,
            eps_spread,
            "log10 ε_LBO",
            "tokens",
            note=ROBUST_NOTE,
        )
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
    fig = _bars(data, ("seed_stability_matched_cos", "seed_stability_shared_frac", "seed_stability_mmcs"), "")
    if fig is not None:
        section.figures.append(FigureView("stability-bars", "Seed stability per SAE", fig))
    hist, spreads = _latent_histograms(data, "seed_match_cos", keep=lambda v: True)
    if hist:
        _selector(section, "seed-match-hist", "Best matched cosine per latent", hist, spreads, "cosine", "latents")
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
        "Scores per SAE and scorer; baseline explainer/scorer rows give the reference, 0.5 is chance for balanced "
        "accuracy. detection_shuffled is the control (each latent scored with another latent's explanation).",
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
        section.figures.append(FigureView("autointerp-scores", "Autointerp scores per SAE (dotted: chance)", fig))
    return section


DETAIL_BUILDERS: tuple[Callable[[ReportData], Section], ...] = (
    density_section,
    alignment_section,
    norm_section,
    afa_section,
    stability_section,
    autointerp_section,
)
