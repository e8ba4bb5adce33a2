"""`--device` / `--dtype` as far as a CPU-only machine checks them: the batch size chosen from a CUDA device's free
memory (torch.cuda faked: the arithmetic and its bounds), and a `--dtype bfloat16` run agreeing with float32 to
bfloat16 precision. The real CUDA run is tests/test_real_gpu.py (marked `gpu`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.run_folders import run_argv
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from evalkit.app import request
from evalkit.app.cli import main
from evalkit.app.request import batch_tokens

GIB = 2**30


@pytest.mark.parametrize(
    ("free_bytes", "expected"),
    [
        # half of 80 GiB over 4·(4·262,144 + 8·131,072 + 64·4,608) = 9,568,256 bytes a token
        (80 * GIB, 42_949_672_960 // 9_568_256),
        (2 * GIB, 512),  # a small card: never below 512 tokens
        (4096 * GIB, 65_536),  # never above 65,536
    ],
)
def test_cuda_batch_size_from_free_memory(monkeypatch: pytest.MonkeyPatch, free_bytes: int, expected: int) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (free_bytes, 2 * free_bytes))
    assert request.GPU_BYTES_PER_TOKEN == 9_568_256
    assert batch_tokens(None, "cuda:1") == expected
    assert asked == [torch.device("cuda:1")]  # the device named, not device 0
    assert batch_tokens(1000, "cuda") == 1000  # --batch-size wins
    assert batch_tokens(None, "cpu") == 4096


def test_bfloat16_run_matches_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="tiny")
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=128, metadata=meta))
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # about a third of the latents fire
    sae.save_model(tmp_path / "saes" / "standard")
    save_file({"activations": torch.randn(64, 8, 32)}, tmp_path / "acts.safetensors")
    values = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        argv = run_argv(tmp_path / "saes", tmp_path / "acts.safetensors", "core,sparsity", 128, out)
        assert main([*argv, "--dtype", dtype, "--no-report"]) == 0
        assert json.loads((out / "run.json").read_text())["config"]["dtype"] == dtype
        frame = pd.read_parquet(out / "results.parquet")
        level = frame[frame["latent"].isna()]
        values[dtype] = dict(zip(level["metric"], level["value"], strict=True))
    f32, bf16 = values["float32"], values["bfloat16"]
    assert 10 < f32["l0"] < 118
    for metric in ("l0", "fvu", "cossim", "l1"):
        assert bf16[metric] == pytest.approx(f32[metric], rel=0.03), metric
    assert bf16["fvu"] != f32["fvu"]  # the SAE really ran in bfloat16
