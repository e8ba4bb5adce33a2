"""Shared test setup: no wandb, deterministic torch, small thread count for 2-core machines."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.demo import small_demo  # noqa: E402,F401  (a session fixture: test_demo and test_browser share one demo)

from evalkit.sae.registration import ensure_registered  # noqa: E402

# Tests build sae-lens classes by architecture name directly (SAE.load_from_disk, TrainingSAE.from_dict).
ensure_registered()

# Tiny tensors run many times faster on one thread than on two contended cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An isolated EVALKIT_CACHE for tests that build world artefacts."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EVALKIT_CACHE", str(d))
    return d
