"""sae-lens folders: cfg.json + sae_weights.safetensors (6.x and older configs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
from sae_lens.saes.sae import SAE

from evalkit.core.errors import EvalkitInputError
from evalkit.sae.build import build_sae, read_json, read_safetensors, sae_class_for
from evalkit.sae.validate import validate_config

MARKERS = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME)
TOP_LEVEL_METADATA = ("hook_name", "model_name", "hook_head_index", "context_size", "prepend_bos")


def normalise_saelens_cfg(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """A 6.x-shaped config dict: pre-6 configs converted by sae-lens' own rules, top-level hook/model kept."""
    for field in ("d_in", "d_sae"):
        if not isinstance(raw.get(field), int):
            raise EvalkitInputError(where, f"missing or non-integer field {field!r}")
    sae_class_for(str(raw.get("architecture", "standard")), where)
    try:
        cfg = handle_config_defaulting(copy.deepcopy(raw))
    except (KeyError, ValueError, TypeError) as exc:
        raise EvalkitInputError(where, f"invalid sae-lens config ({exc})") from exc
    # After defaulting (pre-6 configs carry k in activation_fn_kwargs), before sae-lens fills any default.
    validate_config(cfg, sae_class_for(str(cfg.get("architecture", "standard")), where)[1], where)
    metadata = dict(cfg.get("metadata") or {})
    for key in TOP_LEVEL_METADATA:  # some configs written by hand keep these at top level next to a 6.x version
        if metadata.get(key) is None and raw.get(key) is not None:
            metadata[key] = raw[key]
    if metadata.get("hook_name") is None and raw.get("hook_point") is not None:
        metadata["hook_name"] = raw["hook_point"]
    cfg["metadata"] = metadata
    return cfg


def load_saelens_folder(folder: Path, device: str) -> tuple[SAE[Any], dict[str, Any]]:
    cfg_path = folder / SAE_CFG_FILENAME
    raw = read_json(cfg_path)
    cfg = normalise_saelens_cfg(raw, cfg_path)
    state = read_safetensors(folder / SAE_WEIGHTS_FILENAME)
    sae = build_sae(cfg, state, folder / SAE_WEIGHTS_FILENAME, device)
    return sae, raw
