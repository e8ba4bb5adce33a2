"""Weights metrics computed on a side thread while the evaluation pass runs.

A weights metric reads an SAE's parameters alone (and, with `norm_stats`, the norm pre-pass's statistics), so once
a pre-pass has fixed the hook's data it can run beside the pass instead of after it. The pass leaves a core idle
in its single-threaded stretches (metric updates, sparse codes, Python between ops) and the weights metrics have
their own (the alignment mixture fit); torch releases the GIL inside its ops, so the two overlap on the CPUs
(decoder Gram pass, 4 SAEs of d_sae 24,576: benchmarks/bench_real.py). The values are the same calls, in the same
order per SAE, with the same torch thread count: identical numbers. The runner still writes every result itself,
in its usual order, so stores, resumes and kills see nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from evalkit.core.records import EvalContext, MetricValue

Job = Callable[[], list[MetricValue]]


def _no_grad(job: Job) -> list[MetricValue]:
    with torch.no_grad():  # grad mode is per thread
        return job()


class WeightsAhead:
    """One side thread; jobs keyed by (sae_id, metric entry), each valid for the EvalContext it was started with."""

    def __init__(self) -> None:
        # torch's thread count is process-wide; set again so the side thread's ops split work the same way.
        threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(1, "evalkit-weights", initializer=torch.set_num_threads, initargs=(threads,))
        self._jobs: dict[tuple[str, str], tuple[EvalContext, Future[list[MetricValue]]]] = {}

    def submit(self, sae_id: str, entry: str, ctx: EvalContext, job: Job) -> None:
        self._jobs[(sae_id, entry)] = (ctx, self._pool.submit(_no_grad, job))

    def take(self, sae_id: str, entry: str, ctx: EvalContext) -> list[MetricValue] | None:
        """The job's values (waiting for it; its exception re-raised here), or None when no job was started for
        this SAE and entry with this context (the caller then computes them itself)."""
        found = self._jobs.pop((sae_id, entry), None)
        if found is None or found[0] != ctx:
            return None
        return found[1].result()

    def close(self) -> None:
        """Drop the jobs not started; wait for the one running (a pass that failed leaves at most one)."""
        self._jobs.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
