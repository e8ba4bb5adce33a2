"""Reconstruction, shrinkage and code-sparsity metrics (group `core`), as streaming accumulators.

Every sum is kept in float64 on the CPU: the variance in the FVU denominator is a difference of two large,
nearly equal numbers when activations carry a large mean, and float32 sums lose it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, SumState, stream_metric


def _finite(values: list[MetricValue]) -> list[MetricValue]:
    """A metric that cannot be computed (0/0) has no row, never a NaN row."""
    return [v for v in values if math.isfinite(v.value)]


@stream_metric(
    "reconstruction",
    group="core",
    produces=("mse", "fvu", "explained_variance", "explained_variance_legacy", "explained_variance_saebench"),
)
class Reconstruction:
    """Squared-error metrics; the three explained-variance formulas of docs/metrics.md side by side."""

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.n_tokens = 0
        self.sum_err = 0.0  # Σ_t ‖x_t − x̂_t‖²
        self.sum_sq = 0.0  # Σ_t ‖x_t‖²
        # Σ_t (x_t − c) and Σ_t ‖x_t − c‖² around a shift c (the first batch's mean): the variance is then a
        # difference of small numbers, exact to float64 rounding however large the mean is.
        self.shift_D: torch.Tensor | None = None
        self.sum_xc_D: torch.Tensor | None = None
        self.sum_sq_c = 0.0
        self.sum_legacy = 0.0  # Σ_t (1 − ‖x_t − x̂_t‖² / ‖x_t − μ_batch‖²)
        self.n_legacy = 0

    def update(self, batch: SaeBatch) -> None:
        if batch.x_TD.shape[0] == 0:
            return
        x_TD = batch.x_TD.detach().to("cpu", torch.float64)
        err_T = (x_TD - batch.x_hat_TD.detach().to("cpu", torch.float64)).pow(2).sum(-1)
        self.n_tokens += x_TD.shape[0]
        self.sum_err += float(err_T.sum())
        self.sum_sq += float(x_TD.pow(2).sum())
        if self.shift_D is None:
            self.shift_D = x_TD.mean(0)
        xc_TD = x_TD - self.shift_D
        batch_sum_D = xc_TD.sum(0)
        self.sum_xc_D = batch_sum_D if self.sum_xc_D is None else self.sum_xc_D + batch_sum_D
        self.sum_sq_c += float(xc_TD.pow(2).sum())
        # Legacy formula: each token's error against the spread around *this batch's* mean.
        # μ_batch is the source batch's mean, also when this batch is one jackknife block of it.
        mu_D = x_TD.mean(0) if batch.x_mean_D is None else batch.x_mean_D.to("cpu", torch.float64)
        var_T = (x_TD - mu_D).pow(2).sum(-1)
        ok_T = var_T > 0
        self.sum_legacy += float((1.0 - err_T[ok_T] / var_T[ok_T]).sum())
        self.n_legacy += int(ok_T.sum())

    def state_dict(self) -> State:
        empty = torch.empty(0, dtype=torch.float64)
        return {
            "n_tokens": self.n_tokens,
            "sum_err": self.sum_err,
            "sum_sq": self.sum_sq,
            "shift_D": empty if self.shift_D is None else self.shift_D.clone(),
            "sum_xc_D": empty if self.sum_xc_D is None else self.sum_xc_D.clone(),
            "sum_sq_c": self.sum_sq_c,
            "sum_legacy": self.sum_legacy,
            "n_legacy": self.n_legacy,
        }

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        self.n_tokens, self.n_legacy = int(state["n_tokens"]), int(state["n_legacy"])
        self.sum_err, self.sum_sq = float(state["sum_err"]), float(state["sum_sq"])
        self.sum_sq_c, self.sum_legacy = float(state["sum_sq_c"]), float(state["sum_legacy"])
        shift_D, sum_xc_D = state["shift_D"], state["sum_xc_D"]
        assert isinstance(shift_D, torch.Tensor) and isinstance(sum_xc_D, torch.Tensor)
        self.shift_D = shift_D.clone() if shift_D.numel() else None
        self.sum_xc_D = sum_xc_D.clone() if sum_xc_D.numel() else None

    def merge(self, other: Reconstruction) -> None:
        if other.shift_D is None or other.sum_xc_D is None:
            return
        if self.shift_D is None or self.sum_xc_D is None:
            self.load_state_dict(other.state_dict())
            return
        # Move other's sums to this shift: Σ(x − c) = Σ(x − c') + n'(c' − c), and
        # Σ‖x − c‖² = Σ‖x − c'‖² + 2⟨c' − c, Σ(x − c')⟩ + n'‖c' − c‖².
        delta_D = other.shift_D - self.shift_D
        n_other = other.n_tokens
        self.sum_sq_c += other.sum_sq_c + 2 * float(delta_D @ other.sum_xc_D) + n_other * float(delta_D @ delta_D)
        self.sum_xc_D = self.sum_xc_D + other.sum_xc_D + n_other * delta_D
        self.n_tokens += n_other
        self.sum_err += other.sum_err
        self.sum_sq += other.sum_sq
        self.sum_legacy += other.sum_legacy
        self.n_legacy += other.n_legacy

    def compute(self) -> list[MetricValue]:
        if self.n_tokens == 0 or self.sum_xc_D is None:
            return []
        n = self.n_tokens
        mse = self.sum_err / n
        mean_sq = self.sum_sq / n
        total_var = self.sum_sq_c / n - float((self.sum_xc_D / n).pow(2).sum())
        fvu = mse / total_var if total_var > 0 else float("nan")
        # SAEBench v0.6.0: E‖x‖² minus the square of the mean over (tokens, dims) of x² — not a variance.
        d_in = self.sum_xc_D.shape[0]
        saebench_denominator = mean_sq - (self.sum_sq / (n * d_in)) ** 2
        legacy = self.sum_legacy / self.n_legacy if self.n_legacy else float("nan")
        return _finite(
            [
                MetricValue("mse", mse),
                MetricValue("fvu", fvu),
                MetricValue("explained_variance", 1.0 - fvu),
                MetricValue("explained_variance_legacy", legacy),
                MetricValue("explained_variance_saebench", 1.0 - mse / saebench_denominator),
            ]
        )


@stream_metric("shrinkage", group="core", produces=("cossim", "l2_ratio", "relative_reconstruction_bias"))
class Shrinkage(SumState):
    """Direction and length of x̂ against x."""

    SUMS = ("n_tokens", "sum_cos", "sum_ratio", "sum_xhat_sq", "sum_dot")

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.n_tokens = 0
        self.sum_cos = 0.0
        self.sum_ratio = 0.0
        self.sum_xhat_sq = 0.0  # Σ ‖x̂‖²
        self.sum_dot = 0.0  # Σ ⟨x, x̂⟩

    def update(self, batch: SaeBatch) -> None:
        if batch.x_TD.shape[0] == 0:
            return
        x_TD = batch.x_TD.detach().to("cpu", torch.float64)
        xh_TD = batch.x_hat_TD.detach().to("cpu", torch.float64)
        norm_x_T = x_TD.norm(dim=-1)
        norm_xh_T = xh_TD.norm(dim=-1)
        dot_T = (x_TD * xh_TD).sum(-1)
        self.n_tokens += x_TD.shape[0]
        self.sum_cos += float((dot_T / (norm_x_T * norm_xh_T).clamp_min(1e-12)).sum())
        # sae-lens' convention: a (near-)zero input norm divides by 1 instead of exploding.
        safe_norm_x_T = torch.where(norm_x_T.abs() < 1e-4, torch.ones_like(norm_x_T), norm_x_T)
        self.sum_ratio += float((norm_xh_T / safe_norm_x_T).sum())
        self.sum_xhat_sq += float(norm_xh_T.pow(2).sum())
        self.sum_dot += float(dot_T.sum())

    def compute(self) -> list[MetricValue]:
        if self.n_tokens == 0:
            return []
        n = self.n_tokens
        rrb = self.sum_xhat_sq / self.sum_dot if self.sum_dot != 0 else float("nan")
        return _finite(
            [
                MetricValue("cossim", self.sum_cos / n),
                MetricValue("l2_ratio", self.sum_ratio / n),
                MetricValue("relative_reconstruction_bias", rrb),
            ]
        )


@stream_metric("sparsity_codes", group="core", produces=("l0", "l1", "l0_std"), version=2)
class CodeSparsity(SumState):
    """Active latents and code mass per token (f ≠ 0 counts negative codes of signed variants too).

    `l0_std` is the per-token spread of l0 (population std): 0 for fixed-k TopK, > 0 for variants whose
    number of active latents adapts to the token (top-AFA, JumpReLU, batch thresholds) (seed 003).
    """

    SUMS = ("n_tokens", "sum_l0", "sum_l0_sq", "sum_l1")

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.n_tokens = 0
        self.sum_l0 = 0.0
        self.sum_l0_sq = 0.0
        self.sum_l1 = 0.0

    def update(self, batch: SaeBatch) -> None:
        codes = batch.codes  # the nonzero codes, shared with the other metrics: O(T·l0), not O(T·d_sae)
        self.n_tokens += codes.n_tokens
        l0_T = codes.per_token()
        self.sum_l0 += float(l0_T.sum())
        self.sum_l0_sq += float((l0_T * l0_T).sum())
        self.sum_l1 += float(codes.value_N.abs().sum(dtype=torch.float64))

    def compute(self) -> list[MetricValue]:
        if self.n_tokens == 0:
            return []
        mean_l0 = self.sum_l0 / self.n_tokens
        var_l0 = max(self.sum_l0_sq / self.n_tokens - mean_l0 * mean_l0, 0.0)
        return [
            MetricValue("l0", mean_l0),
            MetricValue("l1", self.sum_l1 / self.n_tokens),
            MetricValue("l0_std", var_l0**0.5),
        ]
