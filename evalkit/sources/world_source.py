"""The embedded world as a source: its model at its hook over the held-out eval split, with concept labels."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import torch
from safetensors import safe_open

from evalkit.sources.base import DEFAULT_BATCH_TOKENS, SourceInfo, seqs_per_batch
from evalkit.sources.models import ModelSource, load_model
from evalkit.world.build import SIZES, World, build_world
from evalkit.world.corpus import CONCEPTS, generate_corpus, labels_bool

# Sequences past the stored eval split are generated on demand from seeds no other split uses.
_EXTRA_SEED_BASE = 1_000_003
_EXTRA_CHUNK = 256


def _eval_split(world: World) -> tuple[np.ndarray, np.ndarray]:
    with safe_open(str(world.corpus_path), framework="pt") as fh:
        start, stop = json.loads(fh.metadata()["corpus"])["splits"]["eval"]
        tokens = fh.get_slice("tokens")[start:stop].numpy()
        bits = fh.get_slice("label_bits")[start:stop].numpy()
    return tokens, bits


def _sequence_blocks(world: World) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, label bits) blocks: the stored eval split, then freshly generated blocks, endlessly."""
    yield _eval_split(world)
    k = 0
    while True:
        extra = generate_corpus(_EXTRA_CHUNK, world.seq_len, seed=_EXTRA_SEED_BASE + k)
        yield extra.tokens_NS, extra.label_bits_NS
        k += 1


class _WorldTokens:
    """Shared by the token and label streams of one pass so rows stay aligned."""

    def __init__(self, world: World, n_seq: int, n_seq_batch: int) -> None:
        self.world, self.n_seq, self.n_seq_batch = world, n_seq, n_seq_batch
        self.bits: dict[int, np.ndarray] = {}

    def batches(self) -> Iterator[torch.Tensor]:
        self.bits = {}
        row = 0
        pending_t: list[np.ndarray] = []
        pending_b: list[np.ndarray] = []
        for tokens, bits in _sequence_blocks(self.world):
            pending_t.append(tokens)
            pending_b.append(bits)
            toks, bts = np.concatenate(pending_t), np.concatenate(pending_b)
            while len(toks) >= self.n_seq_batch or (row + len(toks) >= self.n_seq and len(toks)):
                take = min(self.n_seq_batch, self.n_seq - row, len(toks))
                self.bits = {row: bts[:take]}  # only the current batch's labels are kept
                yield torch.from_numpy(toks[:take].astype(np.int64))
                row += take
                toks, bts = toks[take:], bts[take:]
                if row >= self.n_seq:
                    return
            pending_t, pending_b = [toks], [bts]

    def labels(self, row: int, n: int) -> torch.Tensor:
        return torch.from_numpy(labels_bool(self.bits[row][:n]))


def world_source(
    world: World | str | None = None,
    n_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_TOKENS,
    device: str = "cpu",
    dtype: str = "float32",
    cache_dir: str | None = None,
) -> ModelSource:
    """A `ModelSource` over the world's eval text with `labels_BSL`; default n_tokens is the stored eval
    split."""
    if not isinstance(world, World):
        world = build_world(cache_dir=cache_dir, size=world or "default")
    size_name = world.fingerprint.split(":")[1]
    n_seq = SIZES[size_name].n_eval if n_tokens is None else -(-int(n_tokens) // world.seq_len)
    stream = _WorldTokens(world, n_seq, seqs_per_batch(batch_size, world.seq_len))
    info = SourceInfo(
        "embedded-world",
        # float32 (the default) keeps the fingerprint it always had; other dtypes give other activations.
        f"{world.fingerprint}:hook={world.hook_name}:n_seq={n_seq}"
        + ("" if str(dtype).removeprefix("torch.") == "float32" else f":dtype={dtype}"),
        {
            "model": str(world.model_dir),
            "hook": world.hook_name,
            "n_tokens": n_seq * world.seq_len,
            "seq_len": world.seq_len,
            "dtype": str(dtype),
        },
    )
    model = load_model(world.model_dir, device=device, dtype=dtype)
    return ModelSource(
        model,
        world.hook_name,
        stream.batches,
        info,
        label_fn=stream.labels,
        label_names=CONCEPTS,
        dtype=dtype,
    )
