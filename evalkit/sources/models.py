"""Model-backed sources: load any transformer-lens model (HF name or an evalkit folder), run it to a hook,
stream.

`ModelSource` is also the handle the runner uses for downstream metrics: it exposes `.model`, `.hook_name`,
`.layer` (the block the hook belongs to, for `start_at_layer` splicing) and `token_batches()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.core.hub import missing_from_cache, offline
from evalkit.core.registry import Registry
from evalkit.sources.base import SourceInfo, positions_like, special_mask
from evalkit.world.model import is_world_model_folder, load_world_model

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    reg: Registry[torch.dtype] = Registry("dtype")
    for key, value in DTYPES.items():
        reg.add(key, value)
    return reg.get(str(name).removeprefix("torch."), where="--dtype")


def load_model(
    name_or_path: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    from_pretrained_kwargs: dict[str, Any] | None = None,
) -> HookedTransformer:
    """A local folder evalkit wrote (weights, config, tokenizer), or a transformer-lens pretrained model name
    (from the Hugging Face hub or its cache: HF_HUB_OFFLINE=1 works with a filled cache), loaded as sae-lens loads
    it (`from_pretrained_no_processing` with the SAE's `model_from_pretrained_kwargs`, e.g. gpt2-small-res-jb's
    center_writing_weights), so the activations are those the SAE was trained on."""
    torch_dtype = parse_dtype(dtype)
    path = Path(name_or_path)
    if path.exists():
        if not is_world_model_folder(path):
            raise EvalkitInputError(
                path,
                "not a model folder evalkit can load (expected evalkit_model.json and "
                "model.safetensors); pass a Hugging Face model name for pretrained models",
            )
        return load_world_model(path, device=device, dtype=torch_dtype)
    try:
        # As sae-lens loads the model its SAEs were trained and evaluated on: unprocessed (no layer-norm folding,
        # no centring, which would move the residual stream the SAE reads) plus the SAE's own kwargs.
        return HookedTransformer.from_pretrained_no_processing(
            str(name_or_path), device=device, dtype=torch_dtype, **(from_pretrained_kwargs or {})
        )
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError) or offline():  # a hub or cache miss: say how to work offline
            raise EvalkitInputError(str(name_or_path), missing_from_cache("this model")) from None
        raise EvalkitInputError(str(name_or_path), f"cannot load model ({exc})") from None


def resolve_hook(model: HookedTransformer, hook_name: str) -> str:
    """The hook name itself when the model has it; otherwise bad input listing the closest names."""
    hooks: Registry[str] = Registry("hook")
    for name in model.hook_dict:
        hooks.add(name, name)
    return hooks.get(hook_name, where="--hook")


def hook_layer(hook_name: str) -> int | None:
    """Block index of a `blocks.L.*` hook (None for embedding/final hooks)."""
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def resolve_seq_len(model: HookedTransformer, seq_len: int | None, default: int) -> int:
    """`seq_len` if the model's context (n_ctx) holds it, else bad input; unset: default capped at n_ctx."""
    n_ctx = int(model.cfg.n_ctx)
    if seq_len is None:
        return min(default, n_ctx)
    if seq_len > n_ctx:
        raise EvalkitInputError(
            "--seq-len", f"{seq_len} exceeds the model's context length n_ctx={n_ctx}; pass at most {n_ctx}"
        )
    return int(seq_len)


def model_special_ids(model: HookedTransformer) -> tuple[int, ...]:
    tok = model.tokenizer
    if tok is None:
        return ()
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    return tuple(sorted(i for i in ids if i is not None))


class ModelSource:
    """Activations of `model` at `hook_name` over token batches from `make_token_batches()` (called once per
    pass)."""

    def __init__(
        self,
        model: HookedTransformer,
        hook_name: str,
        make_token_batches: Callable[[], Iterator[torch.Tensor]],
        info: SourceInfo,
        label_fn: Callable[[int, int], torch.Tensor] | None = None,
        label_names: tuple[str, ...] = (),
        dtype: str | torch.dtype = "float32",
    ) -> None:
        self.model = model
        self.dtype = parse_dtype(dtype)
        self.hook_name = resolve_hook(model, hook_name)
        self.layer = hook_layer(self.hook_name)
        self._make_token_batches = make_token_batches
        self.info = info
        self.special_ids = model_special_ids(model)
        self._label_fn = label_fn
        self.label_names = label_names
        self.has_tokens = True
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        """Width of the hook's activations, found with one 2-token forward pass (hooks differ: resid, z,
        mlp)."""
        if self._d_in is None:
            probe = torch.zeros((1, 2), dtype=torch.int64, device=self.model.cfg.device)
            self._d_in = int(self.activations(probe).shape[-1])
        return self._d_in

    def token_batches(self) -> Iterator[torch.Tensor]:
        """The token batches [n_seq, seq_len] of one pass, on the model's device."""
        for tokens in self._make_token_batches():
            yield tokens.to(self.model.cfg.device)

    @torch.no_grad()
    def activations(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """Hook activations [n_seq, seq_len, d] in the source's dtype (`--dtype`), running the model only as
        far as the hook's block."""
        stop = self.layer + 1 if self.layer is not None and self.layer + 1 < self.model.cfg.n_layers else None
        _, cache = self.model.run_with_cache(tokens_BS, names_filter=self.hook_name, stop_at_layer=stop)
        acts = cache[self.hook_name].to(self.dtype)
        # Per-head hooks ([B, S, heads, d_head]) are flattened over heads, as sae-lens does for hook_z SAEs.
        return acts.flatten(2) if acts.ndim == 4 else acts

    def __iter__(self) -> Iterator[ActivationBatch]:
        return self.iter_from(0)

    def rows_before(self, first_batch: int) -> int:
        """Flattened token rows of the token batches before `first_batch` (tokenizing only, no forward pass)."""
        return sum(int(t.numel()) for t, _ in zip(self.token_batches(), range(first_batch), strict=False))

    def iter_from(self, start: int) -> Iterator[ActivationBatch]:
        """The batches from index `start` on; the skipped ones are tokenised but never run through the model."""
        row = 0
        for i, tokens in enumerate(self.token_batches()):
            if i < start:
                row += len(tokens)
                continue
            labels = self._label_fn(row, len(tokens)) if self._label_fn is not None else None
            row += len(tokens)
            yield ActivationBatch(
                acts_BSD=self.activations(tokens),
                positions_BS=positions_like(tokens),
                special_BS=special_mask(tokens, self.special_ids),
                tokens_BS=tokens,
                labels_BSL=None if labels is None else labels.to(tokens.device),
                label_names=self.label_names if labels is not None else (),
            )
