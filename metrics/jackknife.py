"""Token-level standard errors of stream metrics: a delete-a-block jackknife over blocks of whole sequences.

`BlockJackknife` wraps any stream accumulator that follows the state protocol (metrics.base: `state_dict`,
`load_state_dict`, `merge`). It keeps one accumulator per block; the runner says which block each token
belongs to through `SaeBatch.extras[BLOCK_KEY]`, and every block holds whole sequences, so correlation within a
sequence stays inside a block. At the end:

- the point estimate is `compute()` of all blocks merged — the same numbers as one accumulator that saw the
  whole stream (the state protocol's guarantee);
- leave-one-out values come from prefix/suffix merges (block j left out = blocks < j merged with blocks > j), so
  every metric is recomputed from its own sufficient statistics without block j. Ratio metrics (fvu,
  ce_loss_score, kl_div_score, relative_reconstruction_bias) are therefore handled exactly: the jackknife
  differentiates the ratio, where a per-token standard deviation would treat the denominator as a constant;
- `evalkit.core.uncertainty.jackknife_stderr` turns them into a standard error, attached to each SAE-level value.

Only the SAE-level values that get a stderr are recomputed without each block (`MetricSpec.stderr_names`, through
the accumulator's `compute_named` when it has one): counts of latents past a threshold get none (their
leave-one-out values are not smooth in the data), and per-latent values are never rebuilt K times.

Cost: K small accumulators instead of one, and K + 1 computes of the wanted values at the end (K ≈ 32).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields, replace
from typing import Any

import torch

from evalkit.core.defaults import DEFAULT_STDERR_BLOCKS
from evalkit.core.records import EvalContext, MetricValue, SaeBatch, SparseCodes
from evalkit.core.uncertainty import jackknife_stderr
from metrics.base import MetricSpec, StreamingMetric

BLOCK_KEY = "jackknife_block"
"""SaeBatch.extras key: the jackknife block [T] (int64) of each kept token, set by the runner."""
DEFAULT_BLOCKS = DEFAULT_STDERR_BLOCKS

_SIZE_PREFIX = "jackknife_size."
_SEP = "/"

Factory = Callable[[Any, EvalContext], Any]


RUNS_PER_BATCH = 8
"""A source batch is cut into at most this many runs of whole sequences, dealt round-robin to the blocks. Each run
is one update call per accumulator, so runs cost Python overhead: when the number of batches is known (a
pre-pass counted the tokens), a batch is cut into just enough runs to fill the K blocks, ⌈K / n_batches⌉ — whole
batches are blocks once there are ≥ K batches; otherwise into min(K, 8), so a one-batch run still has 8."""


def seqs_per_block(n_seq_in_batch: int, n_blocks: int, n_batches: int = 0) -> int:
    """Sequences per run: a batch of n sequences is cut into min(K, RUNS_PER_BATCH, ⌈K / n_batches⌉) runs
    (n_batches = 0: not known)."""
    runs = min(n_blocks, RUNS_PER_BATCH)
    if n_batches > 0:
        runs = min(runs, max(1, -(-n_blocks // n_batches)))
    return max(1, -(-n_seq_in_batch // runs))


def block_index(seq_index_T: torch.Tensor, seqs_per_run: int, n_blocks: int) -> torch.Tensor:
    """The block of each token from its sequence's index: runs of `seqs_per_run` sequences, dealt round-robin
    to `n_blocks` blocks (a pure function of the sequence index, so every worker of a split run agrees)."""
    return torch.div(seq_index_T, seqs_per_run, rounding_mode="floor") % n_blocks


def supports_state(acc: object) -> bool:
    """Whether an accumulator (or its class) follows the state protocol the jackknife needs."""
    return all(callable(getattr(acc, name, None)) for name in ("state_dict", "load_state_dict", "merge"))


def slice_batch(batch: SaeBatch, start: int, stop: int) -> SaeBatch:
    """Tokens [start, stop) of a batch: views of every per-token tensor. What is defined per source batch (the
    legacy explained variance's mean, SAEBench's per-batch token count) is kept from the whole batch."""
    n = batch.x_TD.shape[0]
    changes: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        per_token = f.name not in ("x_mean_D", "_mean64_D")
        if per_token and isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            changes[f.name] = value[start:stop]
    changes["extras"] = {
        k: v[start:stop] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v
        for k, v in batch.extras.items()
    }
    changes["_codes"] = _slice_codes(batch.codes, start, stop)
    changes["x_mean_D"] = batch.source_mean_D()
    changes["_mean64_D"] = None
    if batch.source_n_tokens is None:
        changes["source_n_tokens"] = n
    return replace(batch, **changes)


def _slice_codes(codes: SparseCodes, start: int, stop: int) -> SparseCodes:
    """The nonzero codes of tokens [start, stop): a contiguous range, as the codes are in token-major order."""
    lo, hi = (
        int(i) for i in torch.searchsorted(codes.token_N, torch.tensor([start, stop], device=codes.token_N.device))
    )
    return SparseCodes(
        codes.token_N[lo:hi] - start, codes.latent_N[lo:hi], codes.value_N[lo:hi], stop - start, codes.d_sae
    )


class BlockJackknife:
    """One accumulator per block of whole sequences; `compute()` attaches a jackknife stderr to SAE-level values
    (those named in `stderr_names`; None = every SAE-level value)."""

    def __init__(
        self, factory: Factory, sae: Any, ctx: EvalContext, stderr_names: Collection[str] | None = None
    ) -> None:
        self.factory, self.sae, self.ctx = factory, sae, ctx
        self.stderr_names = None if stderr_names is None else frozenset(stderr_names)
        self.blocks: dict[int, StreamingMetric] = {}
        self.sizes: dict[int, int] = {}
        self._result: list[MetricValue] | None = None
        self._merged: StreamingMetric | None = None

    def _block(self, b: int) -> StreamingMetric:
        if b not in self.blocks:
            self.blocks[b] = self.factory(self.sae, self.ctx)
            self.sizes[b] = 0
        return self.blocks[b]

    def update(self, batch: SaeBatch) -> None:
        self._result = self._merged = None
        n = batch.x_TD.shape[0]
        block_T = batch.extras.get(BLOCK_KEY)
        if block_T is None or n == 0:
            self._block(0).update(batch)
            self.sizes[0] += n
            return
        ids, counts = torch.unique_consecutive(block_T.cpu(), return_counts=True)
        start = 0
        for b, c in zip(ids.tolist(), counts.tolist(), strict=True):
            self._block(int(b)).update(batch if c == n else slice_batch(batch, start, start + c))
            self.sizes[int(b)] += c
            start += c

    def _clone(self, acc: StreamingMetric) -> StreamingMetric:
        copy = self.factory(self.sae, self.ctx)
        copy.load_state_dict(acc.state_dict())
        return copy

    def _merge_all(self) -> StreamingMetric:
        if self._merged is None:
            order = sorted(self.blocks)
            merged = self._clone(self.blocks[order[0]]) if order else self.factory(self.sae, self.ctx)
            for b in order[1:]:
                merged.merge(self.blocks[b])  # the protocol leaves the merged-in accumulator unchanged
            self._merged = merged
        return self._merged

    def _leave_one_out(self) -> list[list[MetricValue]]:
        """The wanted values without each block in turn: prefix[j] (blocks < j) merged with the suffix (blocks
        > j). Each prefix is consumed by its leave-one-out; the suffix grows in place (merge leaves its argument
        unchanged), so about K + 1 states are copied, not 2K."""
        order = sorted(self.blocks)
        prefixes: list[StreamingMetric | None] = [None]
        for b in order[:-1]:
            prev = prefixes[-1]
            nxt = self._clone(self.blocks[b])
            if prev is not None:
                nxt.merge(prev)
            prefixes.append(nxt)
        out: list[list[MetricValue]] = [[] for _ in order]
        suffix: StreamingMetric | None = None
        for j in range(len(order) - 1, -1, -1):
            prefix = prefixes[j]
            if prefix is None:  # j = 0: the suffix is not needed afterwards
                loo = suffix if suffix is not None else self.factory(self.sae, self.ctx)
            else:
                loo = prefix
                if suffix is not None:
                    loo.merge(suffix)
            out[j] = self._wanted(loo)
            if j > 0:
                if suffix is None:
                    suffix = self._clone(self.blocks[order[j]])
                else:
                    suffix.merge(self.blocks[order[j]])
        return out

    def _wanted(self, acc: StreamingMetric) -> list[MetricValue]:
        """The SAE-level values that get a stderr (the accumulator's `compute_named` when it has one)."""
        compute_named = getattr(acc, "compute_named", None)
        if self.stderr_names is not None and callable(compute_named):
            return list(compute_named(self.stderr_names))
        return [v for v in acc.compute() if v.latent is None and self._wants(v.metric)]

    def _wants(self, metric: str) -> bool:
        return self.stderr_names is None or metric in self.stderr_names

    def compute(self) -> list[MetricValue]:
        if self._result is not None:
            return self._result
        values = self._merge_all().compute()
        order = sorted(self.blocks)
        sizes = [self.sizes[b] for b in order]
        if sum(1 for s in sizes if s > 0) < 2 or self.stderr_names == frozenset():
            self._result = values
            return values
        loo = [{v.metric: v.value for v in vals} for vals in self._leave_one_out()]
        with_se = []
        for v in values:  # per-latent values pass through untouched (no stderr; d_sae of them)
            if v.latent is None and self._wants(v.metric):
                thetas = [d.get(v.metric, float("nan")) for d in loo]
                v = replace(v, stderr=jackknife_stderr(v.value, thetas, sizes))
            with_se.append(v)
        self._result = with_se
        return with_se

    def samples(self) -> dict[str, list[float]] | None:
        samples_fn = getattr(self._merge_all(), "samples", None)
        return samples_fn() if callable(samples_fn) else None

    # The state protocol (checkpoints, split runs): every block's state under "<block>/<key>".
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for b, acc in self.blocks.items():
            state[f"{_SIZE_PREFIX}{b}"] = self.sizes[b]
            state.update({f"{b}{_SEP}{k}": v for k, v in acc.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.blocks, self.sizes = {}, {}
        self._result = self._merged = None
        per_block: dict[int, dict[str, Any]] = {}
        for key, value in state.items():
            if key.startswith(_SIZE_PREFIX):
                b = int(key[len(_SIZE_PREFIX) :])
                self.sizes[b] = int(value)
                per_block.setdefault(b, {})
            else:
                b_text, inner = key.split(_SEP, 1)
                per_block.setdefault(int(b_text), {})[inner] = value
        for b, inner_state in per_block.items():
            acc = self.factory(self.sae, self.ctx)
            acc.load_state_dict(inner_state)
            self.blocks[b] = acc

    def merge(self, other: BlockJackknife) -> None:
        """Block-wise: block b of `other` (other sequences of the same block) merges into block b here."""
        self._result = self._merged = None
        for b, acc in other.blocks.items():
            if b in self.blocks:
                self.blocks[b].merge(acc)
                self.sizes[b] += other.sizes[b]
            else:
                self.blocks[b] = self._clone(acc)
                self.sizes[b] = other.sizes[b]


def with_jackknife(factory: Factory, sae: Any, ctx: EvalContext) -> Any:
    """The accumulator `factory(sae, ctx)`, wrapped in a BlockJackknife when it follows the state protocol."""
    return BlockJackknife(factory, sae, ctx) if supports_state(factory) else factory(sae, ctx)


def stream_factory(spec: MetricSpec, stderr_blocks: int) -> Factory:
    """The factory every executor builds a stream metric's accumulators with (local runner, Ray units, merges):
    a BlockJackknife around the metric's own when standard errors are on and some of its values get one."""
    if spec.stderr_names and stderr_blocks >= 2 and supports_state(spec.factory):
        return functools.partial(BlockJackknife, spec.factory, stderr_names=spec.stderr_names)
    return spec.factory
