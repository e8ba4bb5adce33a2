"""Text datasets (local .txt/.jsonl/.parquet or a Hugging Face dataset name) streamed into fixed-length token
rows."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from evalkit.core.errors import EvalkitInputError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_FIELDS = ("text", "content", "document", "sentence")


def _text_of(record: object, where: str, column: str | None = None) -> str:
    """The record's text: `column` when named (`--text-column`), else the first of TEXT_FIELDS it has."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if column is not None:
            value = record.get(column)
            if not isinstance(value, str):
                found = "missing" if column not in record else f"a {type(value).__name__}, not text"
                raise EvalkitInputError(where, f"text column {column!r} is {found} (--text-column)")
            return value
        for key in TEXT_FIELDS:
            if isinstance(record.get(key), str):
                return record[key]
    raise EvalkitInputError(
        where, f"record has no text field (looked for {', '.join(TEXT_FIELDS)}; name one with --text-column)"
    )


def _iter_txt(path: Path, column: str | None) -> Iterator[str]:
    if column is not None:
        raise EvalkitInputError(
            path, "--text-column applies to .jsonl/.parquet/Hugging Face data; .txt is one document a line"
        )
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\n")


def _iter_jsonl(path: Path, column: str | None) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalkitInputError(path, f"line {i} is not JSON ({exc.msg})") from None
            yield _text_of(record, f"{path}:{i}", column)


def _iter_parquet(path: Path, column: str | None) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise EvalkitInputError(path, f"not a readable parquet file ({exc})") from None
    names = file.schema_arrow.names
    if column is not None and column not in names:
        raise EvalkitInputError(path, f"no column {column!r} (--text-column); columns: {', '.join(names)}")
    column = column or next((c for c in TEXT_FIELDS if c in names), None)
    if column is None:
        raise EvalkitInputError(
            path, f"no text column (looked for {', '.join(TEXT_FIELDS)}; name one with --text-column)"
        )
    for batch in file.iter_batches(columns=[column], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t)


def _iter_hf(name: str, split: str, column: str | None) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # network, missing dataset, bad split: all bad input from the user's side
        raise EvalkitInputError(name, f"cannot open Hugging Face dataset ({type(exc).__name__}: {exc})") from None
    for i, record in enumerate(ds):
        yield _text_of(record, f"{name}[{i}]", column)


def iter_texts(dataset: str | Path, split: str = "train", text_column: str | None = None) -> Iterator[str]:
    """Documents of a local file (by suffix) or, for anything that is not a local path, a Hugging Face
    dataset (streamed). `text_column` names the field of .jsonl/.parquet/HF records (default: the first of
    TEXT_FIELDS present); .txt files are one document per non-empty line. docs/data-sources.md has the shapes."""
    path = Path(dataset)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise EvalkitInputError(path, "dataset file not found")
        readers = {".txt": _iter_txt, ".jsonl": _iter_jsonl, ".parquet": _iter_parquet}
        if path.suffix not in readers:
            raise EvalkitInputError(path, f"unsupported dataset format; use one of {', '.join(LOCAL_SUFFIXES)}")
        try:
            yield from readers[path.suffix](path, text_column)
        except UnicodeDecodeError:
            raise EvalkitInputError(path, "not UTF-8 text") from None
        return
    yield from _iter_hf(str(dataset), split, text_column)


def token_rows(
    texts: Iterator[str],
    tokenizer: object,
    seq_len: int,
    bos_id: int | None,
    where: str,
) -> Iterator[list[int]]:
    """Concatenate documents' tokens and cut rows of `seq_len`: BOS + (seq_len - 1) tokens (seq_len without a
    BOS)."""
    body = seq_len - 1 if bos_id is not None else seq_len
    buffer: list[int] = []
    n_rows = 0
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
        while len(buffer) >= body:
            row, buffer = buffer[:body], buffer[body:]
            n_rows += 1
            yield ([bos_id] if bos_id is not None else []) + row
    if n_rows == 0:
        raise EvalkitInputError(where, f"dataset is empty or shorter than one sequence of {seq_len} tokens")


def token_batches(rows: Iterator[list[int]], n_seq_batch: int, max_seqs: int | None) -> Iterator[torch.Tensor]:
    """Group rows into [n_seq_batch, seq_len] int64 tensors, stopping after `max_seqs` rows."""
    batch: list[list[int]] = []
    taken = 0
    for row in rows:
        if max_seqs is not None and taken >= max_seqs:
            break
        batch.append(row)
        taken += 1
        if len(batch) == n_seq_batch:
            yield torch.tensor(batch, dtype=torch.int64)
            batch = []
    if batch:
        yield torch.tensor(batch, dtype=torch.int64)
