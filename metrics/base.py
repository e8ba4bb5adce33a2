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

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import MetricValue, SaeBatch
from evalkit.core.registry import Registry

log = logging.getLogger(__name__)

MetricKind = Literal["stream", "weights", "group"]
GROUPS = ("core", "downstream", "sparsity", "alignment", "norm", "afa", "stability", "concepts", "probing")


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


def load_metric_modules() -> list[str]:
    """Import every module of the `metrics` package so its registrations run; returns the ones that failed."""
    failed = []
    for info in pkgutil.iter_modules(_metrics_package_path()):
        try:
            importlib.import_module(f"metrics.{info.name}")
        except Exception as exc:  # a half-written metric module must not take the runner down; it is reported
            log.warning("metric module metrics.%s failed to import: %s", info.name, exc)
            failed.append(info.name)
    return failed


def _metrics_package_path() -> list[str]:
    import metrics

    return list(metrics.__path__)


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
