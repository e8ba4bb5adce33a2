"""`load_saes`: every SAE at a path, in any format evalkit reads, as LoadedSAE objects.

A format is recognised by the files a folder holds (FORMATS below; `format=` overrides detection). A path that
is not itself an SAE folder is searched recursively; `sae-lens:RELEASE/SAE_ID` goes to sae-lens' pretrained
registry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import SAE

from evalkit.core.errors import EvalkitInputError
from evalkit.core.registry import Registry
from evalkit.sae.loaded import LoadedSAE, make_loaded
from evalkit.sae.loaders import dictionary_learning, pretrained, saelens, sparsify

log = logging.getLogger(__name__)

FolderLoader = Callable[[Path, str], tuple[SAE[Any], dict[str, Any]]]


@dataclass(frozen=True)
class SaeFormat:
    """An on-disk format: the files that mark a folder as one SAE, and how to read it."""

    name: str
    markers: tuple[str, ...]
    load_folder: FolderLoader

    def matches(self, folder: Path) -> bool:
        return all((folder / marker).is_file() for marker in self.markers)


FORMATS: Registry[SaeFormat] = Registry("SAE format")
FORMATS.add("sae-lens", SaeFormat("sae-lens", saelens.MARKERS, saelens.load_saelens_folder))
FORMATS.add(
    "dictionary_learning",
    SaeFormat(
        "dictionary_learning",
        dictionary_learning.MARKERS,
        dictionary_learning.load_dictionary_learning_folder,
    ),
)
FORMATS.add("sparsify", SaeFormat("sparsify", sparsify.MARKERS, sparsify.load_sparsify_folder))


def formats_matching(folder: Path, candidates: list[SaeFormat]) -> list[SaeFormat]:
    return [fmt for fmt in candidates if fmt.matches(folder)]


def describe_markers(candidates: list[SaeFormat]) -> str:
    return "; ".join(f"{' + '.join(fmt.markers)} ({fmt.name})" for fmt in candidates)


def incomplete_problem(folder: Path, candidates: list[SaeFormat]) -> str | None:
    """Which files a half-present format lacks in this folder (a config without weights, weights alone)."""
    partial = [fmt for fmt in candidates if any((folder / m).is_file() for m in fmt.markers)]
    if not partial:
        return None
    lacks = [f"{', '.join(m for m in fmt.markers if not (folder / m).is_file())} ({fmt.name})" for fmt in partial]
    return f"missing {' or '.join(lacks)}"


def find_sae_folders(root: Path, candidates: list[SaeFormat]) -> list[tuple[Path, SaeFormat]]:
    """Every folder under root (root included) that is exactly one SAE; an ambiguous folder is an error."""
    found: list[tuple[Path, SaeFormat]] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        matched = formats_matching(folder, candidates)
        if len(matched) > 1:
            names = ", ".join(fmt.name for fmt in matched)
            raise EvalkitInputError(folder, f"holds files of several formats ({names}); pass format= to choose")
        if matched:
            found.append((folder, matched[0]))
    return found


def sae_id_for(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return root.name if rel == "." else rel


def load_saes(
    path: str | Path,
    format: str | None = None,
    device: str = "cpu",
    failures: list[EvalkitInputError] | None = None,
) -> list[LoadedSAE]:
    """All SAEs at `path` (an SAE folder, a file inside one, a folder of many, or sae-lens:RELEASE/SAE_ID).

    `failures`: when given, an SAE folder that fails to load is appended there and the others still load
    (a folder of many with one bad SAE); otherwise the first failure is raised."""
    if isinstance(path, str) and path.startswith(pretrained.PREFIX):
        sae, cfg = pretrained.load_pretrained(path, device)
        return [make_loaded(sae, cfg, path[len(pretrained.PREFIX) :], path, "sae-lens-pretrained")]
    root = Path(path)
    if not root.exists():
        raise EvalkitInputError(root, "no such file or folder")
    if root.is_file():
        root = root.parent
    candidates = [FORMATS.get(format, where="format")] if format else [FORMATS.get(name) for name in FORMATS]
    found = find_sae_folders(root, candidates)
    if not found:
        # Only now diagnose half-present files: a sparsify run folder holds a config.json that is not an SAE.
        problem = incomplete_problem(root, candidates)
        looked_for = f"looked for {describe_markers(candidates)}"
        raise EvalkitInputError(root, problem or f"no SAE found here or below ({looked_for})")
    loaded = []
    for folder, fmt in found:
        try:
            sae, cfg = fmt.load_folder(folder, device)
        except EvalkitInputError as exc:
            if failures is None:
                raise
            failures.append(exc)
            continue
        loaded.append(make_loaded(sae, cfg, sae_id_for(folder, root), str(folder), fmt.name))
        log.debug("loaded %s (%s) from %s", loaded[-1].sae_id, fmt.name, folder)
    return loaded
