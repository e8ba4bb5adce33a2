"""`open_source`: CLI-level options in, one activation source out (file > model+hook+dataset > embedded
world)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evalkit.core.errors import EvalkitInputError
from evalkit.sources.base import (
    DEFAULT_BATCH_TOKENS,
    ActivationSource,
    SourceInfo,
    file_identity,
    fingerprint_of,
)
from evalkit.sources.files import ActivationFileSource
from evalkit.sources.labels import LabelFile, LabelledSource
from evalkit.sources.models import ModelSource, load_model, resolve_seq_len
from evalkit.sources.text import iter_texts, token_batches, token_rows
from evalkit.sources.world_source import world_source
from evalkit.world.build import World

log = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 128


def model_dataset_source(
    model_name: str,
    hook_name: str,
    dataset: str,
    n_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_TOKENS,
    seq_len: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    split: str = "train",
    text_column: str | None = None,
    prepend_bos: bool = True,
    from_pretrained_kwargs: dict[str, Any] | None = None,
    default_seq_len: int | None = None,
) -> ModelSource:
    """A transformer-lens model at `hook_name` over `dataset` text, cut into BOS + (seq_len - 1) token
    rows (seq_len tokens without BOS when `prepend_bos` is False). Unset `seq_len`: DEFAULT_SEQ_LEN clamped to
    the model's n_ctx; a larger explicit one is bad input. Activations come in `dtype` (the model also runs in
    it)."""
    model = load_model(model_name, device=device, dtype=dtype, from_pretrained_kwargs=from_pretrained_kwargs)
    seq_len = resolve_seq_len(model, seq_len, default_seq_len or DEFAULT_SEQ_LEN)
    if model.tokenizer is None:
        raise EvalkitInputError(model_name, "model has no tokenizer, so text datasets cannot be tokenized")
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id if prepend_bos else None
    max_seqs = None if n_tokens is None else -(-int(n_tokens) // seq_len)
    n_seq_batch = max(1, int(batch_size) // seq_len)
    dataset_path = Path(dataset)
    data_id = file_identity(dataset_path) if dataset_path.is_file() else f"hf:{dataset}:{split}"
    model_id = file_identity(Path(model_name) / "model.safetensors") if Path(model_name).is_dir() else model_name
    info = SourceInfo(
        "model",
        "model:"
        + fingerprint_of(
            {
                "model": model_id,
                "hook": hook_name,
                "data": data_id,
                "seq_len": seq_len,
                "n_tokens": n_tokens,
                "dtype": dtype,
                "text_column": text_column,
                "prepend_bos": prepend_bos,
                "from_pretrained_kwargs": from_pretrained_kwargs or {},
            }
        ),
        {
            "model": str(model_name),
            "hook": hook_name,
            "dataset": str(dataset),
            "seq_len": seq_len,
            "n_tokens": n_tokens,
            "seed": seed,
            "prepend_bos": bos is not None,
            "text_column": text_column,
        },
    )

    def make() -> object:
        rows = token_rows(iter_texts(dataset, split, text_column), tokenizer, seq_len, bos, str(dataset))
        return token_batches(rows, n_seq_batch, max_seqs)

    return ModelSource(model, hook_name, make, info, dtype=dtype)  # type: ignore[arg-type]


def open_source(
    *,
    activations: str | Path | None = None,
    model: str | None = None,
    hook: str | None = None,
    dataset: str | None = None,
    world: World | str | None = None,
    labels: str | Path | None = None,
    n_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_TOKENS,
    seq_len: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    text_column: str | None = None,
    prepend_bos: bool = True,
    from_pretrained_kwargs: dict[str, Any] | None = None,
    default_seq_len: int | None = None,
) -> ActivationSource:
    """The source the CLI options name, in the contract's order; `source.info.as_dict()` goes into run.json.

    `batch_size` counts tokens per batch (rounded down to whole sequences, at least one). A returned
    `ModelSource`
    (or a labelled wrapper of one) also gives the runner `.model`, `.hook_name`, `.layer` and
    `.token_batches()`.
    """
    source: ActivationSource
    if activations is not None:
        source = ActivationFileSource(activations, n_tokens=n_tokens, batch_size=batch_size, device=device)
    elif model is not None or hook is not None or dataset is not None:
        missing = [flag for flag, value in (("--model", model), ("--hook", hook), ("--dataset", dataset)) if not value]
        if missing:
            raise EvalkitInputError(
                missing[0],
                f"a model source needs --model, --hook and --dataset; missing {', '.join(missing)}",
            )
        source = model_dataset_source(
            str(model),
            str(hook),
            str(dataset),
            n_tokens,
            batch_size,
            seq_len,
            device,
            dtype,
            seed,
            text_column=text_column,
            prepend_bos=prepend_bos,
            from_pretrained_kwargs=from_pretrained_kwargs,
            default_seq_len=default_seq_len,
        )
    else:
        source = world_source(world, n_tokens=n_tokens, batch_size=batch_size, device=device, dtype=dtype)
    if labels is not None:
        source = LabelledSource(source, LabelFile(labels))
    log.info("activation source: %s (%s)", source.info.name, source.info.fingerprint)
    return source
