"""Pairwise family differences at matched reconstruction, each with a 95% interval (docs/uncertainty.md).

At every target level and for every metric, each pair of families that both bracket the target gets
a − b = interpolated(a) − interpolated(b), with an interval that combines both sides' token-level errors and
seed spreads (`evalkit.core.uncertainty.difference_of_parts`). An interval containing 0 reads "within noise".
Written as `matched_differences.csv` next to matched.csv; the report shows the headline metrics, and the
seed-claims verdicts (reports.claims) are built from the same pieces (`combine_points`, `compare`).

Seed spread: a family's seed-to-seed standard deviation is pooled over its seed groups (≥ 2 SAEs), and applies
to every point of the family — sd/√n for a group of n, sd for a single SAE (whose own seed noise cannot be seen
but is there all the same). A family without seed groups borrows the other side's spread (one shared variance
estimate, so one part of the Welch sum); with no seed group on either side the interval holds token noise only
and says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.core.uncertainty import WITHIN_NOISE, Difference, difference_of_parts
from reports.load import RunTables
from reports.matched import MATCH_AXES, Bracket, Family, FamilyPoint, MatchAxis, build_families, family_brackets

DIFFERENCE_COLUMNS = (
    "match_by",
    "target",
    "metric",
    "family_a",
    "family_b",
    "difference",
    "stderr",
    "df",
    "ci_low",
    "ci_high",
    "verdict",
    "seed_spread",
)
DIFFERS = "differs"
SEED_KNOWN = "included"
SEED_BORROWED = "included (one family's spread, borrowed by the other)"
SEED_UNKNOWN = "not included (no seed group in either family)"


@dataclass(frozen=True)
class SeedSpread:
    """A family's seed-to-seed standard deviation of one SAE's metric, pooled over its seed groups."""

    sd: float
    df: float
    n_saes: int


def family_seed_spread(family: Family, metric: str) -> SeedSpread | None:
    """Pooled over the family's seed groups of ≥ 2 SAEs: √(Σ (n_g − 1)·s_g² / Σ (n_g − 1)); None without one."""
    groups = [
        (p.estimates[metric].seed_n, p.estimates[metric].seed_std)
        for p in family.points
        if metric in p.estimates and p.estimates[metric].seed_n >= 2 and p.estimates[metric].seed_std is not None
    ]
    df = sum(n - 1 for n, _ in groups)
    if df <= 0:
        return None
    pooled = sum((n - 1) * float(sd) ** 2 for n, sd in groups) / df
    return SeedSpread(math.sqrt(pooled), float(df), sum(n for n, _ in groups))


@dataclass(frozen=True)
class Combination:
    """Σ c_i·v_i over a family's points (an interpolation, or a mean over match points), with its noise."""

    value: float
    token_parts: tuple[tuple[float, float], ...]
    """(c_i²·token_se_i², token df) per point with token noise."""
    seed_factor: float
    """Σ c_i²/n_i: the combination's seed variance is sd²·seed_factor (n_i = SAEs averaged at point i)."""


def combine_points(terms: Sequence[tuple[float, FamilyPoint]], metric: str) -> Combination | None:
    """Σ c·point[metric]; the same point listed twice counts once with the summed coefficient (its noise is one).
    None when a point with a nonzero coefficient lacks the metric."""
    coefs: dict[str, tuple[float, FamilyPoint]] = {}
    for c, point in terms:
        coefs[point.name] = (coefs.get(point.name, (0.0, point))[0] + c, point)
    value, token_parts, seed_factor = 0.0, [], 0.0
    for c, point in coefs.values():
        if c == 0.0:
            continue
        est = point.estimates.get(metric)
        if est is None or not math.isfinite(est.value):
            return None
        value += c * est.value
        if est.token_se is not None and math.isfinite(est.token_se):
            token_parts.append((c * c * est.token_se**2, est.token_df))
        seed_factor += c * c / max(est.seed_n, 1)
    return Combination(value, tuple(token_parts), seed_factor)


def bracket_terms(bracket: Bracket) -> list[tuple[float, FamilyPoint]]:
    """(1 − w)·lower + w·upper as combination terms."""
    return [(1.0 - bracket.weight, bracket.lower), (bracket.weight, bracket.upper)]


def compare(
    a: Combination, b: Combination, spread_a: SeedSpread | None, spread_b: SeedSpread | None
) -> tuple[Difference, str]:
    """a − b with its 95% interval, and how the seed spread entered (SEED_KNOWN, SEED_BORROWED, SEED_UNKNOWN)."""
    parts = [*a.token_parts, *b.token_parts]
    if spread_a is not None and spread_b is not None:
        parts += [(spread_a.sd**2 * a.seed_factor, spread_a.df), (spread_b.sd**2 * b.seed_factor, spread_b.df)]
        how = SEED_KNOWN
    elif spread_a is not None or spread_b is not None:
        shared = spread_a or spread_b
        assert shared is not None
        parts.append((shared.sd**2 * (a.seed_factor + b.seed_factor), shared.df))  # one estimate: one part
        how = SEED_BORROWED
    else:
        how = SEED_UNKNOWN
    return difference_of_parts(a.value - b.value, parts, seed_spread_known=how != SEED_UNKNOWN), how


def matched_differences(
    families: Sequence[Family], axis: MatchAxis, targets: Sequence[float], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per (target, metric, pair of in-range families); a − b with its 95% interval."""
    rows = []
    for target in targets:
        brackets = family_brackets(families, axis, target)
        in_range = [f for f in families if brackets[f.label] is not None]
        for fam_a, fam_b in itertools.combinations(in_range, 2):
            br_a, br_b = brackets[fam_a.label], brackets[fam_b.label]
            assert br_a is not None and br_b is not None
            shared = sorted(_metrics_of(fam_a) & _metrics_of(fam_b) - {axis.metric})
            for metric in shared if metrics is None else [m for m in metrics if m in shared]:
                a, b = combine_points(bracket_terms(br_a), metric), combine_points(bracket_terms(br_b), metric)
                if a is None or b is None:
                    continue
                spreads = family_seed_spread(fam_a, metric), family_seed_spread(fam_b, metric)
                d, how = compare(a, b, *spreads)
                has_noise = d.stderr > 0
                rows.append(
                    {
                        "match_by": axis.metric,
                        "target": target,
                        "metric": metric,
                        "family_a": fam_a.label,
                        "family_b": fam_b.label,
                        "difference": d.value,
                        "stderr": d.stderr if has_noise else math.nan,
                        "df": d.df if has_noise else math.nan,
                        "ci_low": d.low if has_noise else math.nan,
                        "ci_high": d.high if has_noise else math.nan,
                        "verdict": (WITHIN_NOISE if d.within_noise else DIFFERS) if has_noise else "",
                        "seed_spread": how,
                    }
                )
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def compute_differences(tables: RunTables, matched: pd.DataFrame, by: str = "fvu") -> pd.DataFrame:
    """The differences at the targets matched.csv was computed for."""
    targets = list(dict.fromkeys(matched["target"].tolist())) if not matched.empty else []
    return matched_differences(build_families(tables), MATCH_AXES.get(by, where="--by"), targets)


def _metrics_of(family: Family) -> set[str]:
    return {m for p in family.points for m in p.metrics}


def write_differences(table: pd.DataFrame, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "matched_differences.csv"
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path
