"""The embedded world's tiny transformer-lens model: config, training with planted massive activations,
save/load.

Massive activations (Sun et al. 2024) are planted in two ways. BOS gets a fixed large value in a few embedding
dimensions, re-written after every optimizer step so training cannot shrink them; every sublayer reads the
residual stream through LayerNorm, so the model does not need (or use) that magnitude, and it reaches the SAE
hook as the largest token (excluded from evaluation as a special token). Ordinary tokens get a context-dependent
heavy tail from reserved neurons of the last block's MLP, written after training (evalkit.world.massive).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from evalkit.world.massive import TailSpec, clear_reserved
from evalkit.world.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "evalkit_model.json"
MODEL_WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training recipe of the tiny model (all of it goes into the cache key)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 60
    eval_every: int = 100
    seed: int = 0
    massive_dims: tuple[int, ...] = (17, 61, 100)
    massive_value_bos: float = 400.0
    """BOS's planted value in each massive dimension: BOS must reach the hook at >= 100x the median norm."""
    planted_tokens: tuple[str, ...] = field(default=("<bos>",))
    tail: TailSpec = field(default_factory=TailSpec)
    """The context-dependent heavy tail of ordinary tokens (evalkit.world.massive)."""

    def hooked_config(self, d_vocab: int) -> HookedTransformerConfig:
        return HookedTransformerConfig(**self.hooked_kwargs(d_vocab))

    def hooked_kwargs(self, d_vocab: int) -> dict[str, object]:
        return dict(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            d_vocab=d_vocab,
            n_ctx=self.n_ctx,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="standard",
            seed=self.seed,
            default_prepend_bos=True,
            original_architecture="evalkit-world",
        )

    @property
    def hook_name(self) -> str:
        """The deepest residual hook: where the SAE zoo is trained."""
        return f"blocks.{self.n_layers - 1}.hook_resid_post"


def plant_massive(model: HookedTransformer, spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write BOS's fixed massive component into its embedding and keep the tail's neurons at zero (idempotent)."""
    dims = torch.tensor(spec.massive_dims)
    with torch.no_grad():
        for tok in spec.planted_tokens:
            model.W_E[tokenizer.convert_tokens_to_ids(tok), dims] = spec.massive_value_bos
    clear_reserved(model, spec.tail)


def _lr_at(step: int, spec: ModelSpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: HookedTransformer, tokens_NS: torch.Tensor, batch_size: int = 64) -> float:
    losses = [
        float(model(tokens_NS[i : i + batch_size], return_type="loss")) for i in range(0, len(tokens_NS), batch_size)
    ]
    return float(np.mean(losses))


def train_model(
    train_NS: np.ndarray,
    heldout_NS: np.ndarray,
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerFast,
) -> tuple[HookedTransformer, list[dict[str, float]]]:
    """Train from scratch, deterministically; returns the model and held-out loss milestones."""
    torch.manual_seed(spec.seed)
    model = HookedTransformer(spec.hooked_config(len(tokenizer)), tokenizer=tokenizer)
    plant_massive(model, spec, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(spec.seed)
    train = torch.from_numpy(train_NS.astype(np.int64))
    heldout = torch.from_numpy(heldout_NS.astype(np.int64))
    history: list[dict[str, float]] = []
    for step in range(spec.steps):
        if step % spec.eval_every == 0:
            history.append({"step": step, "heldout_loss": heldout_loss(model, heldout)})
            log.info("model step %d held-out loss %.3f", step, history[-1]["heldout_loss"])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        idx = torch.randint(len(train), (spec.batch_size,), generator=gen)
        loss = model(train[idx], return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        plant_massive(model, spec, tokenizer)
    history.append({"step": spec.steps, "heldout_loss": heldout_loss(model, heldout)})
    model.eval()
    return model, history


def save_model(model: HookedTransformer, spec: ModelSpec, folder: Path, extra: dict[str, object]) -> None:
    """Weights (safetensors), the config, and the tokenizer, all in `folder`, loadable by
    `load_world_model`."""
    folder.mkdir(parents=True, exist_ok=True)
    assert model.tokenizer is not None
    model.tokenizer.save_pretrained(str(folder))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / MODEL_WEIGHTS_FILE))
    meta = {
        "evalkit_world_model": True,
        "hooked_transformer_config": spec.hooked_kwargs(model.cfg.d_vocab),
        "spec": asdict(spec),
        "hook_name": spec.hook_name,
        **extra,
    }
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=1))


def is_world_model_folder(path: Path) -> bool:
    return (path / MODEL_CONFIG_FILE).is_file() and (path / MODEL_WEIGHTS_FILE).is_file()


def load_world_model(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> HookedTransformer:
    meta = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    kwargs = dict(meta["hooked_transformer_config"], device=device, dtype=dtype)
    model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=load_tokenizer(folder))
    state = load_file(str(folder / MODEL_WEIGHTS_FILE))
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    model.to(device)
    model.eval()
    return model
