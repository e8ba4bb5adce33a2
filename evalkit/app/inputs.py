"""Checks of a run's inputs that need no model or SAE: local paths exist, and offline, registry SAEs are cached.

They run first (evalkit.app.run_cli), so a mistyped path or a missing cache entry is one line in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from evalkit.app.request import RunRequest
from evalkit.core.errors import EvalkitInputError
from evalkit.core.hub import cached_repo, missing_from_cache, offline, saelens_repo

LOCAL_DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".safetensors", ".npy", ".pt")


def _looks_local(name: str) -> bool:
    """A path rather than a Hugging Face name: it exists, has a data-file suffix, or starts like a path."""
    return Path(name).exists() or name.endswith(LOCAL_DATA_SUFFIXES) or name.startswith(("/", "./", "../", "~"))


def check_local_inputs(args: RunRequest) -> None:
    """Every local path the command names exists, checked before any network call or model load."""
    for flag in ("activations", "labels", "dataset", "model"):
        value = getattr(args, flag, None)
        if value and (flag in ("activations", "labels") or _looks_local(value)) and not Path(value).exists():
            raise EvalkitInputError(value, f"no such file or folder (--{flag})")
    for spec in args.sae:
        if not spec.startswith("sae-lens:") and not Path(spec).exists():
            raise EvalkitInputError(spec, "no such file or folder (--sae)")


def check_cached_when_offline(args: RunRequest) -> None:
    """Offline, a sae-lens release whose repository the cache lacks fails now, not after seconds of imports."""
    if not offline():
        return
    for spec in (s for s in args.sae if s.startswith("sae-lens:")):
        repo = saelens_repo(spec.removeprefix("sae-lens:").split("/", 1)[0])
        if repo is not None and not cached_repo(repo):
            raise EvalkitInputError(spec, missing_from_cache(f"this SAE (repository {repo})"))


def hub_names(args: RunRequest) -> list[str]:
    """The names this run may fetch from the Hugging Face hub."""
    names = [s for s in args.sae if s.startswith("sae-lens:")]
    names += [v for v in (getattr(args, "model", None), getattr(args, "dataset", None)) if v and not _looks_local(v)]
    return names
