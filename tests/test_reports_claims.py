"""Seed-claim verdicts computed from planted numbers: holds, does not hold, inside the noise, not testable — from
the 95% interval of the matched comparison (token and seed noise, Student t with Welch df), checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from reports.claims import DOES_NOT_HOLD, HOLDS, INSIDE, NOT_TESTABLE, Claim, claims_table, verdict
from reports.load import RunTables

FAMILY = {"cos": "cosine|hook|64", "std": "standard|hook|64", "tk": "topk|hook|64"}
TOKEN_SE = 0.002
"""Token-level stderr of every SAE's fvu_norm_q4 (the only planted metric with token noise)."""


def test_verdict_logic() -> None:
    assert verdict(0.10, 0.05, 0.15, "higher").verdict == HOLDS
    assert verdict(-0.10, -0.15, -0.05, "higher").verdict == DOES_NOT_HOLD
    assert verdict(-0.10, -0.15, -0.05, "lower").verdict == HOLDS
    assert verdict(0.10, 0.05, 0.15, "lower").verdict == DOES_NOT_HOLD
    assert verdict(0.01, -0.01, 0.03, "higher").verdict == INSIDE
    assert verdict(-0.02, -0.04, 0.0, "lower").verdict == INSIDE  # on the edge: inside
    assert verdict(0.02, 0.0, 0.04, "higher").verdict == INSIDE
    assert verdict(0.03, 0.0 + 1e-12, 0.06, "higher").verdict == HOLDS
    assert verdict(math.nan, 0.0, 0.1, "higher").verdict == NOT_TESTABLE
    assert verdict(0.1, math.nan, math.nan, "higher").verdict == NOT_TESTABLE


def _tables(with_topk: bool = False) -> RunTables:
    """cosine: fvu 0.1/0.2/0.3 (0.2 is a 3-seed group), standard: fvu 0.1/0.2/0.3, no seeds.

    probe: cosine 0.80 (seeds 0.79/0.80/0.81, sd 0.01) vs standard 0.60 everywhere -> holds.
    norm_detectors: cosine 50 (seeds 49/50/51) vs standard 10 ('lower' claimed) -> does not hold.
    fvu_norm_q4: cosine 0.300 (seeds 0.29/0.30/0.31) vs standard 0.305 -> inside the noise.
    topk (optional): fvu 0.1/0.3, no seeds, probe 0.5.
    """
    rows = []
    for name, fvu, probe, nd, q4 in [
        ("cos_a", 0.1, 0.80, 50, 0.300),
        ("cos_b_seed0", 0.2, 0.79, 49, 0.290),
        ("cos_b_seed1", 0.2, 0.80, 50, 0.300),
        ("cos_b_seed2", 0.2, 0.81, 51, 0.310),
        ("cos_c", 0.3, 0.80, 50, 0.300),
    ]:
        rows.append((name, "cos", fvu, probe, nd, q4))
    for name, fvu in [("std_a", 0.1), ("std_b", 0.2), ("std_c", 0.3)]:
        rows.append((name, "std", fvu, 0.60, 10, 0.305))
    if with_topk:
        rows += [("tk_a", "tk", 0.1, 0.5, 10, 0.3), ("tk_b", "tk", 0.3, 0.5, 10, 0.3)]
    saes = pd.DataFrame(
        {
            "architecture": [FAMILY[r[1]].split("|")[0] for r in rows],
            "family_label": [FAMILY[r[1]] for r in rows],
            "seed_group": [FAMILY[r[1]] + "::" + r[0].split("_seed")[0] for r in rows],
        },
        index=[r[0] for r in rows],
    )
    metrics = pd.DataFrame(
        {
            "fvu": [r[2] for r in rows],
            "probe_accuracy_k1": [r[3] for r in rows],
            "norm_detectors": [float(r[4]) for r in rows],
            "fvu_norm_q4": [r[5] for r in rows],
        },
        index=saes.index,
    )
    stderr = pd.DataFrame({"fvu_norm_q4": [TOKEN_SE] * len(rows)}, index=saes.index)
    info = [{"config": {"stderr_blocks": 32}}]
    return RunTables(Path("."), pd.DataFrame(), saes, metrics, sae_stderr=stderr, run_info=info)  # type: ignore[arg-type]


# The default fvu targets are 0.1, 0.15, 0.2, 0.25, 0.3: averaged over them, each family's value is
# 0.3·(fvu 0.1 point) + 0.4·(fvu 0.2 point) + 0.3·(fvu 0.3 point).
COEF = (0.3, 0.4, 0.3)


def _expected_interval(diff: float, sd: float, token_se: float | None) -> tuple[float, float]:
    """By hand: seed variance sd²·(Σ c²/n for cosine + Σ c² for standard), one part with 2 df (standard
    borrows cosine's 3-seed sd); token parts c²·se² per point with 31 df (a 3-seed point's se is se/√3)."""
    seed_var = sd**2 * ((COEF[0] ** 2 + COEF[1] ** 2 / 3 + COEF[2] ** 2) + sum(c * c for c in COEF))
    parts = [(seed_var, 2.0)]
    if token_se is not None:
        cos_token = [(c * token_se / math.sqrt(n)) ** 2 for c, n in zip(COEF, (1, 3, 1), strict=True)]
        std_token = [(c * token_se) ** 2 for c in COEF]
        parts += [(v, 31.0) for v in cos_token + std_token]
    total = sum(v for v, _ in parts)
    df = total**2 / sum(v * v / d for v, d in parts)
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(total)
    return diff - half, diff + half


def test_claims_on_planted_numbers() -> None:
    claims = [
        Claim("p", "", "", "cosine", "standard", "probe_accuracy_k1", "higher", "fvu"),
        Claim("n", "", "", "cosine", "standard", "norm_detectors", "lower", "fvu"),
        Claim("q", "", "", "cosine", "standard", "fvu_norm_q4", "lower", "fvu"),
        Claim("s", "", "", "cosine", "standard", "probe_accuracy_k1", "higher", "seed_group"),
        Claim("x", "", "", "cosine", "topk", "fvu", "lower", "fvu"),
    ]
    table = claims_table(_tables(), claims).set_index("claim")
    assert table["verdict"].to_dict() == {
        "p": HOLDS,
        "n": DOES_NOT_HOLD,
        "q": INSIDE,
        "s": NOT_TESTABLE,  # standard has no seed group
        "x": NOT_TESTABLE,  # no topk family
    }
    assert table.loc["p", "difference"] == pytest.approx(0.2)
    low, high = _expected_interval(0.2, 0.01, None)  # probing has no token stderr: seed noise only
    assert (table.loc["p", "ci_low"], table.loc["p", "ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert table.loc["q", "difference"] == pytest.approx(-0.005)
    low, high = _expected_interval(-0.005, 0.01, TOKEN_SE)
    assert (table.loc["q", "ci_low"], table.loc["q", "ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert table.loc["n", "n_points"] == 5  # every default fvu target lies in both families' range
    assert "borrows" in table.loc["p", "spread_note"]
    assert "no topk family" in table.loc["x", "spread_note"]
    assert "seed group" in table.loc["s", "spread_note"]


def test_a_difference_just_beyond_the_old_band_is_inside_the_noise_with_few_seeds() -> None:
    """The old band 2·√(sd_a² + sd_b²) = 0.0283 treated a 3-seed sd as known and called a 0.03 difference
    'holds'; the interval uses t with 2 df (4.30) on the averaged points' seed variance: ±0.0326, inside."""
    tables = _tables()
    tables.sae_metrics.loc[tables.saes["family_label"] == FAMILY["std"], "probe_accuracy_k1"] = 0.77
    claim = Claim("p", "", "", "cosine", "standard", "probe_accuracy_k1", "higher", "fvu")
    row = claims_table(tables, [claim]).iloc[0]
    assert row["difference"] == pytest.approx(0.03) and 0.03 > 2 * math.sqrt(2) * 0.01  # beyond the old band
    assert row["verdict"] == INSIDE  # but inside the t(2) interval: three seeds say little about the spread


def test_no_seed_group_in_either_family_is_not_testable() -> None:
    claim = Claim("t", "", "", "standard", "topk", "probe_accuracy_k1", "higher", "fvu")
    row = claims_table(_tables(with_topk=True), [claim]).iloc[0]
    assert row["verdict"] == NOT_TESTABLE
    assert "no seed spread" in row["spread_note"]
    assert row["difference"] == pytest.approx(0.1)  # the numbers are still shown
