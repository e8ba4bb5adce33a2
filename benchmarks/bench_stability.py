"""Benchmark: seed matching of two 16,384-latent dictionaries (d_in 768) and decoder ε on 65,536 latents.

Targets: ≤ 60 s and ≤ 2 GB each on 2 CPU cores. Each stage runs in its own process so its peak RSS is its own.

    .venv/bin/python benchmarks/bench_stability.py                 # both stages
    .venv/bin/python benchmarks/bench_stability.py --stage matching --kind random
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import time

import torch

log = logging.getLogger("bench_stability")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (unlike wall time, not inflated by shared cores)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_report(stage: str, start: float, cpu_start: float, result: str) -> dict[str, object]:
    return {
        "stage": stage,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu_start,
        "peak_gib": peak_rss_gib(),
        "result": result,
    }


def dictionaries(n: int, d_in: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two decoders: 'related' = B is a permuted, noisy copy of A for half the latents (like two seeds);
    'random' = independent (the hardest case for the approximate matching)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d_in, generator=gen)
    B = torch.randn(n, d_in, generator=gen)
    if kind == "related":
        half = n // 2
        B[:half] = A[torch.randperm(n, generator=gen)[:half]] + 0.3 * torch.randn(half, d_in, generator=gen)
    return A, B


def run_matching(n: int, d_in: int, kind: str, queue: mp.Queue) -> None:
    from metrics.matching import match_dictionaries

    torch.set_num_threads(2)
    A, B = dictionaries(n, d_in, kind)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    m = match_dictionaries(A, B)
    mmcs = (m.best_A.mean() + m.best_B.mean()) / 2
    queue.put(
        timed_report(
            f"matching {n}x{n} d_in={d_in} ({kind})",
            start,
            cpu_start,
            f"mean matched cos {m.cos.mean():.4f}, mmcs {mmcs:.4f}",
        )
    )


def run_decoder_eps(h: int, d_in: int, kind: str, queue: mp.Queue) -> None:
    from metrics.afa import decoder_eps

    torch.set_num_threads(2)
    W = torch.randn(h, d_in, generator=torch.Generator().manual_seed(1))
    start, cpu_start = time.perf_counter(), cpu_seconds()
    eps_max, eps_mean = decoder_eps(W)
    queue.put(
        timed_report(f"decoder_eps h={h} d_in={d_in}", start, cpu_start, f"max {eps_max:.4f}, mean {eps_mean:.5f}")
    )


STAGES = {"matching": (run_matching, 16384), "decoder_eps": (run_decoder_eps, 65536)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--kind", choices=["related", "random"], default="related")
    parser.add_argument("--d-in", type=int, default=768)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = mp.get_context("spawn")
    for name in STAGES if args.stage == "all" else [args.stage]:
        fn, size = STAGES[name]
        queue = ctx.Queue()
        proc = ctx.Process(target=fn, args=(size, args.d_in, args.kind, queue))
        proc.start()
        report = queue.get()
        proc.join()
        verdict = "OK" if report["seconds"] <= 60 and report["peak_gib"] <= 2 else "OVER TARGET"
        log.info(
            "%s: %.1f s wall, %.1f s CPU (2 threads), peak RSS %.2f GiB [%s] — %s",
            report["stage"],
            report["seconds"],
            report["cpu_seconds"],
            report["peak_gib"],
            verdict,
            report["result"],
        )


if __name__ == "__main__":
    main()
