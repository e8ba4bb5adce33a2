"""The `evalkit run` command line and the output-folder snapshot that the CLI, Ray and reliability tests share."""

from __future__ import annotations

import json
from pathlib import Path


def run_argv(saes: Path, activations: Path, metrics: str, batch_tokens: int, out: Path, *extra: str) -> list[str]:
    """`evalkit run` over a folder of SAEs and an activations file, writing into `out`."""
    return [
        "run",
        "--sae",
        str(saes),
        "--activations",
        str(activations),
        "--metrics",
        metrics,
        "--batch-size",
        str(batch_tokens),
        "--out",
        str(out),
        *extra,
    ]


def output_files(out: Path) -> dict[str, bytes]:
    """Every output file (not the cache, not the lock), run.json without its execution block (timings, counts):
    what must be byte-identical between an uninterrupted run and a killed-and-resumed one."""
    files = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and ".evalkit-cache" not in p.parts and p.name != ".evalkit-lock"
    }
    run = json.loads(files.pop("run.json"))
    run.pop("execution")
    files["run.json"] = json.dumps(run, sort_keys=True).encode()
    return files
