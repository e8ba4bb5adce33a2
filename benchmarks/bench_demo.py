"""Benchmark: `evalkit demo` from an empty cache, then again into the same folder (everything cached).

Each run is a fresh `python -m evalkit demo` subprocess with EVALKIT_CACHE set to a temporary folder, so the
first run builds the world and the zoo and computes every result, and the second must reuse all of it. Prints
both wall times, the stage timings the demo logged, how many results each run computed and reused (run.json),
and the size of report.html. Targets (2 cores): cold under 15 minutes, cached under 30 seconds (#12).

    .venv/bin/python benchmarks/bench_demo.py [--size default|small] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench_demo")
# the demo logs "demo: stage 1/4, world, done in 135.4 s" (evalkit.app.demo._timed)
STAGE_LINE = re.compile(r"demo: stage \d+/\d+, (\w+), done in ([0-9.]+) s")


@dataclass
class DemoRun:
    wall_s: float
    stages_s: dict[str, float]
    computed: int
    reused: int


def run_demo_subprocess(out: Path, cache: Path, size: str) -> DemoRun:
    """One `evalkit demo` in a fresh interpreter; its stderr log is kept beside the outputs."""
    env = {
        **os.environ,
        "EVALKIT_CACHE": str(cache),
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "evalkit", "demo", "--out", str(out), "--size", size]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / f"demo-{int(t0)}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"evalkit demo exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    stages = {m.group(1): float(m.group(2)) for m in STAGE_LINE.finditer(proc.stderr)}
    execution = json.loads((out / "run.json").read_text())["execution"]
    return DemoRun(wall, stages, int(execution["computed"]), int(execution["reused"]))


def _describe(label: str, run: DemoRun) -> str:
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in run.stages_s.items())
    return f"{label}: {run.wall_s:.1f} s wall ({stages}); results computed {run.computed}, reused {run.reused}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", help="world/zoo size (default: default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep cache and outputs in this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="evalkit-bench-demo-") as tmp:
        root = args.keep or Path(tmp)
        cache, out = root / "cache", root / "out"
        if cache.exists() and any(cache.iterdir()):
            raise SystemExit(f"{cache} is not empty; the cold run needs an empty cache")
        cold = run_demo_subprocess(out, cache, args.size)
        warm = run_demo_subprocess(out, cache, args.size)
        report = out / "report.html"
        log.info("evalkit demo --size %s", args.size)
        log.info(_describe("empty cache", cold))
        log.info(_describe("cached     ", warm))
        log.info("report.html: %.2f MB (%d bytes)", report.stat().st_size / 1e6, report.stat().st_size)


if __name__ == "__main__":
    main()
