"""Seed-claim verdicts computed from planted numbers: holds, does not hold, inside the seed spread, not testable."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from reports.claims import DOES_NOT_HOLD, HOLDS, INSIDE, NOT_TESTABLE, Claim, claims_table, verdict
from reports.load import RunTables

FAMILY = {"cos": "cosine|hook|64", "std": "standard|hook|64"}


def test_verdict_logic() -> None:
    assert verdict(0.10, 0.02, "higher").verdict == HOLDS
    assert verdict(-0.10, 0.02, "higher").verdict == DOES_NOT_HOLD
    assert verdict(-0.10, 0.02, "lower").verdict == HOLDS
    assert verdict(0.10, 0.02, "lower").verdict == DOES_NOT_HOLD
    assert verdict(0.01, 0.02, "higher").verdict == INSIDE
    assert verdict(-0.02, 0.02, "lower").verdict == INSIDE  # on the edge: inside
    assert verdict(math.nan, 0.02, "higher").verdict == NOT_TESTABLE
    assert verdict(0.1, math.nan, "higher").verdict == NOT_TESTABLE


def _tables() -> RunTables:
    """cosine: fvu 0.1/0.2/0.3 (0.2 is a 3-seed group), standard: fvu 0.1/0.2/0.3, no seeds.

    probe: cosine 0.80 (seeds 0.79/0.80/0.81, sd 0.01) vs standard 0.60 everywhere -> holds.
    norm_detectors: cosine 50 (seeds 49/50/51) vs standard 10 ('lower' claimed) -> does not hold.
    fvu_norm_q4: cosine 0.300 (seeds 0.29/0.30/0.31) vs standard 0.305 -> inside the spread (2·√2·0.01).
    """
    rows = []
    for name, fvu, seed, probe, nd, q4 in [
        ("cos_a", 0.1, 0, 0.80, 50, 0.300),
        ("cos_b_seed0", 0.2, 0, 0.79, 49, 0.290),
        ("cos_b_seed1", 0.2, 1, 0.80, 50, 0.300),
        ("cos_b_seed2", 0.2, 2, 0.81, 51, 0.310),
        ("cos_c", 0.3, 0, 0.80, 50, 0.300),
    ]:
        rows.append((name, "cos", fvu, seed, probe, nd, q4))
    for name, fvu in [("std_a", 0.1), ("std_b", 0.2), ("std_c", 0.3)]:
        rows.append((name, "std", fvu, 0, 0.60, 10, 0.305))
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
            "probe_accuracy_k1": [r[4] for r in rows],
            "norm_detectors": [float(r[5]) for r in rows],
            "fvu_norm_q4": [r[6] for r in rows],
        },
        index=saes.index,
    )
    return RunTables(dirs=(Path("."),), results=pd.DataFrame(), saes=saes, sae_metrics=metrics)


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
    assert table.loc["p", "half_width"] == pytest.approx(2 * math.sqrt(2) * 0.01)  # standard borrows cosine's sd
    assert table.loc["q", "difference"] == pytest.approx(-0.005)
    assert table.loc["n", "n_points"] == 5  # every default fvu target lies in both families' range
    assert "borrows" in table.loc["p", "spread_note"]
    assert "no topk family" in table.loc["x", "spread_note"]
