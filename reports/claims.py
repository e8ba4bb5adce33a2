"""The seed papers' claims, put to the numbers of a run: each claim compares two families on one metric, at
matched reconstruction (or matched l0, or between seed groups), and gets a verdict computed from the numbers.

The comparison: the claimed family's value minus the baseline's, averaged over the match points where both
families are in range, with the 95% interval of the matched comparisons (reports.differences,
docs/uncertainty.md): each family's mean over the match points is a weighted sum of its sweep's points (the
brackets' interpolation weights, averaged), so its token-level variance is Σ c²·se² over those points and its seed
variance sd²·Σ c²/n, sd the family's seed spread pooled over its seed groups (a family without seed groups
borrows the other's, and the table says so). The interval is Student's t with Welch–Satterthwaite degrees of
freedom (evalkit.core.uncertainty). Verdict: "inside the noise" when the interval contains 0; otherwise "holds"
when the difference points the way the paper claims, else "does not hold". No match point in range, or no seed
group in either family, reads "not testable" with the reason.
Nothing here is written by hand: the claims say which way is better, the numbers decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from evalkit.core.uncertainty import LEVEL, Difference
from reports.differences import (
    SEED_BORROWED,
    SEED_UNKNOWN,
    Combination,
    SeedSpread,
    bracket_terms,
    combine_points,
    compare,
    family_seed_spread,
)
from reports.load import RunTables
from reports.matched import MATCH_AXES, Family, FamilyPoint, build_families, default_targets, family_brackets
from reports.views import Section, table_view

if TYPE_CHECKING:
    from reports.sections import ReportData

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INSIDE = "inside the noise"
NOT_TESTABLE = "not testable"


@dataclass(frozen=True)
class Claim:
    """One seed-paper claim: `family` beats `baseline` on `metric` (`better`: "higher" or "lower") when both
    are compared `at` matched fvu ("fvu"), at the claimed family's own l0 values ("l0": equal k for top-k
    SAEs, which fire exactly k latents), or between their seed groups ("seed_group")."""

    claim_id: str
    paper: str
    statement: str
    family: str
    baseline: str
    metric: str
    better: str
    at: str


CLAIMS: tuple[Claim, ...] = (
    Claim("1a", "cosine (seeds 000/001)", "cosine latents probe concepts better (single-latent top-1 accuracy)",
          "cosine", "standard", "probe_accuracy_k1", "higher", "fvu"),
    Claim("1b", "cosine (seeds 000/001)", "cosine wastes fewer latents on norm detectors",
          "cosine", "standard", "norm_detectors", "lower", "fvu"),
    Claim("1c", "cosine (seeds 000/001)", "cosine reconstructs the largest-norm quartile better",
          "cosine", "standard", "fvu_norm_q4", "lower", "fvu"),
    Claim("2a", "aligned training (seed 002)", "aligned training leaves fewer dead latents (at equal k)",
          "topk+aligned", "topk", "dead_features", "lower", "l0"),
    Claim("2b", "aligned training (seed 002)", "aligned training is more stable across seeds",
          "topk+aligned", "topk", "seed_stability_matched_cos", "higher", "seed_group"),
    Claim("2c", "aligned training (seed 002)", "aligned training reconstructs better at equal k",
          "topk+aligned", "topk", "fvu", "lower", "l0"),
    Claim("3a", "top-AFA (seed 003)", "top-AFA keeps the AFA bound tighter (median ε_LBO)",
          "topafa", "topk", "afa_eps_lbo_median", "lower", "fvu"),
    Claim("3b", "top-AFA (seed 003)", "top-AFA adapts the number of active latents per token (l0 spread)",
          "topafa", "topk", "l0_std", "higher", "fvu"),
    Claim("3c", "top-AFA (seed 003)", "top-AFA reconstructs at least as well as TopK at matched l0",
          "topafa", "topk", "fvu", "lower", "l0"),
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    verdict: str
    difference: float
    ci_low: float
    ci_high: float


def verdict(difference: float, ci_low: float, ci_high: float, better: str) -> Verdict:
    """The verdict for a claimed family's value minus the baseline's and its 95% interval (module docstring)."""
    if not all(math.isfinite(v) for v in (difference, ci_low, ci_high)):
        return Verdict(NOT_TESTABLE, difference, ci_low, ci_high)
    if ci_low <= 0.0 <= ci_high:
        return Verdict(INSIDE, difference, ci_low, ci_high)
    toward_claim = difference > 0 if better == "higher" else difference < 0
    return Verdict(HOLDS if toward_claim else DOES_NOT_HOLD, difference, ci_low, ci_high)


def family_named(families: Sequence[Family], name: str) -> Family | None:
    """The family whose label starts with `name|` (evalkit labels are `{architecture}[+flag]|{hook}|{d_sae}`),
    or is `name`."""
    found = [f for f in families if f.label == name or f.label.split("|")[0] == name]
    return found[0] if found else None


@dataclass(frozen=True)
class Comparison:
    """A claim's two sides as weighted sums of their families' points, and the match points they average."""

    claimed: Combination
    baseline: Combination
    points: str
    n_points: int


Terms = list[tuple[float, FamilyPoint]]


def _matched_terms(
    claim: Claim, families: Sequence[Family], a: Family, b: Family
) -> tuple[Terms, Terms, list[tuple[float, float, float]]]:
    """Each side's points with coefficients averaging its interpolated value over the match points where both
    families are in range and have the metric; and the per-point (target, a, b) values."""
    if claim.at == "l0":
        axis = MATCH_AXES.get("l0")
        targets = sorted(p.metrics["l0"] for p in a.points if p.metrics.get("l0", 0) > 0)
    else:
        axis = MATCH_AXES.get("fvu")
        targets = default_targets(families, axis)
    used: list[tuple[float, Terms, Terms]] = []
    for target in targets:
        brackets = family_brackets([a, b], axis, target)
        br_a, br_b = brackets[a.label], brackets[b.label]
        if br_a is None or br_b is None:
            continue
        terms_a, terms_b = bracket_terms(br_a), bracket_terms(br_b)
        if combine_points(terms_a, claim.metric) is None or combine_points(terms_b, claim.metric) is None:
            continue
        used.append((target, terms_a, terms_b))
    n = len(used)
    per_point = [(t, _value(ta, claim.metric), _value(tb, claim.metric)) for t, ta, tb in used]
    return (
        [(c / n, p) for _, ta, _ in used for c, p in ta],
        [(c / n, p) for _, _, tb in used for c, p in tb],
        per_point,
    )


def _value(terms: Terms, metric: str) -> float:
    combo = combine_points(terms, metric)
    return math.nan if combo is None else combo.value


def _group_terms(family: Family, metric: str) -> Terms:
    """The mean of the family's seed groups (≥ 2 SAEs with the metric)."""
    groups = [p for p in family.points if metric in p.estimates and p.estimates[metric].seed_n >= 2]
    return [(1.0 / len(groups), p) for p in groups]


def _comparison(claim: Claim, families: Sequence[Family], a: Family, b: Family) -> Comparison | None:
    if claim.at == "seed_group":
        terms_a, terms_b = _group_terms(a, claim.metric), _group_terms(b, claim.metric)
        per_point = [(math.nan, _value(terms_a, claim.metric), _value(terms_b, claim.metric))]
        if not terms_a or not terms_b:
            return None
    else:
        terms_a, terms_b, per_point = _matched_terms(claim, families, a, b)
        if not per_point:
            return None
    claimed, baseline = combine_points(terms_a, claim.metric), combine_points(terms_b, claim.metric)
    if claimed is None or baseline is None:
        return None
    points = "; ".join((f"{t:.4g}: " if math.isfinite(t) else "") + f"{c:.4g} vs {v:.4g}" for t, c, v in per_point)
    return Comparison(claimed, baseline, points, len(per_point))


def _spread_note(a: Family, b: Family, spreads: tuple[SeedSpread | None, SeedSpread | None], how: str) -> str:
    def one(family: Family, spread: SeedSpread | None) -> str:
        name = family.label.split("|")[0]
        return f"{name} none" if spread is None else f"{name} {spread.sd:.3g} (n={spread.n_saes})"

    note = f"seed sd {one(a, spreads[0])}, {one(b, spreads[1])}"
    if how == SEED_BORROWED:
        note += "; the family without seed replicas borrows the other's sd"
    return note


def evaluate_claim(tables: RunTables, families: Sequence[Family], claim: Claim) -> dict[str, object]:
    """One row of the claims table."""
    a, b = family_named(families, claim.family), family_named(families, claim.baseline)
    row: dict[str, object] = {
        "claim": claim.claim_id,
        "paper": claim.paper,
        "statement": claim.statement,
        "metric": claim.metric,
        "better": claim.better,
        "compared_at": {"fvu": "matched fvu", "l0": f"the {claim.family} SAEs' l0", "seed_group": "seed groups"}[
            claim.at
        ],
    }
    if a is None or b is None:
        missing = claim.family if a is None else claim.baseline
        return row | _empty(f"no {missing} family in this run")
    comparison = _comparison(claim, families, a, b)
    if comparison is None:
        in_range = "both families are in range and have the metric"
        reason = (
            "not both families have a seed group" if claim.at == "seed_group" else f"no match point where {in_range}"
        )
        return row | _empty(reason)
    spreads = family_seed_spread(a, claim.metric), family_seed_spread(b, claim.metric)
    d, how = compare(comparison.claimed, comparison.baseline, *spreads)
    note = _spread_note(a, b, spreads, how)
    if how == SEED_UNKNOWN:  # token noise alone would call seed-to-seed variation a finding
        return row | _empty(f"{note}: no seed spread to judge the difference by") | _values(comparison, d)
    result = verdict(d.value, d.low, d.high, claim.better)
    return row | _values(comparison, d) | {"verdict": result.verdict, "spread_note": note}


def _values(comparison: Comparison, d: Difference) -> dict[str, object]:
    return {
        "claimed_value": comparison.claimed.value,
        "baseline_value": comparison.baseline.value,
        "difference": d.value,
        "stderr": d.stderr,
        "df": d.df,
        "ci_low": d.low,
        "ci_high": d.high,
        "half_width": (d.high - d.low) / 2,
        "n_points": comparison.n_points,
        "points": comparison.points,
    }


def _empty(reason: str) -> dict[str, object]:
    return {
        "claimed_value": math.nan,
        "baseline_value": math.nan,
        "difference": math.nan,
        "stderr": math.nan,
        "df": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "half_width": math.nan,
        "n_points": 0,
        "verdict": NOT_TESTABLE,
        "points": "",
        "spread_note": reason,
    }


def claims_table(tables: RunTables, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Every claim's row: values, difference with its 95% interval, verdict, the match points and the spread."""
    families = build_families(tables)
    return pd.DataFrame([evaluate_claim(tables, families, c) for c in claims])


CLAIMS_FILE = "claims.csv"
SHOWN = ("claim", "statement", "metric", "compared_at", "claimed_value", "baseline_value", "difference",
         "ci_low", "ci_high", "n_points", "verdict", "spread_note")  # fmt: skip


def write_claims(claims: pd.DataFrame, out_dir: Path) -> Path:
    """claims.csv beside matched.csv (written atomically)."""
    path = out_dir / CLAIMS_FILE
    tmp = path.with_suffix(".csv.tmp")
    claims.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def claims_section(data: ReportData) -> Section:
    """The seed papers' claims with their computed verdicts (the table of claims.csv)."""
    section = Section(
        "claims",
        "Seed-paper claims",
        "Each claim compares two families on one metric at matched reconstruction (or the claimed family's l0, "
        "or between seed groups); the verdict is computed from the numbers: 'inside the noise' when the "
        f"{LEVEL:.0%} interval of the difference (token and seed noise, docs/uncertainty.md) contains 0. Full "
        f"table: {CLAIMS_FILE}.",
    )
    table = claims_table(data.tables)
    rows = [[row[c] for c in SHOWN] for _, row in table.iterrows()]
    section.tables.append(table_view(list(SHOWN), rows, sortable=True, css_id="claims-table"))
    return section


__all__ = [
    "CLAIMS",
    "Claim",
    "Verdict",
    "claims_section",
    "claims_table",
    "evaluate_claim",
    "verdict",
    "write_claims",
]
