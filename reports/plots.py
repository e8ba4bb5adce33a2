"""Plotly figures as plain dicts (data + layout), built from stored results; plotly.js draws them.

Conventions every figure follows, so a reader learns them once:
- titles and SAE selectors are HTML above the plot (reports/templates), never inside it: nothing a plot draws can
  collide with them, and plotly's toolbar is hidden;
- l0 is always on a log axis;
- axis ranges are outlier-robust: histograms bin the 1st–99th percentile and count the rest in the end bins;
  Pareto fronts fit the bulk of the points and name the points left off-scale in a note under the plot;
- point clouds are sampled (at most MAX_POINTS per SAE) and numbers rounded to 4 significant digits, which keeps
  the page small.

Every data string that plotly will display (SAE ids, family names) is HTML-escaped first: plotly interprets a
small HTML subset in text, so an unescaped `<a href=...>` in an sae_id would become a link.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np

from evalkit.core.uncertainty import interval
from reports.matched import Family, FamilyPoint
from reports.metric_info import info

Trace = dict[str, object]
Figure = dict[str, object]

MAX_POINTS = 400
"""Points per SAE in a scatter (a seeded, evenly spaced subsample of the stored sample)."""
ROBUST_PERCENTILES = (1.0, 99.0)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def axis_title(metric: str) -> str:
    """'L0 (latents/token)': the metric's label and unit, escaped."""
    i = info(metric)
    return esc(f"{i.label} ({i.unit})" if i.unit else i.label)


def _layout(x_title: str, y_title: str, log_x: bool = False, log_y: bool = False, height: int = 380) -> Figure:
    return {
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        "height": height,
        "template": None,
        "hovermode": "closest",
        "xaxis": {"title": {"text": x_title}, "type": "log" if log_x else "-", "automargin": True},
        "yaxis": {"title": {"text": y_title}, "type": "log" if log_y else "-", "automargin": True},
        "legend": {"font": {"size": 11}},
    }


def r4(value: float) -> float | None:
    """JSON-safe and short: 4 significant digits; NaN/inf become null (plotly leaves a gap)."""
    v = float(value)
    return float(f"{v:.4g}") if math.isfinite(v) else None


def _floats(values: Sequence[float] | np.ndarray) -> list[float | None]:
    return [r4(v) for v in values]


def robust_range(values: Sequence[float], pad: float = 0.06) -> tuple[float, float] | None:
    """An axis range holding the bulk of the values: the whole range unless one end is far out (more than 3
    inter-quartile ranges past the quartile), which is then cut there."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 4:
        return None
    q1, q3 = np.percentile(v, [25, 75])
    iqr = max(q3 - q1, 1e-12)
    lo, hi = max(float(v.min()), q1 - 3 * iqr), min(float(v.max()), q3 + 3 * iqr)
    if lo == float(v.min()) and hi == float(v.max()):
        return None
    span = max(hi - lo, 1e-12)
    return lo - pad * span, hi + pad * span


def pareto_figure(
    families: Sequence[Family], y_metric: str, names: Mapping[str, str]
) -> tuple[Figure, list[str]] | None:
    """One line per family through its (seed-group mean) points, l0 on a log axis; `names` shortens family
    labels. Returns the figure and the points a robust y range leaves off-scale (for a note)."""
    traces: list[Trace] = []
    all_y: list[float] = []
    points: list[tuple[str, str, float, float]] = []
    for family in families:
        pts = sorted(
            (p.metrics["l0"], p.metrics[y_metric], p.name, _half_width(p, y_metric))
            for p in family.points
            if "l0" in p.metrics and y_metric in p.metrics and p.metrics["l0"] > 0
        )
        if not pts:
            continue
        # 95% error bars (token and seed noise, evalkit.core.uncertainty) where the point has an uncertainty.
        bars = {"error_y": {"type": "data", "array": _floats([p[3] for p in pts]), "visible": True}}
        name = names.get(family.label, family.label)
        all_y += [p[1] for p in pts]
        points += [(name, p[2], p[0], p[1]) for p in pts]
        traces.append(
            ({} if all(math.isnan(p[3]) for p in pts) else bars)
            | {
                "type": "scatter",
                "mode": "lines+markers",
                "name": esc(name),
                "x": _floats([p[0] for p in pts]),
                "y": _floats([p[1] for p in pts]),
                "text": [esc(p[2]) for p in pts],
                "hovertemplate": "%{text}<br>l0=%{x:.4g}<br>" + y_metric + "=%{y:.4g}<extra></extra>",
            }
        )
    if not traces:
        return None
    layout = _layout(axis_title("l0"), axis_title(y_metric), log_x=True, height=max(380, 120 + 26 * len(traces)))
    off_scale: list[str] = []
    yr = robust_range(all_y)
    if yr is not None:
        layout["yaxis"]["range"] = [r4(yr[0]), r4(yr[1])]  # type: ignore[index]
        off_scale = [f"{name} {sae} ({y_metric} {y:.4g})" for name, sae, _, y in points if not yr[0] <= y <= yr[1]]
    return {"data": traces, "layout": layout}, off_scale


def robust_edges(arrays: Sequence[np.ndarray], n_bins: int = 40) -> np.ndarray:
    """Bin edges over the 1st–99th percentile of the finite values (values outside go into the end bins)."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return np.linspace(0.0, 1.0, n_bins + 1)
    both = np.concatenate(finite)
    lo, hi = (float(x) for x in np.percentile(both, ROBUST_PERCENTILES))
    if not hi > lo:
        lo, hi = float(both.min()), float(both.max())
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _half_width(point: FamilyPoint, metric: str) -> float:
    """Half the 95% interval of a point's metric; NaN when it has no uncertainty estimate."""
    est = point.estimates.get(metric)
    if est is None or (est.token_se is None and est.seed_se is None):
        return math.nan
    low, high = interval(est)
    return (high - low) / 2


def binned_bar(values: np.ndarray, edges: np.ndarray, name: str) -> Trace:
    """A histogram pre-binned in Python (the page carries bin counts, not every latent's value); values beyond
    the edges are counted in the end bins."""
    v = np.clip(values[np.isfinite(values)], edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    centers = (edges[:-1] + edges[1:]) / 2
    return {
        "type": "bar",
        "name": esc(name),
        "x": _floats(centers),
        "y": [int(c) for c in counts],
        "width": _floats(np.diff(edges)),
        "opacity": 0.75,
    }


def spread(values: np.ndarray) -> float:
    """How much a distribution has to show: the 5th–95th percentile width (0 for float noise around a value)."""
    v = values[np.isfinite(values)]
    if v.size < 2:
        return 0.0
    lo, hi = np.percentile(v, [5, 95])
    return float(hi - lo)


def selector_figure(
    per_sae: Mapping[str, list[Trace]], x_title: str, y_title: str, initial: int = 0, barmode: str = "overlay"
) -> Figure | None:
    """All SAEs' traces in one figure; each trace's `meta` is its SAE's index, and the page's selector shows one
    SAE at a time (`initial` first)."""
    if not per_sae:
        return None
    data: list[Trace] = []
    for i, traces in enumerate(per_sae.values()):
        data += [trace | {"visible": i == initial, "meta": i} for trace in traces]
    layout = _layout(x_title, y_title) | {"barmode": barmode}
    return {"data": data, "layout": layout}


def hbars(
    categories: Sequence[str], series: Mapping[str, Sequence[float]], x_title: str, log_x: bool = False
) -> Figure | None:
    """Horizontal grouped bars, one row per category (an SAE): long names sit in the automatic left margin,
    never truncated or rotated into the next plot."""
    if not categories or not series:
        return None
    data: list[Trace] = [
        {"type": "bar", "orientation": "h", "name": esc(name), "y": [esc(c) for c in categories], "x": _floats(v)}
        for name, v in series.items()
    ]
    height = 80 + len(categories) * max(14, 8 * len(series))
    layout = _layout(x_title, "", log_x=log_x, height=height) | {"barmode": "group", "bargap": 0.25}
    layout["yaxis"] = {"type": "category", "automargin": True, "autorange": "reversed", "tickfont": {"size": 11}}
    return {"data": data, "layout": layout}


def scores_figure(
    categories: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], chance: float
) -> Figure | None:
    """Autointerp scores per SAE: mean bars with std error bars per (scorer, model), and the chance line."""
    means = {name: m for name, (m, _) in series.items()}
    fig = hbars(categories, means, "score (mean ± std over latents)")
    if fig is None:
        return None
    for trace, (_, stds) in zip(fig["data"], series.values(), strict=True):  # type: ignore[arg-type]
        trace["error_x"] = {"type": "data", "array": _floats(stds), "visible": True}
    fig["layout"]["shapes"] = [  # type: ignore[index]
        {"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": chance, "x1": chance, "line": {"dash": "dot"}}
    ]
    return fig


def afa_scatter_traces(z_norm: np.ndarray, ftilde_norm: np.ndarray, eps: float, h: int) -> list[Trace]:
    """‖z‖ vs ‖f̃‖ (at most MAX_POINTS tokens, evenly spaced through the stored sample) with AFA's bounds
    ‖f̃‖ = ‖z‖/√(1 ± ε(h−1)) at the stored ε (p90 of ε_LBO), and ‖f̃‖ = ‖z‖."""
    step = max(1, math.ceil(len(z_norm) / MAX_POINTS))
    traces: list[Trace] = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "tokens",
            "x": _floats(z_norm[::step]),
            "y": _floats(ftilde_norm[::step]),
            "marker": {"size": 4, "opacity": 0.5},
        }
    ]
    finite = z_norm[np.isfinite(z_norm)]
    if not finite.size:
        return traces
    xs = [0.0, float(finite.max())]
    slopes = {"‖f̃‖ = ‖z‖": 1.0}
    if math.isfinite(eps) and h > 1:
        slopes[f"lower bound, ε={eps:.3g}"] = 1.0 / math.sqrt(1.0 + eps * (h - 1))
        if eps * (h - 1) < 1.0:  # the upper bound is infinite once ε(h−1) ≥ 1
            slopes[f"upper bound, ε={eps:.3g}"] = 1.0 / math.sqrt(1.0 - eps * (h - 1))
    for name, slope in slopes.items():
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": name,
                "x": _floats(xs),
                "y": _floats([x * slope for x in xs]),
                "line": {"dash": "dash" if "bound" in name else "solid", "width": 1},
            }
        )
    return traces
