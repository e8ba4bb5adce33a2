"""Plotly figures as plain dicts (data + layout), built from stored results; plotly.js draws them.

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

Trace = dict[str, object]
Figure = dict[str, object]

_BASE_LAYOUT: dict[str, object] = {
    "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
    "height": 420,
    "template": None,
    "hovermode": "closest",
}


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _layout(title: str, x_title: str, y_title: str, log_x: bool = False, log_y: bool = False) -> dict[str, object]:
    return _BASE_LAYOUT | {
        "title": {"text": esc(title)},
        # "-" lets plotly infer the axis type; SAE-id axes are set to "category" by their builders.
        "xaxis": {"title": {"text": x_title}, "type": "log" if log_x else "-"},
        "yaxis": {"title": {"text": y_title}, "type": "log" if log_y else "-"},
    }


def _floats(values: Sequence[float] | np.ndarray) -> list[float | None]:
    """JSON-safe list: NaN/inf become null (plotly leaves a gap)."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def pareto_figure(families: Sequence[Family], x_metric: str, y_metric: str, log_x: bool) -> Figure | None:
    """One line per family through its (seed-group mean) points, ordered by x."""
    traces: list[Trace] = []
    for family in families:
        pts = [
            (p.metrics[x_metric], p.metrics[y_metric], p.name, _half_width(p, y_metric))
            for p in family.points
            if x_metric in p.metrics and y_metric in p.metrics and (p.metrics[x_metric] > 0 or not log_x)
        ]
        if not pts:
            continue
        pts.sort(key=lambda t: t[0])
        # 95% error bars (token and seed noise, evalkit.core.uncertainty) where the point has an uncertainty.
        bars = {"error_y": {"type": "data", "array": _floats([p[3] for p in pts]), "visible": True}}
        traces.append(
            ({} if all(math.isnan(p[3]) for p in pts) else bars)
            | {
                "type": "scatter",
                "mode": "lines+markers",
                "name": esc(family.label),
                "x": _floats([p[0] for p in pts]),
                "y": _floats([p[1] for p in pts]),
                "text": [esc(p[2]) for p in pts],
                "hovertemplate": "%{text}<br>" + x_metric + "=%{x:.4g}<br>" + y_metric + "=%{y:.4g}<extra></extra>",
            }
        )
    if not traces:
        return None
    return {"data": traces, "layout": _layout(f"{y_metric} vs {x_metric}", x_metric, y_metric, log_x=log_x)}


def _half_width(point: FamilyPoint, metric: str) -> float:
    """Half the 95% interval of a point's metric; NaN when it has no uncertainty estimate."""
    est = point.estimates.get(metric)
    if est is None or (est.token_se is None and est.seed_se is None):
        return math.nan
    low, high = interval(est)
    return (high - low) / 2


def binned_bar(values: np.ndarray, edges: np.ndarray, name: str) -> Trace:
    """A histogram pre-binned in Python so the page carries bin counts, not every latent's value."""
    counts, _ = np.histogram(values, bins=edges)
    centers = (edges[:-1] + edges[1:]) / 2
    return {
        "type": "bar",
        "name": esc(name),
        "x": _floats(centers),
        "y": [int(c) for c in counts],
        "width": _floats(np.diff(edges)),
        "opacity": 0.7,
    }


def shared_edges(arrays: Sequence[np.ndarray], n_bins: int = 40) -> np.ndarray:
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return np.linspace(0.0, 1.0, n_bins + 1)
    lo, hi = min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def selector_figure(
    per_sae: Mapping[str, list[Trace]], title: str, x_title: str, y_title: str, barmode: str = "overlay"
) -> Figure | None:
    """All SAEs' traces in one figure with a dropdown choosing which SAE is shown (first one initially)."""
    if not per_sae:
        return None
    data: list[Trace] = []
    owners: list[int] = []
    for i, traces in enumerate(per_sae.values()):
        for trace in traces:
            data.append(trace | {"visible": i == 0})
            owners.append(i)
    buttons = [
        {
            "label": esc(sae_id),
            "method": "update",
            "args": [
                {"visible": [owner == i for owner in owners]},
                {"title.text": esc(f"{title}: {sae_id}")},
            ],
        }
        for i, sae_id in enumerate(per_sae)
    ]
    first = next(iter(per_sae))
    layout = _layout(f"{title}: {first}", x_title, y_title) | {
        "barmode": barmode,
        "updatemenus": [{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.18, "yanchor": "top"}],
    }
    return {"data": data, "layout": layout}


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    y_title: str,
    log_y: bool = False,
) -> Figure | None:
    """One bar group per category (usually an SAE), one colour per series (usually a metric)."""
    if not categories or not series:
        return None
    data: list[Trace] = [
        {"type": "bar", "name": esc(name), "x": [esc(c) for c in categories], "y": _floats(values)}
        for name, values in series.items()
    ]
    layout = _layout(title, "", y_title, log_y=log_y) | {"barmode": "group"}
    layout["xaxis"] = {"type": "category"}  # an sae_id like "12" must stay a label, not a number
    return {"data": data, "layout": layout}


def scores_figure(
    categories: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], chance: float
) -> Figure | None:
    """Autointerp scores per SAE: mean bars with std error bars per (scorer, model), and the chance line."""
    if not categories or not series:
        return None
    data: list[Trace] = [
        {
            "type": "bar",
            "name": esc(name),
            "x": [esc(c) for c in categories],
            "y": _floats(means),
            "error_y": {"type": "data", "array": _floats(stds), "visible": True},
        }
        for name, (means, stds) in series.items()
    ]
    layout = _layout("autointerp scores (mean ± std over latents)", "", "score") | {
        "barmode": "group",
        "xaxis": {"type": "category"},
        "shapes": [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": chance,
                "y1": chance,
                "line": {"dash": "dot", "width": 1},
            }
        ],
    }
    return {"data": data, "layout": layout}


def afa_scatter_traces(z_norm: np.ndarray, ftilde_norm: np.ndarray, eps: float, h: int) -> list[Trace]:
    """‖z‖ vs ‖f̃‖ with AFA's bounds ‖f̃‖ = ‖z‖/√(1 ± ε(h−1)) at the stored ε (p90 of ε_LBO), and ‖f̃‖ = ‖z‖."""
    traces: list[Trace] = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "tokens",
            "x": _floats(z_norm),
            "y": _floats(ftilde_norm),
            "marker": {"size": 3, "opacity": 0.5},
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
                "x": xs,
                "y": [x * slope for x in xs],
                "line": {"dash": "dash" if "bound" in name else "solid", "width": 1},
            }
        )
    return traces
