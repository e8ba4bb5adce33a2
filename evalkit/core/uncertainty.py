"""Uncertainty arithmetic shared by the runner, the reports and the proving ground (docs/uncertainty.md).

Three pieces, all plain numbers in and out (no torch, no pandas):

- `jackknife_stderr`: the delete-a-block jackknife standard error of a statistic from its full-data value and its
  leave-one-block-out values (blocks of whole sequences; unequal block sizes weighted as Busing et al. 1999).
- `Estimate`: one number with its token-level standard error and, where the number is a seed group's mean, the
  spread of the group (std and n). `Estimate.of_group` builds one from the members' values and errors.
- `difference(a, b)`: a − b with a 95% interval combining both token-level errors and both seed spreads, with
  Welch–Satterthwaite degrees of freedom (a 3-seed group's spread is a 2-df estimate: a normal 1.96 would cover
  far less than 95%). `within_noise` is True when the interval contains 0.

Assumptions, stated once: the token-level errors of different SAEs are treated as independent. All SAEs of one
run see the same tokens, so their errors are positively correlated and the interval of a difference is wider
than it needs to be (conservative). A number with no token noise (a metric of the weights alone) has
`token_se=None`, which contributes nothing; a group of one SAE has no seed spread (`seed_std=None`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

MIN_BLOCKS = 8
"""Fewer non-empty blocks than this give no standard error (a 7-df variance estimate is already ±27%)."""
LEVEL = 0.95
WITHIN_NOISE = "within noise"


def jackknife_stderr(full: float, leave_one_out: Sequence[float], block_sizes: Sequence[float]) -> float | None:
    """Delete-a-block jackknife standard error of a statistic.

    `full` is the statistic on all blocks, `leave_one_out[j]` on all blocks but j, `block_sizes[j]` how many
    tokens block j holds. With equal sizes this is the textbook √((K−1)/K · Σ_j (θ₍₋ⱼ₎ − θ̄)²); with unequal
    sizes, the delete-m_j jackknife (Busing, Meijer & van der Leeden 1999): pseudo-values
    τ_j = h_j·θ − (h_j − 1)·θ₍₋ⱼ₎ with h_j = n/m_j, variance (1/K) Σ_j (τ_j − θ_J)² / (h_j − 1).
    None when fewer than MIN_BLOCKS blocks are non-empty or any value is not finite.
    """
    pairs = [(float(t), float(m)) for t, m in zip(leave_one_out, block_sizes, strict=True) if m > 0]
    k = len(pairs)
    if k < MIN_BLOCKS or not math.isfinite(full) or not all(math.isfinite(t) for t, _ in pairs):
        return None
    n = sum(m for _, m in pairs)
    theta_j = k * full - sum((1.0 - m / n) * t for t, m in pairs)
    var = 0.0
    for t, m in pairs:
        h = n / m
        pseudo = h * full - (h - 1.0) * t
        var += (pseudo - theta_j) ** 2 / (h - 1.0)
    return math.sqrt(var / k)


@dataclass(frozen=True)
class Estimate:
    """A number with what is known about its noise: two independent sources, each a standard error of the value
    itself and its degrees of freedom."""

    value: float
    token_se: float | None = None
    """Token-level standard error (for a group mean: of the mean); None = no token noise (weights alone)."""
    token_df: float = math.inf
    """Degrees of freedom of token_se (jackknife blocks − 1); inf = treated as known."""
    seed_se: float | None = None
    """Standard error of the value from seed-to-seed variation (seed_std / √n for a group mean); None = unknown."""
    seed_df: float = math.inf
    seed_std: float | None = None
    """Spread of one SAE across seeds (ddof 1), for tables; None without replicates."""
    seed_n: int = 1
    """How many SAEs (seeds) the value averages."""

    @classmethod
    def of_group(
        cls, values: Sequence[float], token_ses: Sequence[float | None] = (), token_df: float = math.inf
    ) -> Estimate:
        """The mean of a seed group's values; its token error is that of a mean of independent members."""
        finite = [float(v) for v in values if math.isfinite(float(v))]
        if not finite:
            return cls(math.nan)
        n = len(finite)
        mean = sum(finite) / n
        ses = [float(s) for s in token_ses if s is not None and math.isfinite(float(s))]
        token_se = math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else None
        if n < 2:
            return cls(mean, token_se, token_df)
        std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
        return cls(mean, token_se, token_df, std / math.sqrt(n), float(n - 1), std, n)


def interpolate(lower: Estimate, upper: Estimate, weight: float) -> Estimate:
    """(1 − w)·lower + w·upper, the two brackets' errors propagated as independent sources."""
    a, b = 1.0 - weight, weight
    if weight == 0.0:
        return lower
    if weight == 1.0:
        return upper

    def combine(se_a: float | None, df_a: float, se_b: float | None, df_b: float) -> tuple[float | None, float]:
        parts = [(c * c * se * se, df) for c, se, df in ((a, se_a, df_a), (b, se_b, df_b)) if se is not None]
        if not parts:
            return None, math.inf
        return math.sqrt(sum(v for v, _ in parts)), welch_df(parts)

    token_se, token_df = combine(lower.token_se, lower.token_df, upper.token_se, upper.token_df)
    seed_se, seed_df = combine(lower.seed_se, lower.seed_df, upper.seed_se, upper.seed_df)
    stds = [(c, s) for c, s in ((a, lower.seed_std), (b, upper.seed_std)) if s is not None]
    seed_std = sum(c * s for c, s in stds) / sum(c for c, _ in stds) if stds else None
    return Estimate(
        a * lower.value + b * upper.value,
        token_se,
        token_df,
        seed_se,
        seed_df,
        seed_std,
        min(lower.seed_n, upper.seed_n),
    )


@dataclass(frozen=True)
class Difference:
    """a − b with its interval."""

    value: float
    low: float
    high: float
    stderr: float
    df: float
    level: float = LEVEL
    seed_spread_known: bool = True
    """False when a side had no seed replicates: its seed-to-seed variation is not in the interval."""

    @property
    def within_noise(self) -> bool:
        """The interval contains 0: the data do not tell the two apart."""
        return self.low <= 0.0 <= self.high

    @property
    def verdict(self) -> str:
        return WITHIN_NOISE if self.within_noise else ("a > b" if self.value > 0 else "a < b")


def _components(e: Estimate) -> list[tuple[float, float]]:
    """(variance, degrees of freedom) of each independent noise source of an estimate."""
    parts = []
    for se, df in ((e.token_se, e.token_df), (e.seed_se, e.seed_df)):
        if se is not None and math.isfinite(se):
            parts.append((se * se, df))
    return parts


def welch_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of independent variance estimates."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / df for v, df in parts if math.isfinite(df) and df > 0)
    if total <= 0 or denom <= 0:
        return math.inf
    return total * total / denom


def t_quantile(df: float, level: float = LEVEL) -> float:
    q = 0.5 + level / 2
    return float(stats.norm.ppf(q)) if not math.isfinite(df) else float(stats.t.ppf(q, df))


def difference(a: Estimate, b: Estimate, level: float = LEVEL) -> Difference:
    """a − b with a `level` interval combining token and seed uncertainty of both sides (module docstring)."""
    seeds_known = a.seed_se is not None and b.seed_se is not None
    return difference_of_parts(a.value - b.value, _components(a) + _components(b), level, seeds_known)


def difference_of_parts(
    value: float, parts: Sequence[tuple[float, float]], level: float = LEVEL, seed_spread_known: bool = True
) -> Difference:
    """A difference `value` whose variance is the sum of independent estimated parts (variance, degrees of
    freedom): the interval is value ± t(Welch–Satterthwaite df)·√Σ variance. For callers that know which parts
    share one variance estimate (e.g. a seed spread borrowed by both sides) and pass it as one part."""
    se = math.sqrt(sum(v for v, _ in parts))
    df = welch_df(parts)
    half = t_quantile(df, level) * se
    return Difference(value, value - half, value + half, se, df, level, seed_spread_known)


def interval(e: Estimate, level: float = LEVEL) -> tuple[float, float]:
    """A `level` interval for one estimate (token and seed noise combined)."""
    parts = _components(e)
    se = math.sqrt(sum(v for v, _ in parts))
    half = t_quantile(welch_df(parts), level) * se
    return e.value - half, e.value + half
