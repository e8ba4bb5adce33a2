"""`--device cuda --dtype bfloat16` on the offline GPT-2-shaped run (tests/test_real_offline.py's cache).

GPU-marked (excluded by default) and skipped without CUDA. The bfloat16 run must agree with the float32 CPU run to
bfloat16 precision, and the batch size comes from the device's free memory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_real_offline import DATASET, N_TOKENS, RELEASE, SMALL_HOOK, small_cache, small_offline  # noqa: F401  (the session's hand-filled HF cache)

from evalkit.app.cli import main
from evalkit.app.run_cli import batch_tokens

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def sae_level(out: Path) -> dict[str, float]:
    frame = pd.read_parquet(out / "results.parquet")
    level = frame[frame["latent"].isna()]
    return dict(zip(level["metric"], level["value"], strict=True))


def test_batch_size_from_free_memory() -> None:
    free, _ = torch.cuda.mem_get_info()
    chosen = batch_tokens(None, "cuda")
    assert 512 <= chosen <= 65_536
    assert batch_tokens(1000, "cuda") == 1000 and batch_tokens(None, "cpu") == 4096
    assert chosen <= max(512, free // 2 // (4 * 262_144))


def test_bfloat16_on_cuda_matches_float32_on_cpu(small_offline: object, tmp_path: Path) -> None:  # noqa: F811
    spec = f"sae-lens:{RELEASE}/{SMALL_HOOK}"
    base = ["run", "--sae", spec, "--dataset", DATASET, "--text-column", "body", "--tokens", str(N_TOKENS)]
    base += ["--metrics", "core,downstream,sparsity", "--no-report"]
    assert main([*base, "--out", str(tmp_path / "cpu")]) == 0
    assert main([*base, "--device", "cuda", "--dtype", "bfloat16", "--out", str(tmp_path / "gpu")]) == 0
    cpu, gpu = sae_level(tmp_path / "cpu"), sae_level(tmp_path / "gpu")
    assert gpu["l0"] == pytest.approx(cpu["l0"], rel=0.05)
    assert gpu["fvu"] == pytest.approx(cpu["fvu"], rel=0.05)
    assert gpu["ce_loss_clean"] == pytest.approx(cpu["ce_loss_clean"], rel=0.02)
