"""Bad inputs: each broken SAE raises EvalkitInputError naming the file and the problem (CLI: exit 2)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from evalkit.core.errors import EvalkitInputError
from evalkit.sae.factory import (
    dl_relu_state,
    dl_topk_state,
    make_sae,
    write_dictionary_learning,
    write_sparsify,
)
from evalkit.sae.loaders.formats import load_saes


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def saved(tmp_path: Path, variant: str = "standard") -> Path:
    folder = tmp_path / "sae"
    make_sae(variant).save_model(folder)
    return folder


def rewrite_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(folder / "sae_weights.safetensors")
    edit(state)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "sae_weights.safetensors")


def rewrite_cfg(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _nan(state: dict[str, torch.Tensor]) -> None:
    state["W_dec"][0, 0] = float("nan")


def _inf(state: dict[str, torch.Tensor]) -> None:
    state["b_enc"][3] = float("inf")


def _corrupt_weights(folder: Path) -> None:
    (folder / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage" * 10)


def _corrupt_cfg(folder: Path) -> None:
    (folder / "cfg.json").write_text("{not json")


def _arch(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.update(architecture=name)


SAE_LENS_BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing weights": (
        lambda f: (f / "sae_weights.safetensors").unlink(),
        "sae",
        "missing sae_weights.safetensors (sae-lens)",
    ),
    "missing cfg": (lambda f: (f / "cfg.json").unlink(), "sae", "missing cfg.json (sae-lens)"),
    "wrong shape": (
        lambda f: rewrite_weights(f, lambda s: s.update(W_enc=s["W_enc"].T.contiguous())),
        "sae_weights.safetensors",
        "wrong shape for 'W_enc'",
    ),
    "missing key": (
        lambda f: rewrite_weights(f, lambda s: s.pop("b_enc")),
        "sae_weights.safetensors",
        "'b_enc'",
    ),
    "extra key": (
        lambda f: rewrite_weights(f, lambda s: s.update(junk=torch.zeros(2))),
        "sae_weights.safetensors",
        "unexpected key(s) 'junk'",
    ),
    "nan": (lambda f: rewrite_weights(f, _nan), "sae_weights.safetensors", "'W_dec' has 1 NaN/Inf"),
    "inf": (lambda f: rewrite_weights(f, _inf), "sae_weights.safetensors", "'b_enc' has 1 NaN/Inf"),
    "unknown architecture": (lambda f: rewrite_cfg(f, _arch("topkk")), "cfg.json", "did you mean topk"),
    "corrupt weights": (_corrupt_weights, "sae_weights.safetensors", "corrupt safetensors"),
    "corrupt cfg": (_corrupt_cfg, "cfg.json", "unreadable JSON"),
    "no d_sae": (lambda f: rewrite_cfg(f, lambda c: c.pop("d_sae")), "cfg.json", "'d_sae'"),
}


@pytest.mark.parametrize("case", sorted(SAE_LENS_BREAKAGES))
def test_bad_sae_lens_folder_names_file_and_problem(case: str, tmp_path) -> None:
    breakage, file_name, problem = SAE_LENS_BREAKAGES[case]
    folder = saved(tmp_path)
    breakage(folder)
    with pytest.raises(EvalkitInputError) as info:
        load_saes(folder)
    message = str(info.value)
    assert file_name in message and problem in message, message


def test_bad_dictionary_learning_inputs(tmp_path) -> None:
    reference = make_sae("topk")
    cases = {
        "TopKTrainr": (dl_topk_state(reference), "did you mean TopKTrainer"),
        "BatchTopKTrainer": (dl_topk_state(reference, -1.0), "never set during training"),
        "GatedSAETrainer": (
            dl_relu_state(reference),
            "missing key 'decoder_bias' (expected for GatedSAETrainer)",
        ),
    }
    for i, (trainer_class, (state, problem)) in enumerate(cases.items()):
        folder = write_dictionary_learning(tmp_path / f"dl{i}", trainer_class, state)
        with pytest.raises(EvalkitInputError, match="config.json|ae.pt") as info:
            load_saes(folder)
        assert problem in str(info.value), str(info.value)
    (tmp_path / "dl1" / "ae.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(EvalkitInputError, match=r"ae\.pt: unreadable or corrupt torch file"):
        load_saes(tmp_path / "dl1")


def test_dictionary_learning_refuses_pickled_objects(tmp_path) -> None:
    folder = write_dictionary_learning(tmp_path / "dl", "TopKTrainer", dl_topk_state(make_sae("topk")))
    torch.save({"encoder.weight": torch.zeros(2), "evil": Path("/")}, folder / "ae.pt")
    with pytest.raises(EvalkitInputError, match=r"ae\.pt: unreadable or corrupt torch file"):
        load_saes(folder)


def test_bad_sparsify_inputs(tmp_path) -> None:
    write_sparsify(tmp_path / "run", "layers.0", make_sae("topk"), activation="groupmax")
    with pytest.raises(EvalkitInputError, match=r"cfg\.json: unsupported sparsify activation 'groupmax'"):
        load_saes(tmp_path / "run")
    write_sparsify(tmp_path / "run2", "layers.0", make_sae("topk"), transcode=True)
    with pytest.raises(EvalkitInputError, match="transcode=true"):
        load_saes(tmp_path / "run2")


def test_paths_and_format_override(tmp_path) -> None:
    with pytest.raises(EvalkitInputError, match="no such file or folder"):
        load_saes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalkitInputError, match="no SAE found here or below"):
        load_saes(tmp_path / "empty")
    folder = saved(tmp_path)
    with pytest.raises(EvalkitInputError, match="unknown SAE format 'sparsfy'; did you mean sparsify"):
        load_saes(folder, format="sparsfy")
    assert load_saes(folder, format="sae-lens")[0].format == "sae-lens"
    save_file({"x": torch.zeros(1)}, folder / "sae.safetensors")
    with pytest.raises(EvalkitInputError, match="several formats"):
        load_saes(folder)
    assert load_saes(folder, format="sae-lens")[0].architecture == "standard"


def test_pretrained_offline_without_cache_is_a_clear_input_error(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        EvalkitInputError,
        match="gpt2-small-res-jb/blocks.8.hook_resid_pre: this SAE is not in the local Hugging Face cache",
    ) as info:
        load_saes("sae-lens:gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert "HF_HUB_OFFLINE=1" in str(info.value)
    with pytest.raises(EvalkitInputError, match="unknown sae-lens release 'gpt2-smal-res-jb'; did you mean"):
        load_saes("sae-lens:gpt2-smal-res-jb/blocks.8.hook_resid_pre")
    with pytest.raises(EvalkitInputError, match="unknown SAE id 'blocks.8.hook_resid_pree'"):
        load_saes("sae-lens:gpt2-small-res-jb/blocks.8.hook_resid_pree")


@pytest.mark.parametrize("case", ["nan", "wrong shape", "unknown architecture"])
def test_cli_exits_2_on_bad_sae(case: str, tmp_path, capsys) -> None:
    pytest.importorskip("evalkit.app.run_cli")
    from evalkit.app.cli import main

    breakage, file_name, problem = SAE_LENS_BREAKAGES[case]
    folder = saved(tmp_path)
    breakage(folder)
    assert main(["run", "--sae", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert file_name in err and problem in err, err
