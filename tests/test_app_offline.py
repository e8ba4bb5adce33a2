"""Offline: local paths are checked before any network call; a hub name that is neither reachable nor cached is
one line, within seconds, saying how to work offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

OFFLINE_SPEC = "sae-lens:gpt2-small-res-jb/blocks.8.hook_resid_pre"


def _run(argv: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    # A closed local port stands for a network that refuses connections; an empty cache holds nothing.
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "evalkit", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - t0


def test_unreachable_hub_and_empty_cache_is_one_line_within_seconds(tmp_path: Path) -> None:
    done, seconds = _run(["run", "--sae", OFFLINE_SPEC, "--out", str(tmp_path / "out")], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert OFFLINE_SPEC in lines[0] and "not in the local Hugging Face cache" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "gpt2-small-res-jb" in lines[0]
    assert seconds < 5, f"{seconds:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--dataset", "--activations", "--labels"])
def test_missing_local_file_is_found_before_anything_else(tmp_path: Path, flag: str) -> None:
    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(tmp_path / "sae")
    torch.manual_seed(0)
    missing = tmp_path / "data" / "missing.jsonl"
    argv = ["run", "--sae", str(tmp_path / "sae"), "--model", "gpt2", flag, str(missing), "--out", str(tmp_path / "o")]
    done, seconds = _run(argv, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(missing) in lines[0] and "no such file" in lines[0]
    assert seconds < 5
