"""A zoo SAE evaluated on the embedded world must have been trained on that very world (same build key)."""

from __future__ import annotations

from types import SimpleNamespace

from evalkit.app.run_cli import _world_mismatch

HOOK = "blocks.3.hook_resid_post"
SOURCE = f"world:default:b1afd8e94d7c3899:hook={HOOK}:n_seq=512"


def sae(hook: str | None = HOOK, **metadata: str) -> SimpleNamespace:
    return SimpleNamespace(hook_name=hook, path="zoo/topk_k32", cfg={"metadata": metadata})


def test_same_world_is_accepted() -> None:
    assert _world_mismatch(sae(trained_on="world:default:b1afd8e94d7c3899"), HOOK, SOURCE) is None


def test_sae_from_another_build_of_the_world_is_refused_with_both_keys() -> None:
    problem = _world_mismatch(sae(trained_on="world:default:1c1d49b6aaaa0000", model_name="/old/model"), HOOK, SOURCE)
    assert problem is not None
    assert "world:default:1c1d49b6aaaa0000" in problem and "world:default:b1afd8e94d7c3899" in problem
    assert "--model /old/model" in problem


def test_world_size_is_part_of_the_identity() -> None:
    assert _world_mismatch(sae(trained_on="world:small:b1afd8e94d7c3899"), HOOK, SOURCE) is not None


def test_sae_of_another_hook_is_refused() -> None:
    problem = _world_mismatch(sae(hook="blocks.1.hook_resid_post"), HOOK, SOURCE)
    assert problem is not None and "blocks.1.hook_resid_post" in problem


def test_sae_without_world_metadata_is_accepted() -> None:
    assert _world_mismatch(sae(), HOOK, SOURCE) is None
    assert _world_mismatch(SimpleNamespace(hook_name=None, path="x"), HOOK, SOURCE) is None
