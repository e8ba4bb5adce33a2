"""Loaders: every format gives the same SAE as the equivalent hand-built sae-lens SAE; identities; bad inputs.

The dictionary_learning and sparsify files are written here from their documented key layouts (docs/variants.md,
sparsify SparseCoder.save_to_disk), never by those libraries.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import save_file

from evalkit.sae.factory import (
    dl_batchtopk_state,
    dl_gated_state,
    dl_jumprelu_state,
    dl_matryoshka_state,
    dl_relu_state,
    dl_topk_state,
    make_sae,
    write_dictionary_learning,
    write_sparsify,
)
from evalkit.sae.loaders.dictionary_learning import TRAINER_CLASSES
from evalkit.sae.loaders.formats import load_saes

D_IN, D_SAE = 16, 32


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def acts(scale: float = 1.0) -> torch.Tensor:
    return torch.randn(20, D_IN, generator=torch.Generator().manual_seed(3)) * scale


def assert_same_function(loaded: SAE[Any], reference: SAE[Any]) -> None:
    x = acts(2.0)
    with torch.no_grad():
        f = reference.encode(x)
        torch.testing.assert_close(loaded.encode(x), f, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loaded.decode(f), reference.decode(f), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loaded(x), reference(x), rtol=1e-6, atol=1e-6)
    assert int((f != 0).sum()) > 0


def _no_input_centring(sae: SAE[Any]) -> SAE[Any]:
    sae = copy.deepcopy(sae)
    sae.cfg.apply_b_dec_to_input = False
    return sae


# trainer class -> (factory variant, ae.pt writer, reference transform, evalkit architecture)
DL_CASES: dict[str, tuple[str, Callable[..., dict[str, torch.Tensor]], Callable[[SAE[Any]], SAE[Any]], str]] = {
    "StandardTrainer": ("standard", dl_relu_state, lambda s: s, "standard"),
    "StandardTrainerAprilUpdate": ("standard", dl_relu_state, lambda s: s, "standard"),
    "PAnnealTrainer": ("standard", dl_relu_state, lambda s: s, "standard"),
    "GatedSAETrainer": ("gated", dl_gated_state, lambda s: s, "gated"),
    "GatedAnnealTrainer": ("gated", dl_gated_state, lambda s: s, "gated"),
    "TopKTrainer": ("topk", dl_topk_state, lambda s: s, "topk"),
    "BatchTopKTrainer": ("batchtopk", dl_batchtopk_state, lambda s: s, "batchtopk"),
    "MatryoshkaBatchTopKTrainer": ("matryoshka", dl_matryoshka_state, lambda s: s, "matryoshka"),
    "JumpReluTrainer": ("jumprelu", dl_jumprelu_state, _no_input_centring, "jumprelu"),
}


def test_every_trainer_class_has_a_case() -> None:
    assert set(DL_CASES) == set(TRAINER_CLASSES)


@pytest.mark.parametrize("trainer_class", sorted(DL_CASES))
def test_dictionary_learning_equals_hand_built_sae_lens(trainer_class: str, tmp_path) -> None:
    variant, writer, as_reference, architecture = DL_CASES[trainer_class]
    reference = make_sae(variant, D_IN, D_SAE)
    folder = write_dictionary_learning(tmp_path / "dl", trainer_class, writer(reference))
    [loaded] = load_saes(folder)
    assert_same_function(loaded.sae, as_reference(reference))
    assert (loaded.format, loaded.architecture, loaded.seed) == ("dictionary_learning", architecture, 7)
    assert loaded.hook_name == "blocks.3.hook_resid_post"
    assert loaded.model_name == "EleutherAI/pythia-70m-deduped"


def test_dictionary_learning_autoencoder_new_layout(tmp_path) -> None:
    reference = _no_input_centring(make_sae("standard", D_IN, D_SAE))
    state = dl_relu_state(reference)
    state["decoder.bias"] = state.pop("bias")
    [loaded] = load_saes(write_dictionary_learning(tmp_path / "dl", "StandardTrainerAprilUpdate", state))
    assert_same_function(loaded.sae, reference)


# --------------------------------------------------------------------------------- sparsify


def test_sparsify_equals_hand_built_topk_per_hookpoint(tmp_path) -> None:
    saes = {
        "layers.3": make_sae("topk", D_IN, D_SAE, seed=1),
        "layers.5": make_sae("topk", D_IN, D_SAE, seed=2),
    }
    for hookpoint, sae in saes.items():
        write_sparsify(tmp_path / "run", hookpoint, sae)
    loaded = load_saes(tmp_path / "run")
    assert [one.sae_id for one in loaded] == ["layers.3", "layers.5"]
    for one in loaded:
        assert_same_function(one.sae, saes[one.sae_id])
        assert (one.format, one.architecture, one.model_name) == ("sparsify", "topk", "EleutherAI/pythia-70m")
    assert [one.hook_name for one in loaded] == ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"]


# --------------------------------------------------------------------------------- sae-lens folders


def test_old_sae_lens_config_with_top_level_hook(tmp_path) -> None:
    reference = make_sae("topk", D_IN, D_SAE)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({k: v.detach().clone() for k, v in reference.state_dict().items()}, folder / "sae_weights.safetensors")
    old_cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "dtype": "float32",
        "seed": 42,
    }
    (folder / "cfg.json").write_text(json.dumps(old_cfg))
    [loaded] = load_saes(folder / "sae_weights.safetensors")  # a file inside the folder works too
    assert (loaded.hook_name, loaded.model_name, loaded.architecture, loaded.seed) == (
        "blocks.2.hook_resid_pre",
        "gpt2",
        "topk",
        42,
    )
    assert_same_function(loaded.sae, reference)


def test_recursive_search_mixes_formats_with_unique_ids(tmp_path) -> None:
    make_sae("cosine").save_model(tmp_path / "zoo" / "cosine" / "s0")
    make_sae("topafa").save_model(tmp_path / "zoo" / "topafa")
    write_sparsify(tmp_path / "zoo" / "sparsify_run", "layers.1", make_sae("topk"))
    reference = make_sae("gated")
    write_dictionary_learning(tmp_path / "zoo" / "dl" / "trainer_0", "GatedSAETrainer", dl_gated_state(reference))
    loaded = load_saes(tmp_path / "zoo")
    ids = [one.sae_id for one in loaded]
    assert ids == ["cosine/s0", "dl/trainer_0", "sparsify_run/layers.1", "topafa"]
    assert [one.architecture for one in loaded] == ["cosine", "gated", "topk", "topafa"]
    assert len({one.content_hash for one in loaded}) == 4


def test_content_hash_stable_across_save_load_and_sensitive_to_weights(tmp_path) -> None:
    make_sae("cosine_per_feature").save_model(tmp_path / "a")
    [first] = load_saes(tmp_path / "a")
    first.sae.save_model(tmp_path / "b")
    [second] = load_saes(tmp_path / "b")
    assert first.content_hash == second.content_hash and len(first.content_hash) == 64
    with torch.no_grad():
        second.sae.W_dec[0, 0] += 1e-3
    second.sae.save_model(tmp_path / "c")
    [third] = load_saes(tmp_path / "c")
    assert third.content_hash != first.content_hash
    assert third.config_without_seed_hash == first.config_without_seed_hash


def test_seed_only_differences_share_config_hash_and_family(tmp_path) -> None:
    for seed in (1, 2):
        sae = make_sae("topk", seed=seed)
        sae.cfg.metadata.seed = seed
        sae.save_model(tmp_path / f"seed{seed}")
    other = make_sae("topk", seed=3)
    other.cfg.k = 8
    other.save_model(tmp_path / "k8")
    by_id = {one.sae_id: one for one in load_saes(tmp_path)}
    s1, s2, k8 = by_id["seed1"], by_id["seed2"], by_id["k8"]
    assert (s1.seed, s2.seed, k8.seed) == (1, 2, None)
    assert s1.config_without_seed_hash == s2.config_without_seed_hash != k8.config_without_seed_hash
    assert s1.content_hash != s2.content_hash
    assert s1.family == s2.family == k8.family == f"topk|blocks.0.hook_resid_post|{D_SAE}"


def test_global_and_per_feature_cosine_are_different_families(tmp_path) -> None:
    make_sae("cosine").save_model(tmp_path / "global")
    make_sae("cosine_per_feature").save_model(tmp_path / "per_feature")
    by_id = {one.sae_id: one for one in load_saes(tmp_path)}
    assert by_id["global"].family == f"cosine|blocks.0.hook_resid_post|{D_SAE}"
    assert by_id["per_feature"].family == f"cosine+perfeature|blocks.0.hook_resid_post|{D_SAE}"


def test_every_registered_format_is_covered_above() -> None:
    from evalkit.sae.loaders.formats import FORMATS

    assert set(FORMATS) == {"sae-lens", "dictionary_learning", "sparsify"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["cosine_per_feature", "topafa", "gated"])
def test_load_onto_cuda_matches_cpu(variant: str, tmp_path) -> None:
    make_sae(variant).save_model(tmp_path / "sae")
    [cpu] = load_saes(tmp_path / "sae")
    [gpu] = load_saes(tmp_path / "sae", device="cuda")
    assert gpu.content_hash == cpu.content_hash
    x = acts(2.0)
    with torch.no_grad():
        torch.testing.assert_close(gpu.sae(x.cuda()).cpu(), cpu.sae(x), rtol=1e-4, atol=1e-5)
