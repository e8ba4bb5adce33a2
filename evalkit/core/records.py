"""The records every layer shares: a metric's value, what the runner tells metrics, one SAE on one batch, and
the identity and content of one cached result. Plain data; importing this pulls in nothing of evalkit but torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class MetricValue:
    """One number: SAE-level when `latent` is None, else for that latent."""

    metric: str
    value: float
    latent: int | None = None
    stderr: float | None = None
    """Token-level standard error (metrics.jackknife); None where undefined, e.g. metrics of the weights alone."""


@dataclass(frozen=True)
class EvalContext:
    """What the runner knows about the evaluation data before the metric pass (from its norm pre-pass)."""

    median_norm: float
    """Median ‖x_t‖ over evaluation tokens."""
    norm_q25: float
    norm_q75: float
    """Quartile cuts of ‖x_t‖ over evaluation tokens (Q50 is median_norm)."""
    n_tokens: int
    """Evaluation tokens (after special-token and norm filtering)."""
    label_names: tuple[str, ...] = ()
    """Concept label names when the source has token labels."""
    seed: int = 0
    """Seed for any sampling a metric does (probe splits, subsampling)."""


@dataclass(frozen=True)
class SparseCodes:
    """The nonzero codes of one batch as (token, latent, value) triples in token-major order.

    Built once per SaeBatch with one scan of the dense codes and shared by every metric: with l0 active latents
    per token, counting and summing over them is O(T·l0) where the dense [T, d_sae] codes cost O(T·d_sae) per
    scan (a column-wise count over dense codes is the slowest of all).
    """

    token_N: torch.Tensor
    """Row (kept token) of each nonzero code [N], int64."""
    latent_N: torch.Tensor
    """Latent of each nonzero code [N], int64."""
    value_N: torch.Tensor
    """The code's value [N], in the codes' dtype."""
    n_tokens: int
    d_sae: int

    @classmethod
    def from_dense(cls, f_TF: torch.Tensor) -> SparseCodes:
        token_N, latent_N = f_TF.nonzero(as_tuple=True)
        return cls(token_N, latent_N, f_TF[token_N, latent_N], int(f_TF.shape[0]), int(f_TF.shape[1]))

    def per_token(self, values_N: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token sum of `values_N` [T] (float64); without values, the number of active latents (l0)."""
        weights = None if values_N is None else values_N.to(torch.float64)
        out = torch.bincount(self.token_N, weights=weights, minlength=self.n_tokens)
        return out.to(torch.float64)

    def latent_counts(self, token_mask_T: torch.Tensor | None = None) -> torch.Tensor:
        """Firings per latent [d_sae] (int64, CPU), over all tokens or those where `token_mask_T` is True."""
        latent_N = self.latent_N if token_mask_T is None else self.latent_N[token_mask_T[self.token_N]]
        return torch.bincount(latent_N, minlength=self.d_sae).to("cpu", torch.int64)


@dataclass
class SaeBatch:
    """One SAE applied to the kept tokens of one batch; computed once by the runner and shared by every metric."""

    sae: Any
    """The sae-lens SAE (evalkit variants included)."""
    x_TD: torch.Tensor
    """Kept tokens' raw activations [T, d_in], float32."""
    x_hat_TD: torch.Tensor
    """Reconstructions [T, d_in]."""
    f_TF: torch.Tensor
    """Codes [T, d_sae]."""
    positions_T: torch.Tensor
    """Position of each kept token in its sequence [T]."""
    tokens_T: torch.Tensor | None = None
    labels_TL: torch.Tensor | None = None
    """0/1 labels [T, n_labels] when the source has them."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-token values the runner computed for some metrics (e.g. downstream CE/KL), keyed by name."""
    token_keys_T: torch.Tensor | None = None
    """A stable int64 identity per kept token across the whole evaluation of a hook: `token_key(sequence index in
    the hook's data, position)`. The same whichever worker or shard reads the token; None in hand-built batches."""
    x_mean_D: torch.Tensor | None = None
    """Mean of x (float64, CPU) over the kept tokens of the whole batch the source yielded, when this batch is a
    slice of it (a jackknife block); None = this is the whole batch."""
    source_n_tokens: int | None = None
    """Kept tokens of that whole source batch (per-batch normalisations, e.g. SAEBench's mse); None = len(x_TD)."""
    _norms_T: torch.Tensor | None = None
    _codes: SparseCodes | None = None
    _mean64_D: torch.Tensor | None = None

    def source_mean_D(self) -> torch.Tensor:
        """`x_mean_D`, or (a whole batch) the mean of x_TD in float64 on the CPU, computed once and shared by every
        jackknife block of every metric of this batch (a float64 copy of x per block and metric before)."""
        if self.x_mean_D is not None:
            return self.x_mean_D
        if self._mean64_D is None:
            self._mean64_D = self.x_TD.detach().to("cpu", torch.float64).mean(0)
        return self._mean64_D

    @property
    def norms_T(self) -> torch.Tensor:
        if self._norms_T is None:
            self._norms_T = self.x_TD.norm(dim=-1)
        return self._norms_T

    @property
    def codes(self) -> SparseCodes:
        """The nonzero codes (computed on first use, then shared by every metric of this batch)."""
        if self._codes is None:
            self._codes = SparseCodes.from_dense(self.f_TF.detach())
        return self._codes

    def token_keys(self, n_seen: int) -> torch.Tensor:
        """Stable token keys [T] (int64, CPU); without `token_keys_T`, the running index `n_seen + t` (a single
        unsplit stream: the accumulator passes how many tokens it has already seen)."""
        if self.token_keys_T is not None:
            return self.token_keys_T.to("cpu", torch.int64)
        return torch.arange(n_seen, n_seen + self.x_TD.shape[0], dtype=torch.int64)


POSITION_BITS = 24
"""Token keys reserve this many low bits for the position inside a sequence (sequences up to 16M tokens)."""


def token_key(seq_index_T: torch.Tensor, positions_T: torch.Tensor) -> torch.Tensor:
    """The stable key of tokens [T]: sequence index in the hook's data, then position (int64)."""
    return (seq_index_T.to("cpu", torch.int64) << POSITION_BITS) | positions_T.to("cpu", torch.int64)


@dataclass(frozen=True)
class ResultKey:
    """The identity of one cached result."""

    sae_hash: str
    entry: str
    config_hash: str


@dataclass(frozen=True)
class SampleTable:
    """A metric's per-token sample (metrics.base.SamplingMetric), written to DIR/<folder>/<stem>.csv."""

    folder: str
    columns: dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class Shard:
    """The values one metric entry produced for one SAE, with the token count they rest on."""

    key: ResultKey
    values: tuple[MetricValue, ...]
    n_tokens: int
    computed_at_ms: int
    """When the values were first computed (kept on reuse, so reports built from a cache do not change)."""
    label_names: tuple[str, ...] = ()
    """The label names the values' label indices refer to (metrics that need labels), as at compute time."""
    samples: SampleTable | None = None
