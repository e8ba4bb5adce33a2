"""The embedded world: concept corpus, word-level tokenizer, tiny model with planted massive activations, SAE
zoo."""

from __future__ import annotations

from evalkit.world.build import SIZES, World, build_world

__all__ = ["SIZES", "World", "build_world", "build_zoo"]


def __getattr__(name: str) -> object:
    # The zoo pulls in sae-lens training code; import it only when asked for.
    if name == "build_zoo":
        from evalkit.world.zoo import build_zoo

        return build_zoo
    raise AttributeError(name)
