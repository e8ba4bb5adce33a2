"""Precomputed activation files: .safetensors (tensor `activations`, optional `tokens`, `positions`), .npy,
.pt.

Files are read lazily where the format allows it (safetensors slices, numpy memory maps, torch mmap), so a
pass never
holds more than one batch in memory beyond what the OS pages in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.core.safeload import load_weights_only
from evalkit.sources.base import DEFAULT_BATCH_TOKENS, SourceInfo, file_identity, seqs_per_batch, special_mask

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "float16", "bfloat16", "float32", "float64"})
"""Activation dtypes evalkit reads; integer and bool activations are refused with a reason, never cast."""


def dtype_name(array: object) -> str:
    """The element type of a safetensors slice, numpy array or torch tensor, as a short name."""
    get_dtype = getattr(array, "get_dtype", None)
    if callable(get_dtype):
        return str(get_dtype())
    return str(getattr(array, "dtype", "?")).removeprefix("torch.")


class _Rows:
    """Uniform lazy row access [i:j] over the three formats, returning torch tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata: dict[str, str] = {}
        self.extra: dict[str, torch.Tensor] = {}
        opener = {
            ".safetensors": self._open_safetensors,
            ".npy": self._open_npy,
            ".pt": self._open_pt,
            ".pth": self._open_pt,
        }
        if path.suffix not in opener:
            raise EvalkitInputError(path, f"unsupported activation file type; use one of {', '.join(SUFFIXES)}")
        if not path.is_file():
            raise EvalkitInputError(path, "activation file not found")
        try:
            opener[path.suffix]()
        except EvalkitInputError:
            raise
        except Exception as exc:  # each library raises its own types for truncated or foreign files
            raise EvalkitInputError(path, f"cannot read activation file ({type(exc).__name__}: {exc})") from None
        dtype = dtype_name(self._slice)
        if dtype not in FLOAT_DTYPES:
            raise EvalkitInputError(
                path,
                f"activations have dtype {dtype}; evalkit needs floating-point activations (integer/bool "
                "activations are refused, not cast: convert them yourself if that is what they mean)",
            )

    def _open_safetensors(self) -> None:
        handle = safe_open(str(self.path), framework="pt")
        keys = set(handle.keys())
        if "activations" not in keys:
            raise EvalkitInputError(self.path, f"no tensor named 'activations' (found: {', '.join(sorted(keys))})")
        self.metadata = handle.metadata() or {}
        self._slice = handle.get_slice("activations")
        self.shape = tuple(self._slice.get_shape())
        self.extra = {k: handle.get_tensor(k) for k in ("tokens", "positions") if k in keys}
        self._handle = handle  # keep the file open while slices are read

    def _open_npy(self) -> None:
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self._slice = array
        self.shape = tuple(array.shape)

    def _open_pt(self) -> None:
        obj = load_weights_only(self.path, map_location="cpu", mmap=True)
        if isinstance(obj, dict):
            if not isinstance(obj.get("activations"), torch.Tensor):
                raise EvalkitInputError(self.path, f"no tensor named 'activations' (found: {', '.join(map(str, obj))})")
            self.extra = {k: v for k, v in obj.items() if k in ("tokens", "positions") and isinstance(v, torch.Tensor)}
            obj = obj["activations"]
        if not isinstance(obj, torch.Tensor):
            raise EvalkitInputError(
                self.path, f"expected a tensor or a dict with 'activations', got {type(obj).__name__}"
            )
        self._slice = obj
        self.shape = tuple(obj.shape)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        block = self._slice[start:stop]
        return torch.as_tensor(np.array(block)) if isinstance(block, np.ndarray) else block


class ActivationFileSource:
    """Streams a precomputed activation file; flat [n_tokens, d_in] files become sequences of length 1."""

    def __init__(
        self,
        path: str | Path,
        n_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_TOKENS,
        device: str = "cpu",
        special_token_ids: tuple[int, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        self._rows = _Rows(self.path)
        shape = self._rows.shape
        if len(shape) not in (2, 3) or min(shape) == 0:
            raise EvalkitInputError(
                self.path,
                f"activations must be [n_tokens, d_in] or [n_seq, seq_len, d_in], got shape {list(shape)}",
            )
        self.flat = len(shape) == 2
        self.n_seq_total, self.seq_len = (shape[0], 1) if self.flat else (shape[0], shape[1])
        self._d_in = int(shape[-1])
        self.tokens = self._companion("tokens")
        self.positions = self._companion("positions")
        self.special_ids = self._special_ids(special_token_ids)
        max_seq = self.n_seq_total if n_tokens is None else min(self.n_seq_total, -(-int(n_tokens) // self.seq_len))
        self.n_seq = max_seq
        self.n_seq_batch = seqs_per_batch(batch_size, self.seq_len)
        self.device = device
        self.info = SourceInfo(
            "activations-file",
            f"file:{file_identity(self.path)}:{self.n_seq * self.seq_len}",
            {
                "path": str(self.path),
                "shape": json.dumps(list(shape)),
                "n_tokens": self.n_seq * self.seq_len,
                "has_tokens": self.tokens is not None,
            },
        )

    model = None
    hook_name = None
    label_names: tuple[str, ...] = ()

    @property
    def has_tokens(self) -> bool:
        return self.tokens is not None

    @property
    def d_in(self) -> int:
        return self._d_in

    def _companion(self, key: str) -> torch.Tensor | None:
        tensor = self._rows.extra.get(key)
        if tensor is None:
            return None
        tensor = tensor.reshape(-1, 1) if self.flat else tensor
        if tuple(tensor.shape) != (self.n_seq_total, self.seq_len):
            raise EvalkitInputError(
                self.path,
                f"'{key}' has shape {list(tensor.shape)} but the activations need {[self.n_seq_total, self.seq_len]}",
            )
        return tensor.to(torch.int64)

    def _special_ids(self, given: tuple[int, ...] | None) -> tuple[int, ...]:
        """Explicit ids, else ids recorded in the file's metadata, else a shared first token (a BOS) when
        present."""
        if given is not None:
            return tuple(given)
        if "special_token_ids" in self._rows.metadata:
            return tuple(int(i) for i in json.loads(self._rows.metadata["special_token_ids"]))
        if self.tokens is not None and not self.flat and bool((self.tokens[:, 0] == self.tokens[0, 0]).all()):
            return (int(self.tokens[0, 0]),)
        return ()

    def __iter__(self) -> Iterator[ActivationBatch]:
        return self.iter_from(0)

    def rows_before(self, first_batch: int) -> int:
        """Flattened token rows in the batches before `first_batch` (label alignment on resume)."""
        return min(self.n_seq, first_batch * self.n_seq_batch) * self.seq_len

    def iter_from(self, first_batch: int) -> Iterator[ActivationBatch]:
        """The batches from `first_batch` on; earlier rows are not read (a resumed pass)."""
        for start in range(first_batch * self.n_seq_batch, self.n_seq, self.n_seq_batch):
            stop = min(self.n_seq, start + self.n_seq_batch)
            acts = self._rows.rows(start, stop).to(device=self.device, dtype=torch.float32)
            acts = acts.reshape(stop - start, self.seq_len, self._d_in)
            if not torch.isfinite(acts).all():
                raise EvalkitInputError(self.path, f"activations contain NaN or Inf (rows {start}..{stop})")
            tokens = None if self.tokens is None else self.tokens[start:stop].to(self.device)
            if self.positions is not None:
                positions = self.positions[start:stop].to(self.device)
            else:
                positions = torch.arange(self.seq_len, device=self.device).expand(stop - start, -1).contiguous()
            special = (
                special_mask(tokens, self.special_ids)
                if tokens is not None
                else torch.zeros(positions.shape, dtype=torch.bool, device=self.device)
            )
            yield ActivationBatch(acts_BSD=acts, positions_BS=positions, special_BS=special, tokens_BS=tokens)
