"""`--labels FILE`: token-level concept labels aligned row by row with the flattened activations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.sources.base import ActivationSource, SourceInfo, file_identity


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

    @property
    def d_in(self) -> int:
        return self.source.d_in

    def __getattr__(self, name: str) -> object:
        # model, hook_name, layer, token_batches... of a wrapped ModelSource stay reachable.
        if name == "source":  # not set yet (e.g. during copying): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self) -> Iterator[ActivationBatch]:
        row = 0
        for batch in self.source:
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
