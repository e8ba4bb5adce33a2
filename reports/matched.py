"""Matched reconstruction (docs/metrics.md): compare SAE families at equal reconstruction, never at equal
hyperparameters.

The one computation reports do: linear interpolation of stored SAE-level metrics between the two SAEs (or
seed-group means) of a family that bracket a target level of the matching metric. Never extrapolated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.core.errors import EvalkitInputError
from evalkit.core.io import atomic_write_text
from evalkit.core.registry import Registry
from evalkit.core.uncertainty import Estimate, interpolate
from reports.load import RunTables

log = logging.getLogger(__name__)

MATCHED_COLUMNS = (
    "match_by",
    "target",
    "family",
    "architecture",
    "metric",
    "value",
    "lower_sae",
    "upper_sae",
    "weight",
    "stderr",
    "seed_std",
    "seed_n",
)
OUT_OF_RANGE = "out of range"
DEFAULT_N_TARGETS = 5


@dataclass(frozen=True)
class MatchAxis:
    """A matching metric and the coordinate interpolation happens in (log for l0: its sweep is geometric)."""

    metric: str
    log_scale: bool = False

    def coord(self, value: float) -> float:
        if not self.log_scale:
            return value
        return math.log(value) if value > 0 else math.nan


MATCH_AXES: Registry[MatchAxis] = Registry("matching metric")
for _axis in (
    MatchAxis("fvu"),
    MatchAxis("mse"),
    MatchAxis("ce_loss_score"),
    MatchAxis("l0", log_scale=True),
):
    MATCH_AXES.add(_axis.metric, _axis)


@dataclass(frozen=True)
class FamilyPoint:
    """One point of a family's sweep: an SAE, or a seed group's mean (name joins its members with '+')."""

    name: str
    metrics: dict[str, float]
    estimates: dict[str, Estimate] = field(default_factory=dict)
    """Each metric with its token-level error and the group's seed spread (evalkit.core.uncertainty)."""


@dataclass(frozen=True)
class Family:
    label: str
    architecture: str
    points: tuple[FamilyPoint, ...]


@dataclass(frozen=True)
class Bracket:
    """value = (1 - weight) * lower + weight * upper, weight measured in the axis' coordinate."""

    lower: FamilyPoint
    upper: FamilyPoint
    weight: float


def _group_point(members: pd.DataFrame, stderr: pd.DataFrame, token_df: float) -> FamilyPoint:
    """Mean over the seed group's members of every metric at least one member has, with its uncertainty."""
    means = members.mean(axis=0, skipna=True).dropna()
    estimates = {}
    for metric in means.index:
        values = members[metric].dropna()
        ses = stderr[metric].reindex(values.index) if metric in stderr.columns else pd.Series(dtype=float)
        estimates[str(metric)] = Estimate.of_group(
            values.tolist(), [None if pd.isna(v) else float(v) for v in ses], token_df
        )
    return FamilyPoint(
        name="+".join(sorted(members.index.astype(str))),
        metrics={k: float(v) for k, v in means.items()},
        estimates=estimates,
    )


def _token_df(tables: RunTables) -> float:
    """Degrees of freedom of the jackknife errors: blocks − 1 (run.json's stderr_blocks; the smallest over runs)."""
    blocks = []
    for info in tables.run_info:
        config = info.get("config")
        k = config.get("stderr_blocks") if isinstance(config, dict) else None
        if isinstance(k, int) and k >= 2:
            blocks.append(k)
    return float(min(blocks) - 1) if blocks else math.inf


def build_families(tables: RunTables) -> list[Family]:
    """Families (one per family_label) of seed-group points, from the SAE-level metrics."""
    saes, metrics = tables.saes, tables.sae_metrics
    stderr = tables.sae_stderr if tables.sae_stderr is not None else pd.DataFrame(index=metrics.index)
    token_df = _token_df(tables)
    families = []
    for label, fam_saes in saes.groupby("family_label", sort=True):
        points = [
            _group_point(metrics.reindex(group.index), stderr.reindex(group.index), token_df)
            for _, group in fam_saes.groupby("seed_group", sort=True)
        ]
        arch = fam_saes["architecture"].dropna().astype(str)
        families.append(Family(str(label), arch.iloc[0] if len(arch) else "", tuple(points)))
    return families


def _usable_points(family: Family, axis: MatchAxis) -> list[tuple[float, FamilyPoint]]:
    """(coordinate, point) sorted by the matching metric; points without a usable value are left out."""
    pairs = []
    for point in family.points:
        value = point.metrics.get(axis.metric, math.nan)
        c = axis.coord(value) if np.isfinite(value) else math.nan
        if np.isfinite(c):
            pairs.append((c, point))
        else:
            log.warning("matched: %s of %s is unusable for matching by %s", point.name, family.label, axis.metric)
    return sorted(pairs, key=lambda cp: cp[0])


def find_bracket(pairs: list[tuple[float, FamilyPoint]], target_coord: float) -> Bracket | None:
    """The two consecutive points around target_coord, or None when it lies outside the family's range."""
    if not pairs or target_coord < pairs[0][0] or target_coord > pairs[-1][0]:
        return None
    for c, point in pairs:
        if c == target_coord:
            return Bracket(point, point, 0.0)
    for (c_lo, lo), (c_hi, hi) in zip(pairs, pairs[1:], strict=False):
        if c_lo < target_coord < c_hi:
            return Bracket(lo, hi, (target_coord - c_lo) / (c_hi - c_lo))
    return None


def _interpolate(bracket: Bracket, metric: str) -> float:
    lo, hi = bracket.lower.metrics.get(metric, math.nan), bracket.upper.metrics.get(metric, math.nan)
    if bracket.weight == 0.0:
        return lo
    return (1.0 - bracket.weight) * lo + bracket.weight * hi


def bracket_estimate(bracket: Bracket, metric: str) -> Estimate:
    """The interpolated value with its uncertainty: both brackets' errors, weighted (evalkit.core.uncertainty)."""
    nan = Estimate(math.nan)
    lo, hi = bracket.lower.estimates.get(metric, nan), bracket.upper.estimates.get(metric, nan)
    return interpolate(lo, hi, bracket.weight)


def family_brackets(families: Sequence[Family], axis: MatchAxis, target: float) -> dict[str, Bracket | None]:
    """Each family's bracket around `target` (None: out of range)."""
    return {f.label: find_bracket(_usable_points(f, axis), axis.coord(target)) for f in families}


def _family_metrics(family: Family, axis: MatchAxis) -> list[str]:
    names = {m for p in family.points for m in p.metrics}
    return sorted(names - {axis.metric})


def matched_table(families: Sequence[Family], axis: MatchAxis, targets: Sequence[float]) -> pd.DataFrame:
    """matched.csv's rows, one per (target, family, metric).

    Out of range: empty value and weight, both brackets 'out of range'.
    """
    rows = []
    for target in targets:
        for family in families:
            bracket = find_bracket(_usable_points(family, axis), axis.coord(target))
            for metric in _family_metrics(family, axis):
                base = {
                    "match_by": axis.metric,
                    "target": target,
                    "family": family.label,
                    "architecture": family.architecture,
                    "metric": metric,
                }
                if bracket is None:
                    rows.append(
                        base
                        | {
                            "value": math.nan,
                            "lower_sae": OUT_OF_RANGE,
                            "upper_sae": OUT_OF_RANGE,
                            "weight": math.nan,
                            "stderr": math.nan,
                            "seed_std": math.nan,
                            "seed_n": math.nan,
                        }
                    )
                else:
                    est = bracket_estimate(bracket, metric)
                    rows.append(
                        base
                        | {
                            "value": _interpolate(bracket, metric),
                            "lower_sae": bracket.lower.name,
                            "upper_sae": bracket.upper.name,
                            "weight": bracket.weight,
                            "stderr": math.nan if est.token_se is None else est.token_se,
                            "seed_std": math.nan if est.seed_std is None else est.seed_std,
                            "seed_n": est.seed_n,
                        }
                    )
    return pd.DataFrame(rows, columns=list(MATCHED_COLUMNS))


def _overlap_range(ranges: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Lowest and highest coordinate covered by at least two of the ranges."""
    covered = [
        (max(a[0], b[0]), min(a[1], b[1]))
        for i, a in enumerate(ranges)
        for b in ranges[i + 1 :]
        if max(a[0], b[0]) <= min(a[1], b[1])
    ]
    if not covered:
        return None
    return min(lo for lo, _ in covered), max(hi for _, hi in covered)


def default_targets(families: Sequence[Family], axis: MatchAxis, n: int = DEFAULT_N_TARGETS) -> list[float]:
    """n levels spread evenly (in the axis' coordinate) over the range at least two families cover.

    With fewer than two overlapping families, the range of any family is used instead so a one-family run
    still gets a table; the targets then sit inside that family's range only.
    """
    ranges = []
    for family in families:
        pairs = _usable_points(family, axis)
        if pairs:
            ranges.append((pairs[0][0], pairs[-1][0]))
    if not ranges:
        return []
    span = _overlap_range(ranges)
    if span is None:
        log.info("matched: no range of %s is covered by two families; targets span all families", axis.metric)
        span = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    lo, hi = span
    coords = [lo] if lo == hi else [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    coords[-1] = hi  # exact endpoint, so the family that ends there still brackets it
    return [_from_coord(axis, c) for c in coords]


def _from_coord(axis: MatchAxis, coord: float) -> float:
    return math.exp(coord) if axis.log_scale else coord


def parse_targets(text: str | None) -> list[float] | None:
    """`--at 0.1,0.2` -> [0.1, 0.2]; None when not given."""
    if text is None or not text.strip():
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise EvalkitInputError("--at", f"expected comma-separated numbers, got {text!r}") from exc


def compute_matched(tables: RunTables, by: str = "fvu", targets: Sequence[float] | None = None) -> pd.DataFrame:
    axis = MATCH_AXES.get(by, where="--by")
    families = build_families(tables)
    chosen = list(targets) if targets is not None else default_targets(families, axis)
    if axis.log_scale and any(t <= 0 for t in chosen):
        raise EvalkitInputError("--at", f"targets for {by} must be positive (it is matched in log scale)")
    return matched_table(families, axis, chosen)


def write_matched(matched: pd.DataFrame, out_dir: Path) -> Path:
    path = out_dir / "matched.csv"
    atomic_write_text(path, matched.to_csv(index=False))
    return path
