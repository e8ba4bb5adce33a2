"""The metric protocol: typed records, the registry, and the three kinds of metric.

- stream:  an accumulator class `cls(sae, ctx)` with `update(SaeBatch)` and `compute() -> list[MetricValue]`.
- weights: a function `fn(sae, ctx) -> list[MetricValue]` of the SAE's parameters alone.
- group:   a function `fn(saes: dict[sae_id, SAE], ctx) -> dict[sae_id, list[MetricValue]]` over a seed group.

Metrics never read files, load models or print: they receive tensors and return numbers.

Per-token samples: a stream accumulator may also define `samples() -> dict[str, list[float]] | None` (see
`SamplingMetric`): equal-length float columns, e.g. a seeded reservoir of evaluation tokens, for the report's
plots. The runner stores them inside that metric's cached shard (so resumed and cached runs reproduce them
exactly) and writes them to `DIR/<metric group>/<file_stem(sae_id)>.csv`, one file per SAE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from evalkit.errors import EvalkitInputError
from evalkit.registry import Registry

MetricKind = Literal["stream", "weights", "group"]
GROUPS = ("core", "downstream", "sparsity", "alignment", "norm", "afa", "stability", "concepts", "probing")


@dataclass(frozen=True)
class MetricValue:
    """One number: SAE-level when `latent` is None, else for that latent."""

    metric: str
    value: float
    latent: int | None = None


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
    _norms_T: torch.Tensor | None = None

    @property
    def norms_T(self) -> torch.Tensor:
        if self._norms_T is None:
            self._norms_T = self.x_TD.norm(dim=-1)
        return self._norms_T


class StreamingMetric(Protocol):
    def update(self, batch: SaeBatch) -> None: ...

    def compute(self) -> list[MetricValue]: ...


Samples = dict[str, list[float]]
"""Named per-token columns of equal length (a sample a metric keeps for the report's plots)."""


class SamplingMetric(StreamingMetric, Protocol):
    """A stream accumulator that also keeps a per-token sample; None when it has nothing to show."""

    def samples(self) -> Samples | None: ...


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: one factory producing one or more named values."""

    name: str
    group: str
    kind: MetricKind
    factory: Callable[..., Any]
    produces: tuple[str, ...]
    """SAE-level metric names this entry emits."""
    per_latent: tuple[str, ...] = ()
    """Per-latent metric names this entry emits."""
    requires: frozenset[str] = frozenset()
    """Inputs beyond activations: 'model', 'labels', 'tokens', 'positions', 'seed_group'."""
    version: int = 1
    """Bump when the definition changes, so cached results are recomputed."""

    @property
    def names(self) -> tuple[str, ...]:
        return self.produces + self.per_latent


METRICS: Registry[MetricSpec] = Registry("metric")


def _register(
    kind: MetricKind,
    name: str,
    group: str,
    produces: Sequence[str],
    per_latent: Sequence[str],
    requires: Sequence[str],
    version: int,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        METRICS.add(
            name,
            MetricSpec(name, group, kind, factory, tuple(produces), tuple(per_latent), frozenset(requires), version),
        )
        return factory

    return deco


def stream_metric(
    name: str,
    *,
    group: str,
    produces: Sequence[str] = (),
    per_latent: Sequence[str] = (),
    requires: Sequence[str] = (),
    version: int = 1,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an accumulator class `cls(sae, ctx)` with update/compute."""
    return _register("stream", name, group, produces, per_latent, requires, version)


def weights_metric(
    name: str,
    *,
    group: str,
    produces: Sequence[str] = (),
    per_latent: Sequence[str] = (),
    requires: Sequence[str] = (),
    version: int = 1,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function `fn(sae, ctx) -> list[MetricValue]` of the weights alone."""
    return _register("weights", name, group, produces, per_latent, requires, version)


def group_metric(
    name: str,
    *,
    group: str,
    produces: Sequence[str] = (),
    per_latent: Sequence[str] = (),
    requires: Sequence[str] = ("seed_group",),
    version: int = 1,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function `fn(saes: dict[str, SAE], ctx) -> dict[str, list[MetricValue]]` over a seed group."""
    return _register("group", name, group, produces, per_latent, requires, version)


def select_metrics(selection: str, where: str = "--metrics") -> list[MetricSpec]:
    """Resolve 'core,l0,alignment' (entry names, metric names, groups or 'all') to registered specs, in order."""
    by_output: Mapping[str, MetricSpec] = {n: s for _, s in METRICS.items() for n in s.names}
    chosen: dict[str, MetricSpec] = {}
    for word in (w.strip() for w in selection.split(",") if w.strip()):
        if word == "autointerp":  # not a registered metric: the runner's autointerp stage handles it
            continue
        if word == "all":
            matches = [s for _, s in METRICS.items()]
        elif word in GROUPS:
            matches = [s for _, s in METRICS.items() if s.group == word]
        elif word in METRICS:
            matches = [METRICS.get(word)]
        elif word in by_output:
            matches = [by_output[word]]
        else:
            known = Registry[object]("metric or group")
            for n in [*GROUPS, *METRICS, *by_output, "all", "autointerp"]:
                known.add(n, n)
            raise EvalkitInputError(where, known.unknown_message(word))
        for spec in matches:
            chosen.setdefault(spec.name, spec)
    return list(chosen.values())
