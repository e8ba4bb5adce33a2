"""The report's first screen: which SAE family is best, at matched reconstruction, on what.

Families × headline metrics at one target of the matching metric (the target where most families are in range;
the other targets one selector away), each column with its direction arrow and unit, 4 significant digits, the
best value of each column marked. Values are matched.csv's (interpolated between the two SAEs of a family that
bracket the target, never extrapolated); nothing is computed here. With no matched comparison possible (e.g. one
SAE), the same table per SAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.matched import OUT_OF_RANGE
from reports.metric_info import info
from reports.views import Section, table_view

LEADERBOARD_METRICS = (
    "l0",
    "fvu",
    "ce_loss_score",
    "kl_div_score",
    "frac_alive",
    "dense_features",
    "norm_detectors",
    "fvu_norm_q4",
    "decoder_duplicate_pairs",
    "afa_eps_lbo_median",
    "seed_stability_mmcs",
    "concept_aligned_frac",
    "probe_accuracy_k1",
    "autointerp_detection_balanced_accuracy",
)


@dataclass(frozen=True)
class Board:
    """What the first screen needs from the run: SAE-level values, family names, the matched table."""

    matched: pd.DataFrame
    match_by: str
    names: dict[str, str]
    """Family label -> short display name."""
    sae_metrics: pd.DataFrame


def best_target(matched: pd.DataFrame) -> float | None:
    """The target at which most families are in range (ties: the middle one of the tied targets)."""
    if matched.empty:
        return None
    in_range = matched[matched["lower_sae"] != OUT_OF_RANGE].groupby("target")["family"].nunique()
    if in_range.empty:
        return None
    tied = sorted(in_range[in_range == in_range.max()].index)
    return float(tied[len(tied) // 2])


def _subheader(metric: str) -> str:
    i = info(metric)
    return " ".join(x for x in (i.arrow, i.unit) if x)


def _marks(rows: list[list[object]], metrics: list[str], first_metric_col: int) -> list[list[str]]:
    """'best' on each column's best value (by the metric's direction); nothing for metrics without one."""
    marks = [["" for _ in row] for row in rows]
    for j, metric in enumerate(metrics):
        better = info(metric).better
        col = first_metric_col + j
        values = [(float(r[col]), i) for i, r in enumerate(rows) if isinstance(r[col], float) and math.isfinite(r[col])]
        if not better or len(values) < 2 or len({v for v, _ in values}) == 1:
            continue  # no direction, or nothing to choose between
        target = max(values)[0] if better == "higher" else min(values)[0]
        for v, i in values:
            if v == target:
                marks[i][col] = "best"
    return marks


def _target_table(board: Board, target: float, metrics: list[str]) -> tuple[list[list[object]], list[str]]:
    at = board.matched[board.matched["target"] == target]
    rows, out_of_range = [], []
    for family, fam in at.groupby("family", sort=True):
        values = fam.set_index("metric")
        first = values.iloc[0]
        name = board.names.get(str(family), str(family))
        if first["lower_sae"] == OUT_OF_RANGE:
            out_of_range.append(name)
            continue
        cells = [float(values.loc[m, "value"]) if m in values.index else math.nan for m in metrics]
        rows.append([name, *cells])
    return rows, out_of_range


def _matched_metrics(board: Board) -> list[str]:
    present = set(board.matched["metric"])
    return [m for m in LEADERBOARD_METRICS if m in present and m != board.match_by]


def leaderboard_section(board: Board) -> Section:
    target = best_target(board.matched)
    if target is None:
        return _per_sae_board(board)
    label = info(board.match_by).label
    section = Section(
        "leaderboard",
        "Leaderboard at matched reconstruction",
        f"Each SAE family at the same {label}, its other metrics interpolated between the two SAEs of the family "
        f"that bracket it (never extrapolated); ↑/↓ says which direction is better, ★ marks each column's best. "
        "The bracketing SAEs and every target are in the matched-reconstruction section and matched.csv.",
    )
    section.switch_label = f"{label} ="
    metrics = _matched_metrics(board)
    targets = sorted(set(board.matched["target"]))
    # the most informative target first, then the rest in order
    for t in [target, *[x for x in targets if x != target]]:
        rows, out_of_range = _target_table(board, t, metrics)
        caption = f"{label} = {t:.4g}: {len(rows)} famil{'y' if len(rows) == 1 else 'ies'} in range"
        if out_of_range:
            caption += f"; out of range: {', '.join(out_of_range)}"
        headers = ["family", *[info(m).label for m in metrics]]
        subheaders = ["", *[_subheader(m) for m in metrics]]
        section.tables.append(
            table_view(
                headers,
                rows,
                caption,
                sortable=True,
                css_id="leaderboard-table" if t == target else "",
                subheaders=subheaders,
                marks=_marks(rows, metrics, 1),
                choice=f"{t:.4g}",
            )
        )
    return section


def _per_sae_board(board: Board) -> Section:
    section = Section(
        "leaderboard",
        "Leaderboard",
        "No matched comparison is possible here (it needs a family with SAEs on both sides of a common "
        f"{info(board.match_by).label}), so each SAE is shown as measured. ↑/↓ says which direction is better; "
        "★ marks each column's best.",
    )
    m = board.sae_metrics
    metrics = [x for x in LEADERBOARD_METRICS if x in m.columns]
    rows: list[list[object]] = [[str(s), *[float(m.loc[s, x]) for x in metrics]] for s in sorted(m.index)]
    section.tables.append(
        table_view(
            ["SAE", *[info(x).label for x in metrics]],
            rows,
            sortable=True,
            css_id="leaderboard-table",
            subheaders=["", *[_subheader(x) for x in metrics]],
            marks=_marks(rows, metrics, 1),
        )
    )
    return section


def short_family_names(labels: list[str]) -> dict[str, str]:
    """Family labels like `batchtopk|blocks.3.hook_resid_post|1536` without the parts every family shares
    (`batchtopk` when all share the hook and width); labels stay distinct."""
    split = {label: label.split("|") for label in labels}
    width = max((len(p) for p in split.values()), default=0)
    varying = [k for k in range(width) if len({p[k] if k < len(p) else "" for p in split.values()}) > 1 or k == 0]
    short = {label: "|".join(p[k] for k in varying if k < len(p)) for label, p in split.items()}
    return short if len(set(short.values())) == len(short) else {label: label for label in labels}
