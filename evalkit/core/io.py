"""The one atomic writer, the one file stem for an SAE id, and evalkit's version string."""

from __future__ import annotations

import os
import re
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # mkstemp creates 0600 files; outputs should read like any other file


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evalkit_version() -> str:
    try:
        return version("evalkit")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def file_stem(sae_id: str) -> str:
    """The file name evalkit uses for a per-SAE artefact: characters outside [A-Za-z0-9._-] become `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", sae_id)
