"""Benchmark: `evalkit run --executor ray` on a local 2-worker Ray cluster (`ray start --head --num-cpus 2`)
against the local executor, on the same 8 SAEs and activations; and Ray's per-unit overhead.

    .venv/bin/python benchmarks/bench_ray.py [--n-saes 8] [--n-seq 96] [--split saes|tokens]

Prints wall times, the ratio local / ray (> 1: Ray is faster), the CPU time of the local run, and per unit the
driver-side wall time (submission to result) against the worker's compute time: the difference is Ray's
overhead (scheduling, serialisation of the unit and its accumulator states, transfer), given as a share of the
unit's wall time. Ray's one-off start-up (cluster, then each actor importing torch and loading the SAEs) is
reported apart: it is paid once per run, not per unit. Everything runs in fresh processes.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE, SEQ_LEN = 128, 1024, 128
METRICS = "core,sparsity,norm,afa"
RAY = str(Path(sys.executable).parent / "ray")  # the venv's `ray` CLI, whether or not the venv is activated


def make_inputs(root: Path, n_saes: int, n_seq: int) -> None:
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, model_name="bench")
    for i in range(n_saes):
        if i % 2:
            sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=16 + 8 * i, metadata=meta))
        else:
            sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
        sae.save_model(root / "saes" / f"sae{i}")
    acts = torch.randn(n_seq, SEQ_LEN, D_IN) + 1.0
    acts[:, 0] *= 30.0
    save_file({"activations": acts}, root / "acts.safetensors")


def evalkit_run(root: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(wall s, CPU s of the evalkit process) for one `evalkit run` in a fresh process."""
    cmd = [sys.executable, "-m", "evalkit", "run", "--sae", str(root / "saes"), "--activations"]
    cmd += [str(root / "acts.safetensors"), "--metrics", METRICS, "--out", str(out), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-saes", type=int, default=8)
    parser.add_argument("--n-seq", type=int, default=96, help="sequences of 128 tokens")
    parser.add_argument("--split", choices=("saes", "tokens"), default="saes")
    parser.add_argument("--port", type=int, default=6391)
    a = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    make_inputs(root, a.n_saes, a.n_seq)
    print(f"{a.n_saes} SAEs d_in {D_IN} d_sae {D_SAE}, {a.n_seq * SEQ_LEN} tokens, metrics {METRICS}")
    local_wall, local_cpu = evalkit_run(root, root / "local")
    print(f"local executor: {local_wall:.1f} s wall, {local_cpu:.1f} s CPU (user+sys)")
    address = "auto"  # the cluster this machine started (explicit host:port also needs Ray's auth token)
    t0 = time.perf_counter()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(a.port),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
    )
    print(f"ray start --head (2 CPUs): {time.perf_counter() - t0:.1f} s (once per cluster)")
    try:
        extra = ("--executor", "ray", "--ray-address", address, "--workers", "2", "--split", a.split)
        ray_wall, driver_cpu = evalkit_run(root, root / "ray", *extra)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
    info = json.loads((root / "ray" / "run.json").read_text())["execution"]
    walls, computes = info["unit_wall_s"], info["unit_compute_s"]
    overhead = [w - c for w, c in zip(walls, computes, strict=True)]
    print(f"ray executor (--split {a.split}, 2 workers): {ray_wall:.1f} s wall, driver {driver_cpu:.1f} s CPU")
    print(f"ratio local/ray wall: {local_wall / ray_wall:.2f}x  (> 1: ray faster)")
    for i, (w, c) in enumerate(zip(walls, computes, strict=True)):
        print(f"  unit {i}: wall {w:.2f} s, compute {c:.2f} s, overhead {w - c:.3f} s ({(w - c) / w:.1%})")
    share = sum(overhead) / sum(walls)
    print(f"per-unit overhead: {sum(overhead) / len(walls):.3f} s mean, {share:.1%} of unit wall time")
    in_units = max(walls)  # units run in parallel; the slowest bounds the pass
    print(f"outside units (start-up, pre-pass, merge, outputs): ~{ray_wall - in_units:.1f} s of {ray_wall:.1f} s")
    print(f"worker start-up (import torch, load 8 SAEs, open the data; once per run): {info['worker_startup_s']:.1f} s")
    local_rows, ray_rows = (list(csv.DictReader(open(root / d / "results.csv"))) for d in ("local", "ray"))
    rel = [
        abs(float(r["value"]) - float(l_["value"])) / max(abs(float(l_["value"])), 1e-30)
        for r, l_ in zip(ray_rows, local_rows, strict=True)
    ]
    print(f"results.csv: {len(rel)} rows, max relative difference to local {max(rel):.1e}")


if __name__ == "__main__":
    main()
