"""`--labels FILE`: token-level concept labels aligned row by row with the flattened activations."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.sources.base import ActivationSource, SourceInfo, file_identity

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class LabelFile:
    """Lazy row access to `labels` [n_tokens, n_labels] and the `label_names` metadata."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EvalkitInputError(self.path, "labels file not found")
        try:
            self._handle = safe_open(str(self.path), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for foreign files
            raise EvalkitInputError(self.path, f"not a readable safetensors file ({exc})") from None
        if "labels" not in set(self._handle.keys()):
            raise EvalkitInputError(self.path, "no tensor named 'labels'")
        self._slice = self._handle.get_slice("labels")
        shape = self._slice.get_shape()
        if len(shape) != 2:
            raise EvalkitInputError(self.path, f"'labels' must be [n_tokens, n_labels], got shape {list(shape)}")
        self.n_rows, self.n_labels = int(shape[0]), int(shape[1])
        self.names = self._names()
        self._check_values()

    def _check_values(self, chunk_rows: int = 1 << 16) -> None:
        """Every value is 0 or 1 (bool, integer or float storage); anything else is refused, not cast."""
        for start in range(0, self.n_rows, chunk_rows):
            block = self._slice[start : start + chunk_rows]
            bad = ~((block == 0) | (block == 1))
            if bool(bad.any()):
                row, col = (int(i) for i in bad.nonzero()[0])
                raise EvalkitInputError(
                    self.path,
                    f"'labels' must hold only 0/1, found {block[row, col].item()!r} at row {start + row}, "
                    f"label {self.names[col]!r}",
                )

    def check_rows(self, n_rows: int, what: str, exact: bool) -> None:
        """The label rows match the activations' flattened rows: exactly for a file (extra rows mean a
        misaligned file); at least as many for a model source read up to a token budget (warned if more)."""
        if self.n_rows < n_rows or (exact and self.n_rows != n_rows):
            raise EvalkitInputError(
                self.path, f"has {self.n_rows} label rows but {what} has {n_rows} token rows; they must be equal"
            )
        if self.n_rows > n_rows:
            log.warning(
                "%s: %d label rows beyond the %d token rows read are not used", self.path, self.n_rows - n_rows, n_rows
            )

    def _names(self) -> tuple[str, ...]:
        raw = (self._handle.metadata() or {}).get("label_names")
        if raw is None:
            raise EvalkitInputError(self.path, "metadata key 'label_names' (a JSON list of names) is missing")
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            raise EvalkitInputError(self.path, "metadata 'label_names' is not valid JSON") from None
        if not isinstance(names, list) or len(names) != self.n_labels or not all(isinstance(n, str) for n in names):
            raise EvalkitInputError(self.path, f"'label_names' must be a JSON list of {self.n_labels} strings")
        return tuple(names)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if stop > self.n_rows:
            raise EvalkitInputError(self.path, f"has {self.n_rows} label rows but the activations need at least {stop}")
        return self._slice[start:stop].to(torch.bool)


def activation_rows(source: ActivationSource) -> tuple[int, str, bool]:
    """How many flattened token rows the source has (a file: all its rows; a model source: the rows of the
    token batches it will run), a name for it, and whether the label rows must match exactly."""
    n_seq_total, seq_len = getattr(source, "n_seq_total", None), getattr(source, "seq_len", None)
    if isinstance(n_seq_total, int) and isinstance(seq_len, int):
        return n_seq_total * seq_len, str(getattr(source, "path", "the activation file")), True
    token_batches = getattr(source, "token_batches", None)
    if callable(token_batches):  # tokenizing only: no model forward pass
        return sum(int(t.numel()) for t in token_batches()), "the model source's token stream", False
    raise EvalkitInputError("--labels", f"cannot count the token rows of the {source.info.name} source")


class LabelledSource:
    """Wraps any source, attaching labels row by row to its flattened tokens."""

    def __init__(self, source: ActivationSource, labels: LabelFile) -> None:
        self.source = source
        self.labels = labels
        self.info = SourceInfo(
            source.info.name,
            # The content hash, not the name: a relabelled file must not be served from the result cache.
            f"{source.info.fingerprint}+labels:{file_identity(labels.path)}",
            {**source.info.details, "labels": str(labels.path)},
        )
        labels.check_rows(*activation_rows(source))

    @property
    def d_in(self) -> int:
        return self.source.d_in

    @property
    def model(self) -> HookedTransformer | None:
        return self.source.model

    @property
    def hook_name(self) -> str | None:
        return self.source.hook_name

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def has_tokens(self) -> bool:
        return self.source.has_tokens

    def __iter__(self) -> Iterator[ActivationBatch]:
        return self.iter_from(0)

    def rows_before(self, first_batch: int) -> int:
        return int(self.source.rows_before(first_batch))  # type: ignore[attr-defined]

    def iter_from(self, first_batch: int) -> Iterator[ActivationBatch]:
        """Labelled batches from `first_batch` on (a resumed pass); the wrapped source must offer the same."""
        row = self.rows_before(first_batch) if first_batch else 0
        batches = self.source.iter_from(first_batch) if first_batch else iter(self.source)  # type: ignore[attr-defined]
        for batch in batches:
            n_seq, seq_len = batch.acts_BSD.shape[:2]
            block = self.labels.rows(row, row + n_seq * seq_len).reshape(n_seq, seq_len, self.labels.n_labels)
            row += n_seq * seq_len
            yield ActivationBatch(
                acts_BSD=batch.acts_BSD,
                positions_BS=batch.positions_BS,
                special_BS=batch.special_BS,
                tokens_BS=batch.tokens_BS,
                labels_BSL=block.to(batch.acts_BSD.device),
                label_names=self.labels.names,
            )
