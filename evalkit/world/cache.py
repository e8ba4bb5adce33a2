"""The evalkit cache: a folder per artefact, keyed by a hash of its build config, written atomically, verified
on read.

An entry is complete only when its `manifest.json` exists and every file it lists has the recorded size and
sha256. A
missing or mismatching file means a crash or tampering: the entry is removed with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from evalkit.core.identity import stable_hash

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """`cache_dir` if given, else $EVALKIT_CACHE, else the user cache folder (~/.cache/evalkit or
    $XDG_CACHE_HOME)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("EVALKIT_CACHE"):
        return Path(os.environ["EVALKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "evalkit"


def config_hash(config: Mapping[str, object]) -> str:
    """Stable short hash of a JSON-able build config (spaced JSON: the hash every existing cache entry is keyed by)."""
    return stable_hash(config, 16, compact=False)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(folder: Path) -> dict[str, dict[str, object]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}


def entry_is_valid(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    for rel, info in recorded.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != info["size"] or file_sha256(path) != info["sha256"]:
            return False
    return True


def cached_entry(root: Path, kind: str, config: Mapping[str, object], build: Callable[[Path], None]) -> Path:
    """Return the valid cache folder for (kind, config), building it with `build(tmp_folder)` when absent or
    corrupt.

    `build` writes into a fresh temporary folder; it is renamed into place only after the manifest is written,
    so a
    crash never leaves a half-written entry that looks complete.
    """
    final = root / kind / config_hash(config)
    if final.exists():
        if entry_is_valid(final):
            return final
        log.warning("cache entry %s is incomplete or corrupt; rebuilding it", final)
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "build_config.json").write_text(json.dumps(config, sort_keys=True, indent=1, default=str))
        (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "files": _listing(tmp)}, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same entry first; keep theirs
            if not entry_is_valid(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
