"""The metric protocol: typed records, the registry, and the three kinds of metric.

- stream:  an accumulator class `cls(sae, ctx)` with `update(SaeBatch)` and `compute() -> list[MetricValue]`.
- weights: a function `fn(sae, ctx) -> list[MetricValue]` of the SAE's parameters alone.
- group:   a function `fn(saes: dict[sae_id, SAE], ctx) -> dict[sae_id, list[MetricValue]]` over a seed group.

Metrics never read files, load models or print: they receive tensors and return numbers.

State protocol (every stream accumulator): `state_dict()` returns what `update` accumulated as a flat dict of
CPU tensors and plain numbers (see `StateValue`), `load_state_dict(state)` restores it into a fresh `cls(sae, ctx)`,
and `merge(other)` folds in an accumulator of the same class and (sae, ctx) that saw *other* tokens. Checkpoints
(save mid-pass, resume) and split runs (workers on token shards, merged by the driver) rest on these three; the
contract test tests/test_metrics_state.py holds every registered stream metric to them. Samplers draw their
randomness from `token_priority` of each token's stable key (`SaeBatch.token_keys`), never from a generator's
position, so the sample of a merged stream is the sample of the whole stream.

Leave-one-out values: the jackknife (metrics.jackknife) recomputes an accumulator K more times, wanting only the
SAE-level values that get a stderr (`MetricSpec.stderr_names`). An accumulator whose compute() also builds costly
per-latent or thresholded values may define `compute_named(names: frozenset[str]) -> list[MetricValue]`: those
SAE-level values only (the same numbers compute() gives for them); without it, compute() is used.

Per-token samples: a stream accumulator may also define `samples() -> dict[str, list[float]] | None` (see
`SamplingMetric`): equal-length float columns, e.g. a seeded reservoir of evaluation tokens, for the report's
plots. The runner stores them inside that metric's cached shard (so resumed and cached runs reproduce them
exactly) and writes them to `DIR/<metric group>/<file_stem(sae_id)>.csv`, one file per SAE.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from evalkit.core.registry import Registry

MetricKind = Literal["stream", "weights", "group"]
GROUPS = ("core", "downstream", "sparsity", "alignment", "norm", "afa", "stability", "concepts", "probing")


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK64
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK64
        return z ^ (z >> np.uint64(31))


def token_priority(keys_T: torch.Tensor, seed: int, stream: torch.Tensor | int | None = None) -> torch.Tensor:
    """A seeded pseudo-random priority in [0, 1) per token key (float64): splitmix64 of (key, seed[, stream]).

    A pure function of the key, so a sample "k largest priorities" of a stream is the same however the stream was
    split into batches, shards or workers, and merges exactly. `stream` (an int, or ints broadcast against the
    keys, e.g. a latent index) draws independent priorities for the same tokens."""
    z = keys_T.cpu().numpy().astype(np.uint64) ^ _splitmix64(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    z = _splitmix64(z)
    if stream is not None:
        tag = stream.cpu().numpy() if isinstance(stream, torch.Tensor) else np.asarray(stream)
        z = _splitmix64(z ^ _splitmix64(tag.astype(np.uint64) + np.uint64(1)))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))


StateValue = torch.Tensor | int | float | bool
"""What an accumulator's state holds: CPU tensors and plain numbers (no None, no objects). `torch.save` and
`torch.load(..., weights_only=True)` round-trip it; `pack_state`/`unpack_state` make it safetensors-ready."""
State = dict[str, StateValue]


class StreamingMetric(Protocol):
    """A stream accumulator `cls(sae, ctx)`. Beyond update/compute, the state protocol:

    - `state_dict() -> State`: a snapshot (copies) of everything `update` accumulated; flat string keys. Nothing
      that the constructor rebuilds from (sae, ctx) is in it.
    - `load_state_dict(state)`: replace this accumulator's state by `state` (from an accumulator built with the
      same sae and ctx); then `update` continues exactly as the one that wrote it would have.
    - `merge(other)`: fold in `other` (same class, same sae and ctx) that saw a disjoint set of tokens; afterwards
      `compute()` and `samples()` equal those of one accumulator that saw both streams: exact for counts, to float
      rounding (≤ 1e-6 relative) for float sums, identical samples. Batches must be whole in one of the parts
      (shards are ranges of batches), and tokens carry their stable `token_keys_T` when samplers are involved.
    """

    def update(self, batch: SaeBatch) -> None: ...

    def compute(self) -> list[MetricValue]: ...

    def state_dict(self) -> State: ...

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None: ...

    def merge(self, other: Any) -> None: ...


class SumState:
    """The state protocol for an accumulator whose whole state is additive attributes named in `SUMS` (ints,
    floats or tensors, initialised in `__init__`): state out/in copies them, merge adds them."""

    SUMS: tuple[str, ...] = ()

    def state_dict(self) -> State:
        return {name: _copy(getattr(self, name)) for name in self.SUMS}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        for name in self.SUMS:
            current = getattr(self, name)
            value = state[name]
            if isinstance(current, torch.Tensor):
                setattr(self, name, torch.as_tensor(value).to(current.dtype).clone())
            else:
                setattr(self, name, type(current)(value))

    def merge(self, other: Any) -> None:
        for name in self.SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _copy(value: StateValue) -> StateValue:
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def pack_state(state: Mapping[str, StateValue]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) for safetensors' save_file: numbers become 0-d tensors, their kind goes in metadata."""
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, str] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            continue
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float"
        dtype = {"bool": torch.bool, "int": torch.int64, "float": torch.float64}[kind]
        tensors[key] = torch.tensor(value, dtype=dtype)
        kinds[key] = kind
    return tensors, kinds


def unpack_state(tensors: Mapping[str, torch.Tensor], kinds: Mapping[str, str]) -> State:
    """The inverse of `pack_state`."""
    cast = {"bool": bool, "int": int, "float": float}
    return {key: cast[kinds[key]](t.item()) if key in kinds else t for key, t in tensors.items()}


def restore(factory: Any, sae: Any, ctx: EvalContext, state: Mapping[str, StateValue]) -> StreamingMetric:
    """A fresh accumulator `factory(sae, ctx)` holding `state`."""
    acc = factory(sae, ctx)
    acc.load_state_dict(state)
    return acc


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
    """Inputs beyond activations (REQUIREMENTS): 'model', 'labels', 'tokens', 'positions', 'seed_group', and
    'norm_stats' for a metric that reads the EvalContext's norm statistics (the runner's pre-pass computes them)."""
    version: int = 1
    """Bump when the definition changes, so cached results are recomputed."""
    jackknife: bool = True
    """Stream metrics: report token-level standard errors (metrics.jackknife). Off where K + 1 computes are too
    costly (probe fits); the stderr of those values is then null."""
    no_stderr: tuple[str, ...] = ()
    """SAE-level names in `produces` whose stderr stays null although the entry has a jackknife: statistics that
    are not smooth functions of token means, e.g. counts of latents past a threshold (a latent flips in or out
    when a block is left out: the delete-a-block jackknife overstates their spread, docs/uncertainty.md)."""

    @property
    def stderr_names(self) -> tuple[str, ...]:
        """The SAE-level names that get a token-level stderr (none unless a stream metric with a jackknife)."""
        if self.kind != "stream" or not self.jackknife:
            return ()
        return tuple(n for n in self.produces if n not in self.no_stderr)

    optional: tuple[str, ...] = ()
    """SAE-level names in `produces` that may be absent where they are undefined (e.g. a bimodality coefficient of
    constant values); every other name in `produces` is always emitted."""
    on_request: bool = False
    """Selected only when named in `--metrics` (its entry name or one of its metric names), never by its group or
    `all`: costly entries a researcher asks for on purpose (saebench_weights: O(d_sae²·d_in) per SAE)."""

    @property
    def names(self) -> tuple[str, ...]:
        return self.produces + self.per_latent


REQUIREMENTS = frozenset({"model", "labels", "tokens", "positions", "seed_group", "norm_stats"})

METRICS: Registry[MetricSpec] = Registry("metric")


class MetricContractError(RuntimeError):
    """A metric emitted values its registration does not declare (a bug in the metric, not bad input)."""


def check_emitted(spec: MetricSpec, values: Sequence[MetricValue], d_sae: int) -> None:
    """Raise unless `values` are exactly what `spec` declares: every SAE-level name in `produces` (bar `optional`)
    once, per-latent names only with a latent index in [0, d_sae), at most once per latent, and nothing else."""
    level = [v.metric for v in values if v.latent is None]
    problems = [f"undeclared SAE-level value {n!r}" for n in sorted(set(level) - set(spec.produces))]
    problems += [f"SAE-level {n!r} emitted {level.count(n)} times" for n in sorted(set(level)) if level.count(n) > 1]
    problems += [f"missing {n!r}" for n in spec.produces if n not in level and n not in spec.optional]
    latent = [(v.metric, v.latent) for v in values if v.latent is not None]
    problems += [f"undeclared per-latent value {n!r}" for n in sorted({n for n, _ in latent} - set(spec.per_latent))]
    problems += [f"{n!r} for latent {i} outside [0, {d_sae})" for n, i in latent if not 0 <= int(i) < d_sae]
    if len(set(latent)) != len(latent):
        problems.append("a per-latent value emitted twice for one latent")
    if problems:
        raise MetricContractError(f"metric {spec.name}: " + "; ".join(problems[:5]))


def _register(
    kind: MetricKind,
    name: str,
    group: str,
    produces: Sequence[str],
    per_latent: Sequence[str],
    requires: Sequence[str],
    version: int,
    optional: Sequence[str] = (),
    jackknife: bool = False,
    on_request: bool = False,
    no_stderr: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}")
    if unknown := set(requires) - REQUIREMENTS:
        raise ValueError(f"metric {name!r}: unknown requirements {sorted(unknown)}")
    if stray := set(optional) - set(produces):
        raise ValueError(f"metric {name!r}: optional names {sorted(stray)} are not in produces")
    if stray := set(no_stderr) - set(produces):
        raise ValueError(f"metric {name!r}: no_stderr names {sorted(stray)} are not in produces")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        spec = MetricSpec(
            name,
            group,
            kind,
            factory,
            tuple(produces),
            tuple(per_latent),
            frozenset(requires),
            version,
            jackknife=jackknife,
            no_stderr=tuple(no_stderr),
            optional=tuple(optional),
            on_request=on_request,
        )
        METRICS.add(name, spec)
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
    optional: Sequence[str] = (),
    jackknife: bool = True,
    no_stderr: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an accumulator class `cls(sae, ctx)` with update/compute (and the state protocol, which gives
    its SAE-level values token-level standard errors unless `jackknife=False`; the names in `no_stderr` get
    none)."""
    return _register(
        "stream", name, group, produces, per_latent, requires, version, optional, jackknife, no_stderr=no_stderr
    )


def weights_metric(
    name: str,
    *,
    group: str,
    produces: Sequence[str] = (),
    per_latent: Sequence[str] = (),
    requires: Sequence[str] = (),
    version: int = 1,
    optional: Sequence[str] = (),
    on_request: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function `fn(sae, ctx) -> list[MetricValue]` of the weights alone (`on_request`: see MetricSpec)."""
    return _register("weights", name, group, produces, per_latent, requires, version, optional, on_request=on_request)


def group_metric(
    name: str,
    *,
    group: str,
    produces: Sequence[str] = (),
    per_latent: Sequence[str] = (),
    requires: Sequence[str] = ("seed_group",),
    version: int = 1,
    optional: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function `fn(saes: dict[str, SAE], ctx) -> dict[str, list[MetricValue]]` over a seed group."""
    return _register("group", name, group, produces, per_latent, requires, version, optional)


class MetricImportError(RuntimeError):
    """A module of the metrics package failed to import: the run stops rather than silently dropping its metrics."""


def load_metric_modules() -> None:
    """Import every module of the `metrics` package so its registrations run (idempotent)."""
    for info in pkgutil.iter_modules(_metrics_package_path()):
        try:
            importlib.import_module(f"metrics.{info.name}")
        except Exception as exc:
            raise MetricImportError(f"metric module metrics.{info.name} failed to import: {exc!r}") from exc


def _metrics_package_path() -> list[str]:
    import metrics

    return list(metrics.__path__)


def select_metrics(selection: str, where: str = "--metrics") -> list[MetricSpec]:
    """Resolve 'core,l0,alignment' (entry names, metric names, groups or 'all') to registered specs, in order.
    Entries registered `on_request` come only from their own names, never from a group or 'all'."""
    load_metric_modules()
    by_output: Mapping[str, MetricSpec] = {n: s for _, s in METRICS.items() for n in s.names}
    chosen: dict[str, MetricSpec] = {}
    for word in (w.strip() for w in selection.split(",") if w.strip()):
        if word == "autointerp":  # not a registered metric: the runner's autointerp stage handles it
            continue
        if word == "all":
            matches = [s for _, s in METRICS.items() if not s.on_request]
        elif word in GROUPS:
            matches = [s for _, s in METRICS.items() if s.group == word and not s.on_request]
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
