"""The numbers SAEBench v0.6.0's core eval reports that evalkit's own metrics do not (group `core`).

They exist so `saebench/<stem>_core_eval_results.json` can carry SAEBench's meaning under SAEBench's keys
(docs/saebench.md). evalkit's own definitions (metrics/core.py) stay the headline; these mirror SAEBench's
formulas, including the ones that are not what their name says:

- `mse_saebench`: SAEBench divides each token's squared error by the number of evaluated tokens in its
  batch before averaging, so its "mse" is evalkit's mse divided by the batch's token count (it depends on the
  batch size, which the JSON's eval_config records).
- `l2_norm_in`, `l2_norm_out`: mean ‖x‖ and mean ‖x̂‖ over evaluation tokens.
- `freq_over_1_percent`, `freq_over_10_percent`: share of latents with density > 1% / > 10%;
  `normalized_freq_over_*`: the share of total firing mass those latents carry (0 when nothing fires).
- per latent `consistent_activation_heuristic`: firings per sequence that has at least one firing. The
  runner's `seq_index` extra names each kept token's sequence; without it, a position not larger than the
  previous one starts a new sequence.
- weights: per latent `encoder_bias` (gated: b_mag; top-AFA: 0), `encoder_norm` ‖W_enc[:,i]‖,
  `encoder_decoder_cosine_sim`, `max_encoder_cosine_sim`, `max_decoder_cosine_sim` (the largest signed cosine
  to any other latent, computed in blocks), and their SAE-level means `average_max_*_cosine_sim`. This entry,
  `saebench_weights`, runs only when named in --metrics (`all,saebench_weights`): its two Gram passes cost
  O(d_sae²·d_in) per SAE. Without it the SAEBench JSON, which requires the averages, is not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, SumState, stream_metric, weights_metric
from metrics.weight_cosines import decoder_cosines, max_cosine_to_others

SEQ_INDEX_KEY = "seq_index"
"""SaeBatch.extras key under which the runner passes each kept token's sequence index."""


def _sequence_ids(positions_T: torch.Tensor) -> torch.Tensor:
    """0, 0, 0, 1, 1, ...: a new sequence wherever the position does not increase."""
    if positions_T.numel() == 0:
        return positions_T.to(torch.long)
    starts_T = torch.ones_like(positions_T, dtype=torch.long)
    starts_T[1:] = (positions_T[1:] <= positions_T[:-1]).to(torch.long)
    starts_T[0] = 0
    return starts_T.cumsum(0)


LATENT_SHARES = (
    "freq_over_1_percent",
    "freq_over_10_percent",
    "normalized_freq_over_1_percent",
    "normalized_freq_over_10_percent",
)
"""Shares of latents (or of firing mass) past a density threshold: no token-level stderr."""


@stream_metric(
    "saebench_core",
    group="core",
    produces=(
        "mse_saebench",
        "l2_norm_in",
        "l2_norm_out",
        "freq_over_1_percent",
        "freq_over_10_percent",
        "normalized_freq_over_1_percent",
        "normalized_freq_over_10_percent",
    ),
    per_latent=("consistent_activation_heuristic",),
    version=2,  # v2: no stderr for the shares of latents past a density threshold (docs/uncertainty.md)
    no_stderr=LATENT_SHARES,
)
class SaeBenchCore(SumState):
    """SAEBench's per-batch-normalised mse, input/output norms, density shares and per-sequence firing counts."""

    SUMS = ("n_tokens", "sum_err_over_batch", "sum_norm_in", "sum_norm_out")

    def __init__(self, sae: Any, ctx: EvalContext) -> None:
        self.n_tokens = 0
        self.sum_err_over_batch = 0.0  # Σ_t ‖x_t − x̂_t‖² / n_batch(t)
        self.sum_norm_in = 0.0
        self.sum_norm_out = 0.0
        self.fires_F: torch.Tensor | None = None  # firing tokens per latent
        self.seqs_F: torch.Tensor | None = None  # sequences with at least one firing, per latent

    def update(self, batch: SaeBatch) -> None:
        n = batch.x_TD.shape[0]
        if n == 0:
            return
        x_TD = batch.x_TD.detach().to("cpu", torch.float64)
        xh_TD = batch.x_hat_TD.detach().to("cpu", torch.float64)
        self.n_tokens += n
        # Per *source* batch, also when this batch is one jackknife block of it.
        self.sum_err_over_batch += float((x_TD - xh_TD).pow(2).sum()) / (batch.source_n_tokens or n)
        self.sum_norm_in += float(x_TD.norm(dim=-1).sum())
        self.sum_norm_out += float(xh_TD.norm(dim=-1).sum())
        # Over the nonzero codes (shared with the other metrics): positive codes only, as SAEBench counts.
        codes = batch.codes
        positive_N = codes.value_N > 0
        token_N, latent_N = codes.token_N[positive_N].cpu(), codes.latent_N[positive_N].cpu()
        seq_T = batch.extras.get(SEQ_INDEX_KEY)
        if seq_T is None:
            seq_T = _sequence_ids(batch.positions_T.detach().to("cpu"))
        seq_T = seq_T.detach().to("cpu", torch.long)
        seq_T = seq_T - seq_T.min()
        n_latents = codes.d_sae
        fires_F = torch.bincount(latent_N, minlength=n_latents).to(torch.float64)
        # A (sequence, latent) pair counts once however many of the sequence's tokens fire.
        pairs = torch.unique(seq_T[token_N] * n_latents + latent_N)
        seqs_F = torch.bincount(pairs % n_latents, minlength=n_latents).to(torch.float64)
        self.fires_F = fires_F if self.fires_F is None else self.fires_F + fires_F
        self.seqs_F = seqs_F if self.seqs_F is None else self.seqs_F + seqs_F

    def state_dict(self) -> State:
        empty = torch.empty(0, dtype=torch.float64)
        fires_F = empty if self.fires_F is None else self.fires_F.clone()
        seqs_F = empty if self.seqs_F is None else self.seqs_F.clone()
        return {**super().state_dict(), "fires_F": fires_F, "seqs_F": seqs_F}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        super().load_state_dict(state)
        fires_F, seqs_F = state["fires_F"], state["seqs_F"]
        assert isinstance(fires_F, torch.Tensor) and isinstance(seqs_F, torch.Tensor)
        self.fires_F = fires_F.double().clone() if fires_F.numel() else None
        self.seqs_F = seqs_F.double().clone() if seqs_F.numel() else None

    def merge(self, other: SaeBenchCore) -> None:
        """Sequences are whole within a batch, so per-sequence firing counts add across shards."""
        super().merge(other)
        if other.fires_F is None or other.seqs_F is None:
            return
        if self.fires_F is None or self.seqs_F is None:
            self.fires_F, self.seqs_F = other.fires_F.clone(), other.seqs_F.clone()
            return
        self.fires_F = self.fires_F + other.fires_F
        self.seqs_F = self.seqs_F + other.seqs_F

    def compute_named(self, names: frozenset[str]) -> list[MetricValue]:
        """SAE-level values among `names`, without the per-latent heuristic."""
        return [v for v in self._sae_level() if v.metric in names and math.isfinite(v.value)]

    def compute(self) -> list[MetricValue]:
        values = self._sae_level()
        if not values or self.fires_F is None or self.seqs_F is None:
            return []
        # A latent that never fired has no sequences: SAEBench writes 0/0 = NaN; evalkit writes no row.
        cah_F = self.fires_F / self.seqs_F.clamp_min(1.0)
        values += [
            MetricValue("consistent_activation_heuristic", float(v), latent=i)
            for i, (v, s) in enumerate(zip(cah_F.tolist(), self.seqs_F.tolist(), strict=True))
            if s > 0
        ]
        return [v for v in values if math.isfinite(v.value)]

    def _sae_level(self) -> list[MetricValue]:
        if self.n_tokens == 0 or self.fires_F is None or self.seqs_F is None:
            return []
        n = self.n_tokens
        density_F = self.fires_F / n
        total = float(density_F.sum())
        over1, over10 = density_F > 0.01, density_F > 0.1
        return [
            MetricValue("mse_saebench", self.sum_err_over_batch / n),
            MetricValue("l2_norm_in", self.sum_norm_in / n),
            MetricValue("l2_norm_out", self.sum_norm_out / n),
            MetricValue("freq_over_1_percent", float(over1.to(torch.float64).mean())),
            MetricValue("freq_over_10_percent", float(over10.to(torch.float64).mean())),
            MetricValue("normalized_freq_over_1_percent", float(density_F[over1].sum()) / total if total else 0.0),
            MetricValue("normalized_freq_over_10_percent", float(density_F[over10].sum()) / total if total else 0.0),
        ]


def _decoder_max_cosines(sae: Any) -> torch.Tensor:
    max_F = decoder_cosines(sae, signed_max=True).max_signed_F
    assert max_F is not None  # asked for
    return max_F


def _encoder_bias(sae: Any) -> torch.Tensor:
    """The bias SAEBench reports: b_mag for gated SAEs, b_enc where it exists, else zeros (top-AFA)."""
    for name in ("b_enc", "b_mag"):
        bias = getattr(sae, name, None)
        if isinstance(bias, torch.Tensor):
            return bias
    return torch.zeros(sae.W_dec.shape[0])


@weights_metric(
    "saebench_weights",
    group="core",
    # Two Gram passes (encoder, decoder) per SAE, O(d_sae²·d_in) whatever the token count: at d_sae 24,576 more
    # than evaluating the SAE on 4,096 tokens with the model. Computed when named in --metrics, not by core/all.
    on_request=True,
    produces=("average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim"),
    per_latent=(
        "encoder_bias",
        "encoder_norm",
        "encoder_decoder_cosine_sim",
        "max_encoder_cosine_sim",
        "max_decoder_cosine_sim",
    ),
)
def saebench_weights(sae: Any, ctx: EvalContext) -> list[MetricValue]:
    w_enc_FD = sae.W_enc.detach().to("cpu", torch.float64).T
    w_dec_FD = sae.W_dec.detach().to("cpu", torch.float64)
    per_latent = {
        "encoder_bias": _encoder_bias(sae).detach().to("cpu", torch.float64).reshape(-1),
        "encoder_norm": w_enc_FD.norm(dim=-1),
        "encoder_decoder_cosine_sim": torch.nn.functional.cosine_similarity(w_enc_FD, w_dec_FD, dim=-1),
        "max_encoder_cosine_sim": max_cosine_to_others(w_enc_FD),
        # The decoder's pass is shared with decoder_eps (group afa): one Gram pass per SAE for both.
        "max_decoder_cosine_sim": _decoder_max_cosines(sae),
    }
    values = [
        MetricValue("average_max_encoder_cosine_sim", float(per_latent["max_encoder_cosine_sim"].mean())),
        MetricValue("average_max_decoder_cosine_sim", float(per_latent["max_decoder_cosine_sim"].mean())),
    ]
    for name, v_F in per_latent.items():
        values += [MetricValue(name, float(v), latent=i) for i, v in enumerate(v_F.tolist())]
    return [v for v in values if math.isfinite(v.value)]
