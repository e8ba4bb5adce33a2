"""Pairwise family differences at matched reconstruction, each with a 95% interval (docs/uncertainty.md).

At every target level and for every metric, each pair of families that both bracket the target gets
a − b = interpolated(a) − interpolated(b), with an interval that combines both sides' token-level errors and
seed spreads (`evalkit.core.uncertainty.difference`). An interval containing 0 reads "within noise". Written as
`matched_differences.csv` next to matched.csv; the report shows the headline metrics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from evalkit.core.uncertainty import WITHIN_NOISE, difference
from reports.load import RunTables
from reports.matched import MATCH_AXES, Family, MatchAxis, bracket_estimate, build_families, family_brackets

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
SEED_UNKNOWN = "not included (no seed replicates on a side)"


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
                a, b = bracket_estimate(br_a, metric), bracket_estimate(br_b, metric)
                if not (math.isfinite(a.value) and math.isfinite(b.value)):
                    continue
                d = difference(a, b)
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
                        "seed_spread": SEED_KNOWN if d.seed_spread_known else SEED_UNKNOWN,
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
