"""Uncertainty arithmetic (evalkit.core.uncertainty) and matched comparisons with intervals (reports.differences)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evalkit.core.uncertainty import (
    WITHIN_NOISE,
    Estimate,
    difference,
    interpolate,
    jackknife_stderr,
    welch_df,
)
from reports.differences import DIFFERS, SEED_KNOWN, SEED_UNKNOWN, matched_differences
from reports.matched import MATCH_AXES, Family, FamilyPoint, matched_table


def test_jackknife_of_a_mean_is_the_textbook_standard_error() -> None:
    """For a mean over equal blocks the jackknife equals sd(block means)/√K exactly."""
    rng = np.random.default_rng(0)
    blocks = rng.normal(size=(20, 50))
    full = float(blocks.mean())
    loo = [float(np.delete(blocks, j, axis=0).mean()) for j in range(20)]
    expected = float(blocks.mean(axis=1).std(ddof=1) / math.sqrt(20))
    assert jackknife_stderr(full, loo, [50] * 20) == pytest.approx(expected, rel=1e-9)


def test_jackknife_with_unequal_blocks_is_the_mean_standard_error() -> None:
    """Weighted (delete-m_j) form: for a mean over unequal blocks it equals the ratio-estimator's linearised SE."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(20, 80, size=30)
    blocks = [rng.normal(size=m) for m in sizes]
    allv = np.concatenate(blocks)
    loo = [float(np.concatenate(blocks[:j] + blocks[j + 1 :]).mean()) for j in range(30)]
    se = jackknife_stderr(float(allv.mean()), loo, sizes.tolist())
    # Linearised SE of a mean of cluster totals: √(K/(K−1) Σ (T_j − m_j ȳ)²) / n.
    resid = np.array([b.sum() - len(b) * allv.mean() for b in blocks])
    linearised = math.sqrt(30 / 29 * float((resid**2).sum())) / allv.size
    assert se == pytest.approx(linearised, rel=0.05)


def test_jackknife_needs_enough_blocks_and_finite_values() -> None:
    assert jackknife_stderr(1.0, [1.0] * 7, [10] * 7) is None
    assert jackknife_stderr(1.0, [1.0] * 9 + [math.nan], [10] * 10) is None
    assert jackknife_stderr(1.0, [1.0] * 10, [10] * 9 + [0]) == pytest.approx(0.0, abs=1e-12)  # empty: not counted
    assert jackknife_stderr(1.0, [1.0] * 8, [10] * 7 + [0]) is None


def test_group_estimate_and_interpolation_by_hand() -> None:
    group = Estimate.of_group([1.0, 2.0, 3.0], [0.3, 0.4, 0.0], token_df=31)
    assert group.value == 2.0
    assert group.seed_std == pytest.approx(1.0)
    assert group.seed_se == pytest.approx(1 / math.sqrt(3))
    assert group.seed_df == 2
    assert group.token_se == pytest.approx(0.5 / 3)  # √(0.09 + 0.16 + 0) / 3
    single = Estimate(4.0, token_se=0.2, token_df=31)
    mid = interpolate(group, single, 0.25)
    assert mid.value == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)
    assert mid.token_se == pytest.approx(math.sqrt((0.75 * 0.5 / 3) ** 2 + (0.25 * 0.2) ** 2))
    assert mid.seed_se == pytest.approx(0.75 / math.sqrt(3))  # the single SAE has no seed spread
    assert mid.seed_n == 1


def test_welch_df_of_one_source_is_its_own_and_grows_when_sources_add() -> None:
    assert welch_df([(1.0, 2.0)]) == pytest.approx(2.0)
    assert welch_df([(1.0, 2.0), (1.0, 2.0)]) == pytest.approx(4.0)
    assert welch_df([(1.0, math.inf)]) == math.inf


def test_difference_uses_student_t_for_few_seeds() -> None:
    a = Estimate.of_group([1.0, 1.2, 1.4])  # seed se 0.1155 with 2 df
    b = Estimate(0.0)
    d = difference(a, b)
    assert d.df == pytest.approx(2.0)
    assert d.high - d.value == pytest.approx(4.303 * 0.2 / math.sqrt(3), rel=1e-3)  # t_{0.975, 2} = 4.303
    assert not d.within_noise and not d.seed_spread_known


def _family(label: str, offset: float, token_se: float, seed_std: float) -> Family:
    """Three sweep points at fvu 0.1, 0.2, 0.3; ce_loss_score = 1 − fvu + offset. The middle point is a 3-seed
    group whose members spread by seed_std around it."""
    points = []
    for fvu in (0.1, 0.2, 0.3):
        score = 1.0 - fvu + offset
        if fvu == 0.2:
            est = Estimate.of_group([score - seed_std, score, score + seed_std], [token_se] * 3, token_df=31)
        else:
            est = Estimate(score, token_se=token_se, token_df=31)
        points.append(
            FamilyPoint(
                f"{label}@{fvu}",
                {"fvu": fvu, "ce_loss_score": est.value},
                {"fvu": Estimate(fvu, 0.001, 31), "ce_loss_score": est},
            )
        )
    return Family(label, label, tuple(points))


@pytest.mark.parametrize(
    ("gap", "verdict"),
    [(0.002, WITHIN_NOISE), (0.2, DIFFERS)],
    ids=["less-than-noise", "much-more-than-noise"],
)
def test_planted_families_within_noise_or_not(gap: float, verdict: str) -> None:
    """Two families whose ce_loss_score differs by `gap`; noise: token se 0.01 per SAE, seed std 0.02."""
    fams = [_family("a", gap, 0.01, 0.02), _family("b", 0.0, 0.01, 0.02)]
    table = matched_differences(fams, MATCH_AXES.get("fvu"), [0.15, 0.2])
    rows = table[table["metric"] == "ce_loss_score"]
    assert len(rows) == 2
    for _, row in rows.iterrows():
        assert row["difference"] == pytest.approx(gap)
        assert row["verdict"] == verdict
        assert (row["ci_low"] <= 0 <= row["ci_high"]) == (verdict == WITHIN_NOISE)
    at_group = rows[rows["target"] == 0.2].iloc[0]  # exactly at the seed groups: t with Welch df
    expected_var = 2 * ((0.01 * math.sqrt(3) / 3) ** 2 + (0.02 / math.sqrt(3)) ** 2)
    assert at_group["stderr"] == pytest.approx(math.sqrt(expected_var))
    assert at_group["seed_spread"] == SEED_KNOWN
    between = rows[rows["target"] == 0.15].iloc[0]  # half way to a single SAE: its interval is still finite
    assert math.isfinite(between["ci_low"]) and between["seed_spread"] == SEED_KNOWN


def test_no_seed_replicates_is_said() -> None:
    def lone(label: str, offset: float) -> Family:
        pts = [
            FamilyPoint(
                f"{label}{f}", {"fvu": f, "l1": 1 + offset}, {"fvu": Estimate(f), "l1": Estimate(1 + offset, 0.1)}
            )
            for f in (0.1, 0.3)
        ]
        return Family(label, label, tuple(pts))

    row = matched_differences([lone("a", 1.0), lone("b", 0.0)], MATCH_AXES.get("fvu"), [0.2]).iloc[0]
    assert row["seed_spread"] == SEED_UNKNOWN
    assert row["stderr"] == pytest.approx(math.sqrt(2 * (0.5**2 * 0.01 * 2)))  # two brackets, weight 1/2 each


def test_matched_table_carries_interpolated_stderr_and_seed_spread() -> None:
    fam = _family("a", 0.0, 0.01, 0.02)
    table = matched_table([fam], MATCH_AXES.get("fvu"), [0.15, 0.2, 0.5])
    row = table[(table["metric"] == "ce_loss_score") & (table["target"] == 0.15)].iloc[0]
    w = 0.5
    group_se = 0.01 * math.sqrt(3) / 3
    assert row["stderr"] == pytest.approx(math.sqrt((w * 0.01) ** 2 + (w * group_se) ** 2))
    assert row["seed_std"] == pytest.approx(0.02)  # only the upper bracket has replicates
    assert row["seed_n"] == 1
    exact = table[(table["metric"] == "ce_loss_score") & (table["target"] == 0.2)].iloc[0]
    assert exact["seed_n"] == 3 and exact["stderr"] == pytest.approx(group_se)
    out = table[table["target"] == 0.5].iloc[0]
    assert math.isnan(out["stderr"]) and math.isnan(out["value"])
