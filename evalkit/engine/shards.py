"""Finished accumulators as result shards, and the context a run reports (helpers of the runners)."""

from __future__ import annotations

import time

from evalkit.core.identity import JsonValue
from evalkit.core.records import EvalContext, ResultKey, SampleTable, Shard
from metrics.base import MetricSpec, StreamingMetric


def now_ms() -> int:
    return int(time.time() * 1000)


def sample_table(spec: MetricSpec, acc: StreamingMetric) -> SampleTable | None:
    """The accumulator's per-token sample (metrics.base.SamplingMetric) as stored floats, if it keeps one."""
    samples_fn = getattr(acc, "samples", None)
    raw = samples_fn() if callable(samples_fn) else None
    if not raw:
        return None
    columns = {str(name): tuple(float(v) for v in col) for name, col in raw.items()}
    if len({len(col) for col in columns.values()}) > 1:
        raise ValueError(f"metric {spec.name}: sample columns differ in length")
    return SampleTable(spec.group, columns)


def stream_shard(spec: MetricSpec, key: ResultKey, acc: StreamingMetric, ctx: EvalContext) -> Shard:
    """A finished accumulator as a shard. Label names travel with label-indexed values, so features.csv's
    names are rebuilt from the shard alone (resume, cache) and match the indices they were made from."""
    labels = ctx.label_names if "labels" in spec.requires else ()
    return Shard(key, tuple(acc.compute()), ctx.n_tokens, now_ms(), labels, sample_table(spec, acc))


def context_for(ctx: EvalContext) -> dict[str, JsonValue]:
    """The EvalContext as JSON for run.json."""
    return {
        "median_norm": ctx.median_norm,
        "norm_q25": ctx.norm_q25,
        "norm_q75": ctx.norm_q75,
        "n_tokens": ctx.n_tokens,
        "label_names": list(ctx.label_names),
        "seed": ctx.seed,
    }
