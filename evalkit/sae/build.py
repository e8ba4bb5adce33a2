"""Build a sae-lens SAE from a config dict and a state dict, checking everything first.

Every loader ends here, so the checks are the same for every format: unknown architecture (with close
matches), missing/unexpected keys, wrong shapes, NaN/Inf values. Each failure is an EvalkitInputError naming
the file.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.sae import SAE
from safetensors import SafetensorError
from safetensors.torch import load_file

from evalkit.core.errors import EvalkitInputError
from evalkit.core.safeload import load_weights_only
from evalkit.sae.registration import ensure_registered
from evalkit.sae.validate import validate_config, validate_weights

StateDict = dict[str, torch.Tensor]


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvalkitInputError(path, "missing file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalkitInputError(path, f"unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EvalkitInputError(path, "expected a JSON object")
    return data


def read_safetensors(path: Path) -> StateDict:
    if not path.is_file():
        raise EvalkitInputError(path, "missing file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise EvalkitInputError(path, f"unreadable or corrupt safetensors file ({exc})") from exc


def read_torch_state(path: Path) -> StateDict:
    """A torch state dict, loaded with weights_only=True (never unpickle objects from user files)."""
    if not path.is_file():
        raise EvalkitInputError(path, "missing file")
    state = load_weights_only(path, map_location="cpu")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalkitInputError(path, "expected a state dict of tensors")
    return dict(state)


def sae_class_for(architecture: str, where: Path | str) -> tuple[type[SAE[Any]], type[Any]]:
    ensure_registered()
    if architecture not in SAE_CLASS_REGISTRY:
        close = difflib.get_close_matches(architecture, list(SAE_CLASS_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(SAE_CLASS_REGISTRY))}"
        raise EvalkitInputError(where, f"unknown architecture {architecture!r}{hint}")
    return SAE_CLASS_REGISTRY[architecture]


def check_finite(state: StateDict, where: Path | str) -> None:
    for name, tensor in sorted(state.items()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise EvalkitInputError(where, f"weight {name!r} has {n_bad} NaN/Inf values")


def check_layout(expected: dict[str, torch.Size], state: StateDict, where: Path | str) -> None:
    missing = sorted(set(expected) - set(state))
    if missing:
        raise EvalkitInputError(where, f"missing key(s) {', '.join(map(repr, missing))}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise EvalkitInputError(where, f"unexpected key(s) {', '.join(map(repr, unexpected))}")
    for name, shape in sorted(expected.items()):
        if tuple(state[name].shape) != tuple(shape):
            raise EvalkitInputError(
                where, f"wrong shape for {name!r}: {list(state[name].shape)}, config implies {list(shape)}"
            )


def build_sae(cfg_dict: dict[str, Any], state: StateDict, where: Path | str, device: str = "cpu") -> SAE[Any]:
    """A sae-lens SAE with the given weights; the config decides class and shapes; weights must fit."""
    architecture = str(cfg_dict.get("architecture", ""))
    sae_cls, cfg_cls = sae_class_for(architecture, where)
    # Loaders of other formats fill every field themselves; sae-lens folders were checked for explicit fields
    # against the file (evalkit.sae.loaders.saelens), so only ranges are checked here.
    validate_config(cfg_dict, cfg_cls, where, explicit=False)
    try:
        sae_cfg = cfg_cls.from_dict({**cfg_dict, "device": "meta", "dtype": "float32"})
        skeleton = sae_cls(sae_cfg)
    except (TypeError, ValueError, KeyError) as exc:
        raise EvalkitInputError(where, f"invalid {architecture} config ({exc})") from exc
    state = {k: v for k, v in state.items()}
    skeleton.process_state_dict_for_loading(state)
    check_layout({k: v.shape for k, v in skeleton.state_dict().items()}, state, where)
    validate_weights(state, architecture, where)
    check_finite(state, where)
    skeleton.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
    skeleton.cfg.device = device
    return skeleton.to(device=device, dtype=torch.float32)
