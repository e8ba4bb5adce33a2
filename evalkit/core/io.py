"""Durable files and per-SAE file names: atomic writes that survive a power cut, checksummed JSON records, the
sweep of leftovers, the one collision-free file stem for an SAE id, and evalkit's version string.

- `atomic_write_bytes`: a temporary file in the same folder, fsynced, renamed over the target, then the folder
  fsynced, so after a crash the target is either the old or the new content, never half of one, and the rename
  itself is on disk.
- `dump_checked` / `load_checked`: JSON records carrying a sha256 of their own content. A record that fails
  to parse or whose checksum does not match is *damaged*: `load_checked` returns None and logs a warning naming
  the file, and the caller recomputes it.
- `sweep_temp_files`: temporaries a killed run left behind (`*.tmp`), removed at the start of the next
  run (under the output folder's lock, so no live writer owns them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKSUM_KEY = "sha256"
TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # mkstemp creates 0600 files; outputs should read like any other file


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the file itself is synced
        pass
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> tuple[int, str]:
    """An open temporary next to `path`, named so `sweep_temp_files` recognises it."""
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)


def atomic_write_bytes(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """`before_rename`: called with the data on disk under the temporary name (the fault-injection tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_path_for(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (pyarrow, pandas); on success the file is
    fsynced and renamed over `path` as `atomic_write_bytes` does, on failure removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_path_for(path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a fsynced temporary file in the same folder and os.replace: readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _digest(record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def dump_checked(path: Path, record: dict[str, Any]) -> None:
    """Write `record` (a JSON object) atomically with a checksum of its content under CHECKSUM_KEY."""
    payload = {**record, CHECKSUM_KEY: _digest(record)}
    atomic_write_text(path, json.dumps(payload, separators=(",", ":")))


def load_checked(path: Path, what: str = "result") -> dict[str, Any] | None:
    """The record written by `dump_checked`, or None when the file is absent or damaged (warned, by name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    problem = None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data, problem = None, "not valid JSON"
    if problem is None:
        if not isinstance(data, dict) or not isinstance(data.get(CHECKSUM_KEY), str):
            problem = "no checksum"
        else:
            expected = data.pop(CHECKSUM_KEY)
            if _digest(data) != expected:
                problem = "checksum mismatch"
    if problem is not None:
        log.warning("damaged %s file %s (%s, %d bytes): recomputing it", what, path, problem, len(raw))
        return None
    return data


def sweep_temp_files(root: Path) -> list[Path]:
    """Remove the temporaries (`*.tmp`) under `root` that an interrupted run left; returns them."""
    if not root.is_dir():
        return []
    swept = []
    # Every writer in an output folder goes through a temporary ending in .tmp (atomic_write_*, the report's
    # and Parquet writers); none of them survives a finished write, so any left is an orphan.
    for path in root.rglob(f"*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            swept.append(path)
    if swept:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(swept), root)
    return swept


def evalkit_version() -> str:
    try:
        return version("evalkit")
    except PackageNotFoundError:
        return "0.0.0+unknown"


STEM_HASH_LEN = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASH_SUFFIX = re.compile(rf"-[0-9a-f]{{{STEM_HASH_LEN}}}$")
MAX_READABLE = 80
"""Readable part of a stem at most this long (file names stay far below the usual 255-byte limit)."""


def file_stem(sae_id: str) -> str:
    """The file name of a per-SAE artefact (saebench/, afa/, examples/, ...): collision-free across SAE ids.

    An id made only of [A-Za-z0-9._-], lower case, short, not starting with '.' and not itself ending like a
    hash suffix is its own stem. Any other id gets a readable stem (unsafe characters -> `_`) plus `-` and the
    first 8 hex digits of sha256(id): `a b` -> `a_b-<hash>`, `a_b` -> `a_b`, `模型` and `字典` -> two stems. Upper
    case is hashed too, so `A` and `a` stay apart on case-insensitive file systems. Every writer and reader of
    a per-SAE file uses this one function.
    """
    readable = _UNSAFE.sub("_", sae_id)[:MAX_READABLE].lstrip(".") or "_"
    plain = (
        readable == sae_id
        and sae_id == sae_id.lower()
        and not _HASH_SUFFIX.search(sae_id)
        and sae_id not in (".", "..")
    )
    if plain:
        return sae_id
    digest = hashlib.sha256(sae_id.encode("utf-8")).hexdigest()[:STEM_HASH_LEN]
    return f"{readable}-{digest}"
