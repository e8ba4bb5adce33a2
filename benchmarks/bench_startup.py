"""Start-up time of `evalkit --help` and every subcommand's `--help`, in fresh subprocesses.

Prints the median wall time of 5 runs per command next to the floor measured in the same run (a bare
`python -c pass`), and the target (under 1 s). Usage: .venv/bin/python benchmarks/bench_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = ("", "run", "report", "compare", "world", "zoo", "demo")
REPEATS = 5
TARGET_S = 1.0


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    floor = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(REPEATS))
    print(f"python -c pass (floor): {floor:.3f} s")
    worst = 0.0
    for command in COMMANDS:
        argv = [sys.executable, "-m", "evalkit", *command.split(), "--help"]
        t = statistics.median(wall(argv) for _ in range(REPEATS))
        worst = max(worst, t)
        print(f"evalkit {command + ' ' if command else ''}--help: {t:.3f} s ({t / floor:.1f}x the floor)")
    print(f"slowest: {worst:.3f} s; target < {TARGET_S:.1f} s: {'met' if worst < TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
