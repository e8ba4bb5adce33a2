"""Norm detectors and norm-stratified reconstruction (seeds 000/001).

A norm detector fires because the input is large, not because of its direction. Per latent we stream: firing
counts, firings in the top norm quartile, firings that survive rescaling x to the median norm, firings at
position 0 or on outlier tokens, and a histogram of the firing tokens' norms (for the AUROC).

AUROC approximation **(evalkit)**: token norms are put in fixed bins, uniform in
z = (log n − log m)/log(q75/q25) over z ∈ [−8, 8) (512 bins, so one bin is 1/32 of the log-IQR; tokens beyond
the range fall in the end bins). The AUC is computed exactly from the per-latent firing histogram and the
global histogram, with pairs inside one bin counted as ties (½). The error for a latent is therefore at most
½·Σ_b pos_b·neg_b/(P·N), half the share of (firing, silent) token pairs that share a bin, and far smaller in
practice. Memory: d_sae × 512 int32.

Two entries: `norm` (the per-latent detector statistics; its SAE-level values are counts of latents, which get no
token-level stderr, so it runs without a jackknife and its histogram is kept once) and `norm_quartiles`
(reconstruction per norm quartile and the outlier-token count: small state, with a jackknife stderr).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from evalkit.sae.score import fires_after_rescale, fires_on_pairs, norm_exponents
from metrics.base import State, StateValue, SumState, stream_metric, weights_metric

MIN_FIRINGS = 20
"""Only latents with at least this many firings are classified as detectors."""
ND1_Q4_SHARE = 0.8
ND2_AUROC = 0.9
ND3_SURVIVAL = 0.2
SINK_SHARE = 0.5
OUTLIER_MULTIPLE = 10.0
"""Tokens with ‖x‖ > this × the median norm are outliers (and count toward sink detectors)."""
N_BINS = 512
Z_RANGE = 8.0
AUROC_LATENT_CHUNK = 4096


def norm_bins(norms_T: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
    """Histogram bin [T] (int64) of each token norm on the fixed robust log scale described above."""
    spread_known = ctx.norm_q25 > 0 and ctx.norm_q75 > ctx.norm_q25
    log_iqr = math.log(ctx.norm_q75 / ctx.norm_q25) if spread_known else 0.0
    scale = log_iqr if log_iqr > 1e-6 else 1e-3  # all norms (nearly) equal: any fine scale will do
    z_T = (norms_T.double().clamp_min(1e-30).log() - math.log(max(ctx.median_norm, 1e-30))) / scale
    bins_T = torch.floor((z_T + Z_RANGE) / (2 * Z_RANGE) * N_BINS)
    return bins_T.clamp(0, N_BINS - 1).long()


def auroc_from_histograms(pos_FB: torch.Tensor, total_B: torch.Tensor) -> torch.Tensor:
    """ROC-AUC per latent of the binned norm, ties counted ½; NaN unless the latent has both classes."""
    out = []
    total_B = total_B.double()
    for start in range(0, pos_FB.shape[0], AUROC_LATENT_CHUNK):
        pos = pos_FB[start : start + AUROC_LATENT_CHUNK].double()
        neg = total_B.unsqueeze(0) - pos
        neg_below = torch.cumsum(neg, dim=1) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum(dim=1)
        n_pairs = pos.sum(dim=1) * neg.sum(dim=1)
        out.append(torch.where(n_pairs > 0, wins / n_pairs.clamp_min(1), torch.full_like(wins, math.nan)))
    return torch.cat(out)


def quartile_index(norms_T: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
    """0..3 for Q1 (n < q25), Q2 (q25 ≤ n < median), Q3 (median ≤ n < q75), Q4 (n ≥ q75)."""
    cuts = torch.tensor([ctx.norm_q25, ctx.median_norm, ctx.norm_q75], dtype=norms_T.dtype, device=norms_T.device)
    return torch.bucketize(norms_T, cuts, right=True)


class _QuartileSums(SumState):
    """Running sums per norm quartile for fvu_norm_q*, rel_mse_norm_q* and l2_ratio_norm_q4 (float64)."""

    SUMS = ("count_Q", "sq_norm_Q", "err_Q", "rel_err_Q", "l2_ratio_Q")

    def __init__(self) -> None:
        self.count_Q = torch.zeros(4, dtype=torch.float64)
        self.sq_norm_Q = torch.zeros(4, dtype=torch.float64)
        self.err_Q = torch.zeros(4, dtype=torch.float64)
        self.rel_err_Q = torch.zeros(4, dtype=torch.float64)
        self.l2_ratio_Q = torch.zeros(4, dtype=torch.float64)
        self.sum_x_QD: torch.Tensor | None = None

    def update(self, x_TD: torch.Tensor, x_hat_TD: torch.Tensor, q_T: torch.Tensor) -> None:
        # float64 throughout: the quartile spread is a difference of large sums.
        x, x_hat, q = x_TD.double().cpu(), x_hat_TD.double().cpu(), q_T.cpu()
        sq_norm_T = x.pow(2).sum(dim=1)
        err_T = (x - x_hat).pow(2).sum(dim=1)
        if self.sum_x_QD is None:
            self.sum_x_QD = torch.zeros(4, x.shape[1], dtype=torch.float64)
        self.count_Q.index_add_(0, q, torch.ones_like(sq_norm_T))
        self.sq_norm_Q.index_add_(0, q, sq_norm_T)
        self.err_Q.index_add_(0, q, err_T)
        self.rel_err_Q.index_add_(0, q, err_T / sq_norm_T.clamp_min(1e-60))
        self.l2_ratio_Q.index_add_(0, q, x_hat.norm(dim=1) / sq_norm_T.sqrt().clamp_min(1e-30))
        self.sum_x_QD.index_add_(0, q, x)

    def state_dict(self) -> State:
        sum_x_QD = torch.empty(0, dtype=torch.float64) if self.sum_x_QD is None else self.sum_x_QD.clone()
        return {**super().state_dict(), "sum_x_QD": sum_x_QD}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        sum_x_QD = state["sum_x_QD"]
        assert isinstance(sum_x_QD, torch.Tensor)
        self.sum_x_QD = sum_x_QD.double().clone() if sum_x_QD.numel() else None

    def merge(self, other: _QuartileSums) -> None:
        super().merge(other)
        if other.sum_x_QD is not None:
            self.sum_x_QD = other.sum_x_QD.clone() if self.sum_x_QD is None else self.sum_x_QD + other.sum_x_QD

    def compute(self) -> list[MetricValue]:
        out = []
        for j in range(4):
            n_j = float(self.count_Q[j])
            if n_j == 0 or self.sum_x_QD is None:
                continue
            spread = float(self.sq_norm_Q[j]) - float(self.sum_x_QD[j].pow(2).sum()) / n_j
            if spread > 0:
                out.append(MetricValue(f"fvu_norm_q{j + 1}", float(self.err_Q[j]) / spread))
            out.append(MetricValue(f"rel_mse_norm_q{j + 1}", float(self.rel_err_Q[j]) / n_j))
        if float(self.count_Q[3]) > 0:
            out.append(MetricValue("l2_ratio_norm_q4", float(self.l2_ratio_Q[3] / self.count_Q[3])))
        return out


@stream_metric(
    "norm_quartiles",
    group="norm",
    produces=(
        "fvu_norm_q1",
        "fvu_norm_q2",
        "fvu_norm_q3",
        "fvu_norm_q4",
        "rel_mse_norm_q1",
        "rel_mse_norm_q2",
        "rel_mse_norm_q3",
        "rel_mse_norm_q4",
        "l2_ratio_norm_q4",
        "norm_outlier_tokens",
    ),
    requires=("norm_stats",),
)
class NormQuartiles(SumState):
    """Reconstruction per norm quartile and the outlier-token count: a few floats of state, so the jackknife's
    K + 1 copies of it are cheap (the detectors' d_sae × 512 histogram lives in `norm`, which has no jackknife)."""

    SUMS = ("outliers",)

    def __init__(self, sae: object, ctx: EvalContext) -> None:
        self.ctx = ctx
        self.outliers = 0
        self.quartiles = _QuartileSums()

    def update(self, batch: SaeBatch) -> None:
        norms_T = batch.norms_T
        self.outliers += int((norms_T > OUTLIER_MULTIPLE * self.ctx.median_norm).sum())
        self.quartiles.update(batch.x_TD, batch.x_hat_TD, quartile_index(norms_T, self.ctx))

    def state_dict(self) -> State:
        quartiles = {f"quartiles.{k}": v for k, v in self.quartiles.state_dict().items()}
        return {**super().state_dict(), **quartiles}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        prefix = "quartiles."
        self.quartiles.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def merge(self, other: NormQuartiles) -> None:
        super().merge(other)
        self.quartiles.merge(other.quartiles)

    def compute(self) -> list[MetricValue]:
        return [MetricValue("norm_outlier_tokens", float(self.outliers)), *self.quartiles.compute()]


@stream_metric(
    "norm",
    group="norm",
    produces=("norm_detectors", "norm_detectors_q4", "norm_detectors_auroc", "norm_detectors_renorm", "sink_detectors"),
    per_latent=("norm_q4_share", "norm_auroc", "norm_renorm_survival"),
    requires=("positions", "norm_stats"),
    # v3: the quartile values moved to `norm_quartiles`. No jackknife: every SAE-level value here is a count of
    # latents past a threshold, which gets no stderr (docs/uncertainty.md), so the d_sae × 512 histogram is neither
    # kept per block nor copied K + 1 times, and each batch is one update, not one per block.
    version=3,
    jackknife=False,
)
class NormDetectors(SumState):
    """Streams per-latent firing statistics against token norms; see the module docstring."""

    SUMS = ("fires_F", "q4_F", "survive_F", "sink_F", "outlier_fires_F", "hist_FB", "total_B")

    def __init__(self, sae: torch.nn.Module, ctx: EvalContext) -> None:
        self.sae, self.ctx = sae, ctx
        d_sae = int(sae.W_dec.shape[0])
        self.fires_F = torch.zeros(d_sae, dtype=torch.int64)
        self.q4_F = torch.zeros(d_sae, dtype=torch.int64)
        self.survive_F = torch.zeros(d_sae, dtype=torch.int64)
        self.sink_F = torch.zeros(d_sae, dtype=torch.int64)
        self.outlier_fires_F = torch.zeros(d_sae, dtype=torch.int64)
        self.max_position = 0
        self.hist_FB = torch.zeros(d_sae * N_BINS, dtype=torch.int32)
        self.total_B = torch.zeros(N_BINS, dtype=torch.int64)

    @torch.no_grad()
    def _renormed_survivors(self, batch: SaeBatch, norms_T: torch.Tensor) -> torch.Tensor:
        """For each nonzero code (t, i), whether latent i still fires once token t is rescaled to the median norm
        (x·m/‖x‖) [N]. Only the firing pairs matter: for a ReLU/JumpReLU SAE with an affine input map they follow
        from the codes themselves (evalkit.sae.score.fires_after_rescale, O(N)); other variants with a per-latent
        firing rule score just those pairs (fires_on_pairs, O(N·d_in)); the rest are re-encoded."""
        codes = batch.codes
        scale_T = self.ctx.median_norm / norms_T.clamp_min(1e-30)
        from_codes_N = fires_after_rescale(self.sae, scale_T, codes.token_N, codes.latent_N, codes.value_N)
        if from_codes_N is not None:
            return from_codes_N.to(codes.token_N.device)
        x_TD = batch.x_TD * scale_T.unsqueeze(1)
        device = self.sae.W_enc.device
        token_N, latent_N = codes.token_N.to(device), codes.latent_N.to(device)
        survive_N = fires_on_pairs(self.sae, x_TD.to(device), token_N, latent_N)
        if survive_N is None:
            survive_N = self.sae.encode(x_TD.to(device))[token_N, latent_N] != 0
        return survive_N.to(codes.token_N.device)

    def update(self, batch: SaeBatch) -> None:
        # Every per-latent count runs over the nonzero codes (shared with the other metrics): O(T·l0).
        codes = batch.codes
        norms_T = batch.norms_T
        q_T = quartile_index(norms_T, self.ctx)
        outlier_T = norms_T > OUTLIER_MULTIPLE * self.ctx.median_norm
        sink_T = (batch.positions_T == 0) | outlier_T
        self.fires_F += codes.latent_counts()
        self.q4_F += codes.latent_counts(q_T == 3)
        self.sink_F += codes.latent_counts(sink_T)
        self.outlier_fires_F += codes.latent_counts(outlier_T)
        if batch.positions_T.numel():
            self.max_position = max(self.max_position, int(batch.positions_T.max()))
        survived_N = self._renormed_survivors(batch, norms_T)
        self.survive_F += torch.bincount(codes.latent_N[survived_N], minlength=codes.d_sae).cpu()
        bins_T = norm_bins(norms_T, self.ctx)
        self.total_B += torch.bincount(bins_T, minlength=N_BINS).cpu()
        flat_N = (codes.latent_N * N_BINS + bins_T[codes.token_N]).cpu()
        self.hist_FB.index_add_(0, flat_N, torch.ones_like(flat_N, dtype=torch.int32))

    def state_dict(self) -> State:
        return {**super().state_dict(), "max_position": self.max_position}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        self.max_position = int(state["max_position"])

    def merge(self, other: NormDetectors) -> None:
        super().merge(other)
        self.max_position = max(self.max_position, other.max_position)

    def compute(self) -> list[MetricValue]:
        fires = self.fires_F.double()
        has = fires > 0
        q4_share_F = torch.where(has, self.q4_F / fires.clamp_min(1), torch.nan)
        survival_F = torch.where(has, self.survive_F / fires.clamp_min(1), torch.nan)
        # Flat activation files arrive as length-1 sequences: every token is at position 0, which says nothing
        # about attention sinks, so only the outlier criterion counts there.
        sink_fires_F = self.sink_F if self.max_position > 0 else self.outlier_fires_F
        sink_share_F = torch.where(has, sink_fires_F / fires.clamp_min(1), torch.nan)
        auroc_F = auroc_from_histograms(self.hist_FB.view(-1, N_BINS), self.total_B)
        classified = fires >= MIN_FIRINGS
        nd1, nd2 = classified & (q4_share_F >= ND1_Q4_SHARE), classified & (auroc_F >= ND2_AUROC)
        nd3 = classified & (survival_F < ND3_SURVIVAL)
        out = [
            MetricValue("norm_detectors", float((nd1 & nd3).sum())),
            MetricValue("norm_detectors_q4", float(nd1.sum())),
            MetricValue("norm_detectors_auroc", float(nd2.sum())),
            MetricValue("norm_detectors_renorm", float(nd3.sum())),
            MetricValue("sink_detectors", float((classified & (sink_share_F > SINK_SHARE)).sum())),
        ]
        for name, values_F in (
            ("norm_q4_share", q4_share_F),
            ("norm_auroc", auroc_F),
            ("norm_renorm_survival", survival_F),
        ):
            as_list = values_F.tolist()  # one conversion, not one tensor index per latent
            out += [
                MetricValue(name, as_list[i], latent=i) for i in torch.isfinite(values_F).nonzero().flatten().tolist()
            ]
        return out


@weights_metric(
    "norm_dependence", group="norm", produces=("norm_dependence_a",), per_latent=("norm_dependence_a_latent",)
)
def norm_dependence_metric(sae: torch.nn.Module, ctx: EvalContext) -> list[MetricValue]:
    a_F = norm_exponents(sae)
    per_latent = [MetricValue("norm_dependence_a_latent", float(v), latent=i) for i, v in enumerate(a_F.tolist())]
    return [MetricValue("norm_dependence_a", float(a_F.mean())), *per_latent]
