"""Real loading paths, offline, from a Hugging Face cache the tests fill themselves (tests/helpers/hf_cache.py).

`evalkit run` loads `gpt2` through transformer-lens from the hub cache, a registry SAE through sae-lens'
`from_pretrained` (gpt2-small-res-jb), a Gemma Scope JumpReLU SAE through sae-lens' own `gemma_2` converter, and
streams a Hugging Face dataset by name from the datasets cache, all with HF_HUB_OFFLINE=1. The default run uses a
GPT-2 config at a small shape (2 layers, d_model 64, the real 50,257-token vocabulary) and a small registry SAE;
`slow` tests run GPT-2 small's exact shape with the registry SAE at its real size (d_sae 24,576). Values are checked
against direct computations with the same model and SAE weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.hf_cache import (
    HfCache,
    add_gemma_scope_sae,
    add_gpt2,
    add_saelens_release_sae,
    add_text_dataset,
    offline,
)

from evalkit.app.cli import main

RELEASE = "gpt2-small-res-jb"
DATASET = "evalkit-test/tiny-web-text"
SMALL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128}
SMALL_HOOK = "blocks.1.hook_resid_pre"
CONTEXT = 32
N_TOKENS = 96
WORDS = "the cat sat on a mat while dogs ran through green fields under bright skies near old towns".split()


def documents(n: int = 60, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    return [{"id": i, "body": " ".join(rng.choice(WORDS, size=40))} for i in range(n)]


def jb_cfg(d_in: int, d_sae: int, hook: str) -> dict[str, object]:
    """gpt2-small-res-jb's cfg.json shape (pre-6.0 sae-lens: top-level hook_point and model_name)."""
    return {
        "model_name": "gpt2-small",
        "hook_point": hook,
        "hook_point_layer": int(hook.split(".")[1]),
        "hook_point_head_index": None,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "torch.float32",
        "device": "cpu",
        "context_size": CONTEXT,
        "dataset_path": DATASET,
        "prepend_bos": True,
        "normalize_activations": "none",
    }


def jb_weights(d_in: int, d_sae: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return {
        "W_enc": W_dec.T.clone() * 0.8,
        "W_dec": W_dec,
        "b_enc": -torch.rand(d_sae, generator=gen) * 0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.05,
    }


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> HfCache:
    """gpt2 (small shape), a registry SAE at its hook, and a Hugging Face text dataset; built once a session."""
    root = tmp_path_factory.mktemp("hf-small")
    cache = HfCache(root)
    add_gpt2(cache, root / "work", **SMALL)
    add_saelens_release_sae(
        cache, RELEASE, SMALL_HOOK, jb_cfg(64, 256, SMALL_HOOK), jb_weights(64, 256), root / "work-sae"
    )
    add_text_dataset(cache, DATASET, documents(), root / "work-data")
    return cache


@pytest.fixture
def small_offline(small_cache: HfCache) -> Iterator[HfCache]:
    with offline(small_cache):
        yield small_cache


def direct_codes(model: object, hook: str, weights: dict[str, torch.Tensor], n_tokens: int) -> torch.Tensor:
    """Codes of the first `n_tokens` non-BOS tokens, computed here: the dataset's texts tokenized and cut into
    BOS + (CONTEXT - 1)-token rows, the model run to the hook, ReLU((x - b_dec) W_enc + b_enc)."""
    tok = model.tokenizer  # type: ignore[attr-defined]
    ids: list[int] = []
    for doc in documents():
        ids += tok(doc["body"], add_special_tokens=False)["input_ids"]
    body = CONTEXT - 1
    n_rows = -(-n_tokens // body)
    rows = [[tok.bos_token_id, *ids[i * body : (i + 1) * body]] for i in range(n_rows)]
    _, cache = model.run_with_cache(torch.tensor(rows), names_filter=hook)  # type: ignore[attr-defined]
    x_TD = cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1])[:n_tokens]
    return torch.relu((x_TD - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]), x_TD


def sae_level(out: Path) -> dict[str, float]:
    frame = pd.read_parquet(out / "results.parquet")
    level = frame[frame["latent"].isna()]
    return dict(zip(level["metric"], level["value"], strict=True))


def test_gpt2_registry_sae_and_hf_dataset_offline(small_offline: HfCache, tmp_path: Path) -> None:
    """No --model/--hook: both come from the registry SAE's metadata, as do the context size and BOS."""
    out = tmp_path / "out"
    spec = f"sae-lens:{RELEASE}/{SMALL_HOOK}"
    argv = ["run", "--sae", spec, "--dataset", DATASET, "--text-column", "body", "--tokens", str(N_TOKENS)]
    code = main([*argv, "--metrics", "core,downstream,sparsity", "--out", str(out), "--no-report"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    (source,) = run["sources"].values()
    assert source["description"]["model"] == "gpt2-small"
    assert source["description"]["seq_len"] == CONTEXT and source["description"]["prepend_bos"] is True
    assert run["n_tokens"] == N_TOKENS

    from transformer_lens import HookedTransformer

    # As sae-lens loads it for this release (its yaml adds center_writing_weights to the SAE's config).
    model = HookedTransformer.from_pretrained_no_processing("gpt2", device="cpu", center_writing_weights=True)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 64, 50257)
    f_TF, x_TD = direct_codes(model, SMALL_HOOK, jb_weights(64, 256), N_TOKENS)
    values = sae_level(out)
    assert values["l0"] == pytest.approx(float((f_TF > 0).sum(1).double().mean()), rel=1e-6)
    x_hat = f_TF @ jb_weights(64, 256)["W_dec"] + jb_weights(64, 256)["b_dec"]
    assert values["mse"] == pytest.approx(float((x_TD - x_hat).pow(2).sum(1).double().mean()), rel=1e-4)
    assert {"ce_loss_clean", "ce_loss_sae", "kl_div_sae"} <= set(values)
    density = pd.read_parquet(out / "features.parquet").set_index("latent")["feature_density"]
    assert len(density) == 256
    np.testing.assert_allclose(density.sort_index().to_numpy(), (f_TF > 0).double().mean(0).numpy(), atol=1e-12)


def test_d_model_mismatch_is_exit_2_before_the_pass(
    small_offline: HfCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 768-wide SAE on the 64-wide model: one line naming the SAE and both widths, nothing written."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(
        StandardSAEConfig(d_in=768, d_sae=16, metadata=SAEMetadata(hook_name=SMALL_HOOK, model_name="gpt2"))
    )
    sae.save_model(tmp_path / "wide")
    out = tmp_path / "out"
    code = main(
        ["run", "--sae", str(tmp_path / "wide"), "--dataset", DATASET, "--text-column", "body", "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "wide" in err and "768" in err and "64" in err
    assert not (out / "results.parquet").exists()


def test_missing_hook_is_exit_2(small_offline: HfCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"sae-lens:{RELEASE}/{SMALL_HOOK}"
    argv = ["run", "--sae", spec, "--model", "gpt2", "--hook", "blocks.7.hook_resid_pre", "--dataset", DATASET]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "blocks.7.hook_resid_pre" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- Gemma Scope (JumpReLU)

GEMMA_RELEASE = "gemma-scope-2b-pt-res"
GEMMA_EMBED_ID = "embedding/width_4k/average_l0_6"


def gemma_params(d_in: int, d_sae: int, seed: int = 2) -> dict[str, np.ndarray]:
    """Gemma Scope's params.npz keys (w_enc [d_in, d_sae], w_dec [d_sae, d_in], b_enc, b_dec, threshold)."""
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_in), dtype=np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    return {
        "w_enc": (w_dec.T * 2.0).astype(np.float32),
        "w_dec": w_dec,
        "b_enc": np.zeros(d_sae, dtype=np.float32),
        "b_dec": (rng.standard_normal(d_in) * 0.01).astype(np.float32),
        "threshold": (0.05 + rng.random(d_sae) * 0.1).astype(np.float32),
    }


def test_gemma_scope_jumprelu_through_saelens_converter(tmp_path: Path) -> None:
    """The real release's embedding SAE at its real size (d_in 2304, d_sae 4096), converted by sae-lens'
    `gemma_2` loader (w_* renamed, the embedding rescale by √d_in), on precomputed activations."""
    cache = HfCache(tmp_path / "hf")
    params = gemma_params(2304, 4096)
    add_gemma_scope_sae(cache, GEMMA_RELEASE, GEMMA_EMBED_ID, params, tmp_path / "work")
    gen = torch.Generator().manual_seed(4)
    x_TD = torch.randn(256, 2304, generator=gen)
    from safetensors.torch import save_file

    save_file({"activations": x_TD}, str(tmp_path / "acts.safetensors"))
    out = tmp_path / "out"
    with offline(cache):
        argv = ["run", "--sae", f"sae-lens:{GEMMA_RELEASE}/{GEMMA_EMBED_ID}", "--activations"]
        code = main([*argv, str(tmp_path / "acts.safetensors"), "--metrics", "core,sparsity", "--out", str(out)])
    assert code == 0
    # Gemma Scope: no b_dec subtraction at the input; the embedding SAE's W_enc is divided by √d_in.
    pre = x_TD @ (torch.from_numpy(params["w_enc"]) / 2304**0.5) + torch.from_numpy(params["b_enc"])
    f_TF = pre * (pre > torch.from_numpy(params["threshold"]))
    values = sae_level(out)
    assert values["l0"] == pytest.approx(float((f_TF != 0).sum(1).double().mean()), rel=1e-6)
    assert 0 < values["l0"] < 4096
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["architecture"]) == {"jumprelu"} and set(frame["d_sae"]) == {4096}


# ------------------------------------------------------------------------------ GPT-2 small's exact shape (slow)

FULL_HOOK = "blocks.8.hook_resid_pre"
FULL_D_SAE = 24576


@pytest.fixture(scope="session")
def full_cache(tmp_path_factory: pytest.TempPathFactory) -> HfCache:
    """gpt2 at GPT-2 small's exact config (random weights, ~500 MB) and gpt2-small-res-jb's blocks.8 SAE at its
    real size (768 x 24,576), built once a session."""
    root = tmp_path_factory.mktemp("hf-full")
    cache = HfCache(root)
    add_gpt2(cache, root / "work")
    cfg = jb_cfg(768, FULL_D_SAE, FULL_HOOK)
    add_saelens_release_sae(cache, RELEASE, FULL_HOOK, cfg, jb_weights(768, FULL_D_SAE), root / "work-sae")
    add_text_dataset(cache, DATASET, documents(), root / "work-data")
    return cache


@pytest.mark.slow
def test_gpt2_small_shape_with_real_size_registry_sae(full_cache: HfCache, tmp_path: Path) -> None:
    """`evalkit run --model gpt2 --hook blocks.8.hook_resid_pre` with gpt2-small-res-jb at d_sae 24,576, offline."""
    from transformer_lens import HookedTransformer

    out = tmp_path / "out"
    spec = f"sae-lens:{RELEASE}/{FULL_HOOK}"
    argv = ["run", "--sae", spec, "--model", "gpt2", "--hook", FULL_HOOK, "--dataset", DATASET]
    argv += ["--text-column", "body", "--tokens", "64", "--metrics", "core,downstream,sparsity", "--no-report"]
    with offline(full_cache):
        assert main([*argv, "--out", str(out)]) == 0
        model = HookedTransformer.from_pretrained_no_processing("gpt2", device="cpu", center_writing_weights=True)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (12, 768, 50257)
    weights = jb_weights(768, FULL_D_SAE)
    f_TF, x_TD = direct_codes(model, FULL_HOOK, weights, 64)
    values = sae_level(out)
    assert values["l0"] == pytest.approx(float((f_TF > 0).sum(1).double().mean()), rel=1e-6)
    x_hat = f_TF @ weights["W_dec"] + weights["b_dec"]
    assert values["mse"] == pytest.approx(float((x_TD - x_hat).pow(2).sum(1).double().mean()), rel=1e-4)
    features = pd.read_parquet(out / "features.parquet")
    assert len(features) == FULL_D_SAE and len(pd.read_csv(out / "features.csv")) == FULL_D_SAE  # <= 200k rows
