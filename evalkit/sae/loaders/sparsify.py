"""EleutherAI sparsify folders: cfg.json + sae.safetensors, one subfolder per hookpoint.

Layout (sparsify SparseCoder.save_to_disk): cfg.json holds the SparseCoderConfig fields plus `d_in`; the
weights are encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in]. Encoding is
top-k of ReLU(encoder(x − b_dec)), decoding top_acts @ W_dec + b_dec: exactly sae-lens `topk`. Transcoders,
skip connections and the groupmax activation compute something else and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import SAE

from evalkit.core.errors import EvalkitInputError
from evalkit.sae.build import build_sae, read_json, read_safetensors
from evalkit.sae.loaders.dictionary_learning import need

MARKERS = ("cfg.json", "sae.safetensors")
LAYER_HOOKPOINT = re.compile(r"^(?:.*\.)?layers[._](\d+)$")


def hook_name_of(hookpoint: str) -> str:
    """`layers.N` (a transformer block's output) → `blocks.N.hook_resid_post`, sae-lens' convention; others
    verbatim."""
    match = LAYER_HOOKPOINT.match(hookpoint)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else hookpoint


def check_supported(raw: dict[str, Any], where: Path) -> None:
    if raw.get("activation", "topk") != "topk":
        raise EvalkitInputError(where, f"unsupported sparsify activation {raw.get('activation')!r} (only topk)")
    for flag in ("transcode", "skip_connection", "embed_skip", "gram_lookup"):
        if raw.get(flag):
            raise EvalkitInputError(where, f"unsupported sparsify option {flag}=true (not a plain SAE)")
    for key in ("d_in", "k"):
        if not isinstance(raw.get(key), int):
            raise EvalkitInputError(where, f"missing or non-integer field {key!r}")


def parent_model_name(folder: Path) -> str | None:
    """The run's config.json (one level up) names the model, when present."""
    parent_cfg = folder.parent / "config.json"
    if not parent_cfg.is_file():
        return None
    model = read_json(parent_cfg).get("model")
    return str(model) if model else None


def load_sparsify_folder(folder: Path, device: str) -> tuple[SAE[Any], dict[str, Any]]:
    cfg_path, weights_path = folder / "cfg.json", folder / "sae.safetensors"
    raw = read_json(cfg_path)
    check_supported(raw, cfg_path)
    state = read_safetensors(weights_path)
    encoder_weight = need(state, "encoder.weight", weights_path, "sparsify")
    d_sae = int(raw.get("num_latents") or 0) or int(raw["d_in"]) * int(raw.get("expansion_factor", 32))
    sae_state = {
        "W_enc": encoder_weight.T.contiguous(),
        "b_enc": need(state, "encoder.bias", weights_path, "sparsify"),
        "W_dec": need(state, "W_dec", weights_path, "sparsify"),
        "b_dec": need(state, "b_dec", weights_path, "sparsify"),
    }
    metadata = {
        "model_name": parent_model_name(folder),
        "hook_name": hook_name_of(folder.name),
        "hookpoint": folder.name,
        "evalkit_architecture": "topk",
        "source_format": "sparsify",
    }
    cfg = {
        "architecture": "topk",
        "d_in": int(raw["d_in"]),
        "d_sae": d_sae,
        "k": int(raw["k"]),
        "metadata": metadata,
    }
    sae = build_sae(cfg, sae_state, weights_path, device)
    return sae, {**cfg, "source_config": raw}
