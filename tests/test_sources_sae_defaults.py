"""The SAE's model processing (model_from_pretrained_kwargs) follows the model under any of its names."""

from __future__ import annotations

from types import SimpleNamespace

from evalkit.sources.sae_defaults import model_defaults, same_model_name


def jb_like(model_name: str) -> SimpleNamespace:
    metadata = SimpleNamespace(
        model_name=model_name,
        context_size=128,
        prepend_bos=True,
        model_from_pretrained_kwargs={"center_writing_weights": True},
    )
    return SimpleNamespace(sae=SimpleNamespace(cfg=SimpleNamespace(metadata=metadata)), path="sae-lens:jb/x")


def test_aliases_are_one_model() -> None:
    assert same_model_name("gpt2", "gpt2-small") and same_model_name("gpt2-small", "gpt2-small")
    assert not same_model_name("gpt2", "gpt2-medium")
    assert not same_model_name("/models/my-gpt2", "gpt2") and not same_model_name("gpt2", None)


def test_kwargs_apply_when_the_flag_names_the_sae_model_by_an_alias() -> None:
    """gpt2-small-res-jb says model_name gpt2-small; `--model gpt2` is that model, so it is loaded as sae-lens
    loads it (center_writing_weights), and the hook's activations are the ones the SAE was trained on."""
    saes = [jb_like("gpt2-small")]
    assert model_defaults(saes, "gpt2", "blocks.8.hook_resid_pre").from_pretrained_kwargs == {
        "center_writing_weights": True
    }
    assert model_defaults(saes, None, "blocks.8.hook_resid_pre").model == "gpt2-small"
    assert model_defaults(saes, "gpt2-medium", "blocks.8.hook_resid_pre").from_pretrained_kwargs == {}
