"""build_world at the small size: bit-identical rebuilds, cache reuse and repair, massive activations."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from transformer_lens import HookedTransformer

from evalkit.sources.models import load_model
from evalkit.world.build import build_world
from evalkit.world.cache import MANIFEST, cache_root, entry_is_valid


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # One cache folder for the whole session: other test modules reuse this entry instead of rebuilding it.
    return build_world(tmp_path_factory.getbasetemp() / "world-cache", size="small")


def _content(root) -> dict[str, str]:
    files = json.loads((root / MANIFEST).read_text())["files"]
    return {rel: info["sha256"] for rel, info in files.items() if rel != "world.json"}


def test_two_builds_are_bit_identical(world, tmp_path) -> None:
    other = build_world(tmp_path / "second", size="small")
    assert other.root != world.root
    assert _content(other.root) == _content(world.root)
    info_a = {k: v for k, v in world.info.items() if k != "timings_s"}
    info_b = {k: v for k, v in other.info.items() if k != "timings_s"}
    assert info_a == info_b


def test_cached_build_is_reused(world) -> None:
    t0 = time.perf_counter()
    again = build_world(world.root.parent.parent, size="small")
    assert again.root == world.root
    assert time.perf_counter() - t0 < 5.0


def test_corrupt_cache_entry_rebuilds_with_warning(world, tmp_path, caplog) -> None:
    first = build_world(tmp_path, size="small")
    weights = first.model_dir / "model.safetensors"
    weights.write_bytes(b"garbage")
    assert not entry_is_valid(first.root)
    with caplog.at_level(logging.WARNING):
        rebuilt = build_world(tmp_path, size="small")
    assert "corrupt" in caplog.text
    assert entry_is_valid(rebuilt.root)
    assert _content(rebuilt.root) == _content(world.root)


def test_cache_root_honours_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv("EVALKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "evalkit"


def test_planted_massive_activations(world) -> None:
    norms = world.info["norms"]
    assert norms["planted_over_median"]["<bos>"] >= 100
    assert norms["max_over_median"] >= 10  # the ordinary tokens' tail


def test_model_folder_loads_like_any_model(world) -> None:
    model = load_model(world.model_dir)
    assert isinstance(model, HookedTransformer)
    tokens = model.to_tokens("red dog .")
    bos = model.tokenizer.bos_token_id
    assert tokens.tolist() == [[bos] + model.tokenizer.convert_tokens_to_ids(["red", "dog", "."])]
    # the planted component survives training and reaches the hook: BOS's norm is far above a plain word's
    _, cache = model.run_with_cache(tokens, names_filter=world.hook_name)
    norms = cache[world.hook_name][0].norm(dim=-1)
    assert norms[0] > 20 * norms[1]


def test_training_history_is_recorded(world) -> None:
    history = world.info["history"]
    assert history[0]["step"] == 0 and history[-1]["heldout_loss"] < history[0]["heldout_loss"]
    assert world.info["unigram_entropy"] > 2.0
    acts = world.activations_path
    from safetensors.torch import load_file

    stored = load_file(str(acts))
    assert stored["activations"].shape[-1] == world.d_model
    assert torch.isfinite(stored["activations"]).all()
