"""Progress: a run whose output is not a terminal logs done/total lines (here every 0.05 s instead of 30 s); the
LLM client's per-request HTTP lines stay at DEBUG."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from evalkit.core.progress import Progress


def test_progress_line_counts_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="evalkit.progress"):
        with Progress(1000, "evaluating", "tokens", interval_s=0.02) as p:
            p.update(250)
            time.sleep(0.1)
            assert "250/1,000 tokens (25%)" in p.line() and "ETA" in p.line()
            p.update(750)
    lines = [r.getMessage() for r in caplog.records]
    assert any("250/1,000 tokens (25%)" in line for line in lines)  # a periodic line while running
    assert lines[-1].startswith("evaluating: 1,000/1,000 tokens (100%)") and lines[-1].endswith("(done)")


def test_run_without_terminal_logs_progress_lines(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="tiny")
    StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=meta)).save_model(tmp_path / "saes" / "a")
    save_file({"activations": torch.randn(64, 8, 16)}, tmp_path / "acts.safetensors")
    env = {**os.environ, "EVALKIT_PROGRESS_INTERVAL": "0.01"}
    argv = ["run", "--sae", str(tmp_path / "saes"), "--activations", str(tmp_path / "acts.safetensors")]
    argv += ["--metrics", "norm", "--batch-size", "16", "--out", str(tmp_path / "out"), "--no-report"]
    done = subprocess.run(
        [sys.executable, "-m", "evalkit", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "norm pre-pass at" in line]
    assert lines and lines[-1].endswith("(done)")
    assert "512 tokens" in lines[-1]
    evaluating = [line for line in done.stderr.splitlines() if "evaluating blocks.0.hook_resid_post" in line]
    assert evaluating and evaluating[-1].endswith("(done)")
    assert "512/512 tokens (100%)" in evaluating[-1]
    assert "HTTP Request" not in done.stderr


def test_http_request_lines_are_debug_only(tmp_path: Path) -> None:
    from evalkit.app.cli import main

    assert main(["report", str(tmp_path / "missing")]) == 2  # any command configures logging first
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert main(["-v", "report", str(tmp_path / "missing")]) == 2
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG
