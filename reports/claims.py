"""The seed papers' claims, put to the numbers of a run: each claim compares two families on one metric, at
matched reconstruction (or matched l0, or between seed groups), and gets a verdict computed from the numbers.

Verdict: the claimed family's value minus the baseline's, averaged over the match points where both families
are in range, against a half-width h. Without a 95% interval from the uncertainty helpers, h is twice the seed
spread of the difference: √(sd_a² + sd_b²), each sd the standard deviation over a seed group of that family (a
family without seed replicas borrows the other family's sd, and the table says so). |difference| ≤ h reads
"inside the seed spread"; otherwise "holds" when the difference points the way the paper claims, else "does not
hold". No match point in range, or no seed spread on either side, reads "not testable" with the reason.
Nothing here is written by hand: the claims say which way is better, the numbers decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reports.load import RunTables
from reports.matched import MATCH_AXES, OUT_OF_RANGE, Family, build_families, default_targets, matched_table
from reports.views import Section, table_view

if TYPE_CHECKING:
    from reports.sections import ReportData

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INSIDE = "inside the seed spread"
NOT_TESTABLE = "not testable"
SPREAD_MULTIPLE = 2.0
"""Half-width of the verdict's band in seed standard deviations of the difference (≈ 95% for a normal)."""


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
    half_width: float


def verdict(difference: float, half_width: float, better: str) -> Verdict:
    """The verdict for a claimed family's value minus the baseline's (see the module docstring)."""
    if not math.isfinite(difference) or not math.isfinite(half_width):
        return Verdict(NOT_TESTABLE, difference, half_width)
    if abs(difference) <= half_width:
        return Verdict(INSIDE, difference, half_width)
    toward_claim = difference > 0 if better == "higher" else difference < 0
    return Verdict(HOLDS if toward_claim else DOES_NOT_HOLD, difference, half_width)


def family_named(families: Sequence[Family], name: str) -> Family | None:
    """The family whose label starts with `name|` (evalkit labels are `{architecture}[+flag]|{hook}|{d_sae}`),
    or is `name`."""
    found = [f for f in families if f.label == name or f.label.split("|")[0] == name]
    return found[0] if found else None


def seed_spread(tables: RunTables, family: Family, metric: str) -> tuple[float, int]:
    """(mean over the family's seed groups of ≥ 2 SAEs of the metric's standard deviation, SAEs in them)."""
    saes = tables.saes[tables.saes["family_label"] == family.label]
    sds, n = [], 0
    for _, group in saes.groupby("seed_group"):
        if len(group) >= 2 and metric in tables.sae_metrics.columns:
            values = tables.sae_metrics.reindex(group.index)[metric].dropna()
            if len(values) >= 2:
                sds.append(float(values.std(ddof=1)))
                n += len(values)
    return (float(np.mean(sds)) if sds else math.nan), n


def _pair_spread(tables: RunTables, a: Family, b: Family, metric: str) -> tuple[float, str]:
    sd_a, n_a = seed_spread(tables, a, metric)
    sd_b, n_b = seed_spread(tables, b, metric)
    if math.isnan(sd_a) and math.isnan(sd_b):
        return math.nan, "no seed group in either family"
    note = f"seed sd {a.label.split('|')[0]} {sd_a:.3g} (n={n_a}), {b.label.split('|')[0]} {sd_b:.3g} (n={n_b})"
    if math.isnan(sd_a) or math.isnan(sd_b):
        known = sd_b if math.isnan(sd_a) else sd_a
        return math.sqrt(2) * known, note + "; the family without seed replicas borrows the other's sd"
    return math.sqrt(sd_a**2 + sd_b**2), note


def _targets(claim: Claim, families: Sequence[Family], family: Family) -> tuple[str, list[float]]:
    if claim.at == "l0":
        points = [p.metrics["l0"] for p in family.points if p.metrics.get("l0", 0) > 0]
        return "l0", sorted(points)
    return "fvu", default_targets(families, MATCH_AXES.get("fvu"))


def _matched_differences(claim: Claim, families: Sequence[Family], a: Family, b: Family) -> pd.DataFrame:
    """Per match point: target, the claimed family's value, the baseline's, their difference."""
    by, targets = _targets(claim, families, a)
    table = matched_table([a, b], MATCH_AXES.get(by), targets)
    table = table[(table["metric"] == claim.metric) & (table["lower_sae"] != OUT_OF_RANGE)]
    wide = table.pivot_table(index="target", columns="family", values="value", aggfunc="first")
    if a.label not in wide or b.label not in wide:
        return pd.DataFrame(columns=["target", "claimed", "baseline", "difference"])
    wide = wide[[a.label, b.label]].dropna()
    return pd.DataFrame(
        {
            "target": wide.index,
            "claimed": wide[a.label].to_numpy(),
            "baseline": wide[b.label].to_numpy(),
            "difference": (wide[a.label] - wide[b.label]).to_numpy(),
        }
    )


def _seed_group_difference(tables: RunTables, claim: Claim, a: Family, b: Family) -> pd.DataFrame:
    """The mean of each family's seed groups (≥ 2 SAEs) of the metric; one row when both have one."""
    means = []
    for family in (a, b):
        saes = tables.saes[tables.saes["family_label"] == family.label]
        values = [
            tables.sae_metrics.reindex(g.index)[claim.metric].dropna().mean()
            for _, g in saes.groupby("seed_group")
            if len(g) >= 2 and claim.metric in tables.sae_metrics.columns
        ]
        means.append(float(np.mean(values)) if values else math.nan)
    if any(math.isnan(m) for m in means):
        return pd.DataFrame(columns=["target", "claimed", "baseline", "difference"])
    return pd.DataFrame({"target": [math.nan], "claimed": [means[0]], "baseline": [means[1]],
                         "difference": [means[0] - means[1]]})  # fmt: skip


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
    diffs = (
        _seed_group_difference(tables, claim, a, b)
        if claim.at == "seed_group"
        else _matched_differences(claim, families, a, b)
    )
    if diffs.empty:
        return row | _empty("no match point where both families are in range")
    spread, note = _pair_spread(tables, a, b, claim.metric)
    result = verdict(float(diffs["difference"].mean()), SPREAD_MULTIPLE * spread, claim.better)
    points = "; ".join(
        (f"{t:.4g}: " if math.isfinite(t) else "") + f"{c:.4g} vs {v:.4g}"
        for t, c, v in zip(diffs["target"], diffs["claimed"], diffs["baseline"], strict=True)
    )
    reason = note if math.isfinite(spread) else f"{note}: no seed spread to judge the difference by"
    return row | {
        "claimed_value": float(diffs["claimed"].mean()),
        "baseline_value": float(diffs["baseline"].mean()),
        "difference": result.difference,
        "half_width": result.half_width,
        "n_points": len(diffs),
        "verdict": result.verdict,
        "points": points,
        "spread_note": reason,
    }


def _empty(reason: str) -> dict[str, object]:
    return {
        "claimed_value": math.nan,
        "baseline_value": math.nan,
        "difference": math.nan,
        "half_width": math.nan,
        "n_points": 0,
        "verdict": NOT_TESTABLE,
        "points": "",
        "spread_note": reason,
    }


def claims_table(tables: RunTables, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Every claim's row: values, difference, half-width, verdict, the match points and the spread used."""
    families = build_families(tables)
    return pd.DataFrame([evaluate_claim(tables, families, c) for c in claims])


CLAIMS_FILE = "claims.csv"
SHOWN = ("claim", "statement", "metric", "compared_at", "claimed_value", "baseline_value", "difference",
         "half_width", "n_points", "verdict", "spread_note")  # fmt: skip


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
        "or between seed groups); the verdict is computed from the numbers: 'inside the seed spread' when the "
        f"difference is within {SPREAD_MULTIPLE:g} seed standard deviations of the difference. Full table: "
        f"{CLAIMS_FILE}.",
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
