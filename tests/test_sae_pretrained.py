"""`sae-lens:RELEASE/SAE_ID` offline: a hand-filled Hugging Face cache holds a tiny SAE under a real release.

The release is gpt2-small-res-jb (repo jbloom/GPT2-Small-SAEs-Reformatted, sae-lens' default loader, which
reads FOLDER/cfg.json and FOLDER/sae_weights.safetensors through `hf_hub_download`). The cache is laid out
as huggingface_hub writes it: models--ORG--REPO/refs/main holds a commit hash, and the files live under
snapshots/<commit>/. The config is in the release's pre-6.0 shape (top-level `hook_point`, `model_name`) with
GPT-2 small's real d_in = 768, and a tiny d_sae so the weights stay small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evalkit.sae.loaders.formats import load_saes

RELEASE = "gpt2-small-res-jb"
SAE_ID = "blocks.8.hook_resid_pre"
REPO_ID = "jbloom/GPT2-Small-SAEs-Reformatted"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_IN, D_SAE = 768, 8
SPEC = f"sae-lens:{RELEASE}/{SAE_ID}"

OLD_STYLE_CFG = {
    "model_name": "gpt2-small",
    "hook_point": SAE_ID,
    "hook_point_layer": 8,
    "hook_point_head_index": None,
    "d_in": D_IN,
    "d_sae": D_SAE,
    "dtype": "torch.float32",
    "device": "cpu",
    "context_size": 128,
    "dataset_path": "Skylion007/openwebtext",
    "normalize_activations": False,
}


def tiny_weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen),
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.1,
        "b_dec": torch.randn(D_IN, generator=gen) * 0.1,
    }


def fill_hub_cache(hub_cache: Path, weights: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub reads offline; returns the SAE's snapshot folder."""
    repo_dir = hub_cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    folder = repo_dir / "snapshots" / COMMIT / SAE_ID
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(OLD_STYLE_CFG))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


def test_release_entry_is_what_the_cache_imitates() -> None:
    """Guards the fixture: if sae-lens moves this SAE, the cache below would test nothing real."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release = get_pretrained_saes_directory()[RELEASE]
    assert release.repo_id == REPO_ID
    assert release.model == "gpt2-small"
    assert release.saes_map[SAE_ID] == SAE_ID
    assert release.conversion_func is None  # sae-lens' default cfg.json + sae_weights.safetensors loader


def test_pretrained_loads_from_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    weights = tiny_weights()
    fill_hub_cache(tmp_path / "hub", weights)
    # huggingface_hub reads these module constants at call time (set from the environment at import).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    (loaded,) = load_saes(SPEC)
    assert loaded.sae_id == f"{RELEASE}/{SAE_ID}"
    assert loaded.path == SPEC and loaded.format == "sae-lens-pretrained"
    assert loaded.architecture == "standard"
    assert (loaded.hook_name, loaded.model_name) == (SAE_ID, "gpt2-small")
    assert (loaded.d_in, loaded.d_sae) == (D_IN, D_SAE)
    assert loaded.cfg["release"] == RELEASE and loaded.cfg["sae_id"] == SAE_ID
    for name, tensor in weights.items():
        assert torch.equal(getattr(loaded.sae, name).detach(), tensor), name
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(3))
    expected = torch.relu((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
    torch.testing.assert_close(loaded.sae.encode(x), expected)


SUBPROCESS_LOAD = """
import json, sys, torch
from evalkit.sae import load_saes
(loaded,) = load_saes(sys.argv[1])
print(json.dumps({"hook": loaded.hook_name, "model": loaded.model_name,
                  "W_enc_sum": float(loaded.sae.W_enc.double().sum())}))
"""


@pytest.mark.slow
def test_pretrained_honours_hf_env_in_a_fresh_process(tmp_path: Path) -> None:
    """What a user does: HF_HUB_CACHE and HF_HUB_OFFLINE=1 in the environment before Python starts.

    Slow only because a fresh interpreter imports torch and sae-lens (~25 s on the shared 2-core machine).
    """
    weights = tiny_weights()
    fill_hub_cache(tmp_path / "hub", weights)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_LOAD, SPEC],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["hook"], out["model"]) == (SAE_ID, "gpt2-small")
    assert out["W_enc_sum"] == pytest.approx(float(weights["W_enc"].double().sum()), abs=1e-9)
