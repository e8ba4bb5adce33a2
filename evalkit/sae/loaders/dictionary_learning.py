"""dictionary_learning folders: config.json ({"trainer": {...}}) + ae.pt (a state dict, loaded
weights_only=True).

Each trainer class maps to one key layout and the equivalent sae-lens SAE (encode and decode outputs
identical):
- StandardTrainer, StandardTrainerAprilUpdate, PAnnealTrainer (AutoEncoder): encoder.weight [d_sae, d_in],
  encoder.bias, decoder.weight [d_in, d_sae], bias (= b_dec, subtracted before encoding) → `standard`. The
  AutoEncoderNew layout (decoder.bias, no input centring) → `standard` with apply_b_dec_to_input = False.
- GatedSAETrainer, GatedAnnealTrainer (GatedAutoEncoder): encoder.weight, decoder.weight, decoder_bias, r_mag,
  gate_bias, mag_bias → `gated`.
- TopKTrainer (AutoEncoderTopK): encoder/decoder linears, b_dec, buffers k, threshold; its encode is per-token
  top-k of ReLU(encoder(x − b_dec)) → `topk` (the threshold buffer is an unused alternative; kept in cfg
  only).
- BatchTopKTrainer (BatchTopKSAE): same keys; inference keeps ReLU(s)·1[ReLU(s) > θ] → `jumprelu` with θ_i =
  θ.
- MatryoshkaBatchTopKTrainer (MatryoshkaBatchTopKSAE): W_enc [d_in, d_sae], b_enc, W_dec, b_dec, k, threshold,
  group_sizes → `jumprelu` with θ_i = θ.
- JumpReluTrainer (JumpReluAutoEncoder): W_enc, b_enc, W_dec, b_dec, threshold [d_sae]; no input centring →
  `jumprelu` with apply_b_dec_to_input = False.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAE

from evalkit.core.errors import EvalkitInputError
from evalkit.core.registry import Registry
from evalkit.sae.build import StateDict, build_sae, read_json, read_torch_state

log = logging.getLogger(__name__)

MARKERS = ("config.json", "ae.pt")

Converted = tuple[dict[str, Any], StateDict]
"""(sae-lens config fields beyond d_in/d_sae/metadata, sae-lens state dict)."""


@dataclass(frozen=True)
class TrainerLayout:
    """How one dictionary_learning trainer class's ae.pt maps to a sae-lens SAE."""

    architecture: str
    """evalkit architecture name."""
    convert: Callable[[StateDict, dict[str, Any], Path], Converted]


TRAINER_CLASSES: Registry[TrainerLayout] = Registry("dictionary_learning trainer class")


def need(state: StateDict, key: str, where: Path, trainer: str) -> torch.Tensor:
    if key not in state:
        raise EvalkitInputError(where, f"missing key {key!r} (expected for {trainer})")
    return state[key]


def _relu_autoencoder(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    centred = "decoder.bias" not in state  # AutoEncoderNew keeps b_dec in the decoder and does not centre x
    b_dec = need(state, "bias", where, name) if centred else state["decoder.bias"]
    sae_state = {
        "W_enc": need(state, "encoder.weight", where, name).T,
        "b_enc": need(state, "encoder.bias", where, name),
        "W_dec": need(state, "decoder.weight", where, name).T,
        "b_dec": b_dec,
    }
    return {"architecture": "standard", "apply_b_dec_to_input": centred}, sae_state


def _gated(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    sae_state = {
        "W_enc": need(state, "encoder.weight", where, name).T,
        "W_dec": need(state, "decoder.weight", where, name).T,
        "b_dec": need(state, "decoder_bias", where, name),
        "r_mag": need(state, "r_mag", where, name),
        "b_gate": need(state, "gate_bias", where, name),
        "b_mag": need(state, "mag_bias", where, name),
    }
    return {"architecture": "gated", "apply_b_dec_to_input": True}, sae_state


def _linear_topk_state(state: StateDict, name: str, where: Path) -> StateDict:
    return {
        "W_enc": need(state, "encoder.weight", where, name).T,
        "b_enc": need(state, "encoder.bias", where, name),
        "W_dec": need(state, "decoder.weight", where, name).T,
        "b_dec": need(state, "b_dec", where, name),
    }


def _topk(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    k = int(need(state, "k", where, name).item())
    return {"architecture": "topk", "k": k, "apply_b_dec_to_input": True}, _linear_topk_state(state, name, where)


def _global_threshold(state: StateDict, name: str, where: Path, d_sae: int) -> torch.Tensor:
    threshold = need(state, "threshold", where, name)
    if threshold.numel() != 1:
        raise EvalkitInputError(where, f"threshold should be one number for {name}, got shape {list(threshold.shape)}")
    if float(threshold) < 0:
        raise EvalkitInputError(
            where,
            f"threshold is {float(threshold)} (never set during training); {name} has no inference rule without it",
        )
    return threshold.reshape(()).expand(d_sae).clone()


def _batchtopk(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    sae_state = _linear_topk_state(state, name, where)
    sae_state["threshold"] = _global_threshold(state, name, where, sae_state["b_enc"].shape[0])
    return {"architecture": "jumprelu", "apply_b_dec_to_input": True}, sae_state


def _matryoshka(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    sae_state = {key: need(state, key, where, name) for key in ("W_enc", "b_enc", "W_dec", "b_dec")}
    sae_state["threshold"] = _global_threshold(state, name, where, sae_state["b_enc"].shape[0])
    groups = [int(g) for g in need(state, "group_sizes", where, name).tolist()]
    return {
        "architecture": "jumprelu",
        "apply_b_dec_to_input": True,
        "matryoshka_group_sizes": groups,
    }, sae_state


def _jumprelu(state: StateDict, trainer: dict[str, Any], where: Path) -> Converted:
    name = str(trainer.get("trainer_class"))
    sae_state = {key: need(state, key, where, name) for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    return {"architecture": "jumprelu", "apply_b_dec_to_input": False}, sae_state


for _name in ("StandardTrainer", "StandardTrainerAprilUpdate", "PAnnealTrainer"):
    TRAINER_CLASSES.add(_name, TrainerLayout("standard", _relu_autoencoder))
for _name in ("GatedSAETrainer", "GatedAnnealTrainer"):
    TRAINER_CLASSES.add(_name, TrainerLayout("gated", _gated))
TRAINER_CLASSES.add("TopKTrainer", TrainerLayout("topk", _topk))
TRAINER_CLASSES.add("BatchTopKTrainer", TrainerLayout("batchtopk", _batchtopk))
TRAINER_CLASSES.add("MatryoshkaBatchTopKTrainer", TrainerLayout("matryoshka", _matryoshka))
TRAINER_CLASSES.add("JumpReluTrainer", TrainerLayout("jumprelu", _jumprelu))


def hook_name_of(trainer: dict[str, Any]) -> str | None:
    """transformer-lens hook: resid_post of `layer` (sae-lens' convention), unless the submodule
    is named as something else, which is then kept verbatim."""
    submodule = trainer.get("submodule_name")
    if submodule and "resid" not in str(submodule):
        return str(submodule)
    layer = trainer.get("layer")
    return f"blocks.{int(layer)}.hook_resid_post" if isinstance(layer, int) else None


def trainer_block(config: dict[str, Any], where: Path) -> dict[str, Any]:
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        raise EvalkitInputError(where, "missing the 'trainer' block of a dictionary_learning config")
    for key in ("trainer_class", "activation_dim", "dict_size"):
        if key not in trainer:
            raise EvalkitInputError(where, f"missing field 'trainer.{key}'")
    return trainer


def load_dictionary_learning_folder(folder: Path, device: str) -> tuple[SAE[Any], dict[str, Any]]:
    config_path, weights_path = folder / "config.json", folder / "ae.pt"
    config = read_json(config_path)
    trainer = trainer_block(config, config_path)
    layout = TRAINER_CLASSES.get(str(trainer["trainer_class"]), where=str(config_path))
    extra, sae_state = layout.convert(read_torch_state(weights_path), trainer, weights_path)
    lm_name = trainer.get("lm_name")
    metadata = {
        "model_name": str(lm_name) if lm_name else None,
        "hook_name": hook_name_of(trainer),
        "evalkit_architecture": layout.architecture,
        "source_format": "dictionary_learning",
        "seed": trainer.get("seed"),
    }
    cfg = {
        "d_in": int(trainer["activation_dim"]),
        "d_sae": int(trainer["dict_size"]),
        **extra,
        "metadata": metadata,
    }
    sae = build_sae(cfg, {k: v.contiguous() for k, v in sae_state.items()}, weights_path, device)
    return sae, {**cfg, "source_config": config}
