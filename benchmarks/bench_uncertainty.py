"""Benchmark: the cost of token-level standard errors (the block jackknife, docs/uncertainty.md).

Runs the same `evalkit run` with `--stderr-blocks 0` (off) and `--stderr-blocks K` (default 32), interleaved,
`--repeats` times each, every run a fresh subprocess into a fresh output folder (nothing cached), and prints per
setting the median wall time, CPU time (user + sys of the subprocess) and the pass's own timings (run.json:
pre-pass, stream, finish), then the ratios with/without. Target (issue #17): the extra cost ≤ 10% of the wall
time. On a shared machine, CPU time is the steadier number; both are printed with the load average.

    .venv/bin/python benchmarks/bench_uncertainty.py --sae ZOO/topk_k32 --sae ZOO/jumprelu \
        --sae ZOO/standard_l1_coefficient2 [--metrics core,downstream,sparsity,norm,afa,concepts] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench_uncertainty")
DEFAULT_METRICS = "core,downstream,sparsity,norm,afa,concepts"


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    timings_s: dict[str, float]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: argparse.Namespace, blocks: int, out: Path) -> Run:
    cmd = [sys.executable, "-m", "evalkit", "run", "--no-report", "--stderr-blocks", str(blocks)]
    cmd += [x for sae in args.sae for x in ("--sae", sae)] + ["--metrics", args.metrics, "--out", str(out)]
    if args.tokens:
        cmd += ["--tokens", str(args.tokens)]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"evalkit run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    timings = json.loads((out / "run.json").read_text())["execution"]["timings_s"]
    return Run(wall, cpu, {k.split(":")[0]: float(v) for k, v in timings.items()})


def _median(runs: list[Run]) -> Run:
    keys = runs[0].timings_s.keys()
    return Run(
        statistics.median(r.wall_s for r in runs),
        statistics.median(r.cpu_s for r in runs),
        {k: statistics.median(r.timings_s.get(k, 0.0) for r in runs) for k in keys},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", action="append", required=True, help="an SAE path (repeatable)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    parser.add_argument("--tokens", type=int, default=None, help="evaluation tokens (default: all)")
    parser.add_argument("--blocks", type=int, default=32, help="K for the run with standard errors")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs: dict[int, list[Run]] = {0: [], args.blocks: []}
    with tempfile.TemporaryDirectory(prefix="bench-unc-") as tmp:
        for rep in range(args.repeats):
            for blocks in runs:  # interleaved, so a change in the machine's load hits both settings alike
                run = run_once(args, blocks, Path(tmp) / f"k{blocks}-{rep}")
                runs[blocks].append(run)
                log.info("K=%d: %.1f s wall, %.1f s CPU, %s", blocks, run.wall_s, run.cpu_s, run.timings_s)
    off, on = _median(runs[0]), _median(runs[args.blocks])
    for name, m in (("off (K=0)", off), (f"on (K={args.blocks})", on)):
        log.info("%s: median wall %.1f s, CPU %.1f s, pass %s", name, m.wall_s, m.cpu_s, m.timings_s)
    log.info(
        "extra cost of standard errors: wall %+.1f%%, CPU %+.1f%% (target <= 10%%); load average %s",
        100 * (on.wall_s / off.wall_s - 1),
        100 * (on.cpu_s / off.cpu_s - 1),
        " ".join(f"{x:.2f}" for x in os.getloadavg()),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
