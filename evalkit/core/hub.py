"""Hugging Face hub access without the wait: when the hub cannot be reached, say so at once.

Without network, huggingface_hub retries every request for about half a minute, printing a warning each time,
before it falls back to its cache. `prepare_hub` probes the hub once (a TCP connection, 2 s at most) before
anything asks it for a file; when it is unreachable it switches this process to offline mode (HF_HUB_OFFLINE=1),
so names are answered from the cache straight away, and a name the cache lacks fails with one line
(`OFFLINE_HINT`) instead of retry chatter.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from functools import lru_cache
from urllib.parse import urlparse

log = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
OFFLINE_HINT = (
    "to work offline, fill the Hugging Face cache once on a machine with network (run the same command there, or "
    "`huggingface-cli download NAME`; copy HF_HOME across) and run with HF_HUB_OFFLINE=1"
)
PROBE_TIMEOUT_S = 2.0


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connection to the hub's host (HF_ENDPOINT, default huggingface.co), at most PROBE_TIMEOUT_S."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def prepare_hub(names: list[str]) -> None:
    """Before loading `names` (Hugging Face models, datasets or sae-lens releases): offline mode when the hub is
    unreachable. Nothing to do when no name needs the hub or offline mode is already on."""
    if not names or offline() or hub_reachable():
        return
    log.debug("the Hugging Face hub is unreachable: using its local cache only (for %s)", ", ".join(names))
    for var in OFFLINE_VARIABLES:
        os.environ[var] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported already: its flag was read from the environment at import
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def missing_from_cache(what: str) -> str:
    """The one line for a name neither the hub nor the cache could provide."""
    where = "the hub is unreachable" if offline() else "it could not be fetched"
    return f"{what} is not in the local Hugging Face cache and {where}; {OFFLINE_HINT}"


def _hub_cache() -> str:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")


def cached_repo(repo_id: str, kind: str = "models") -> bool:
    """Whether the Hugging Face cache holds anything of this repository."""
    return os.path.isdir(os.path.join(_hub_cache(), f"{kind}--{repo_id.replace('/', '--')}"))


def saelens_repo(release: str) -> str | None:
    """The Hugging Face repository of a sae-lens release, read from sae-lens' registry file without importing
    sae-lens (seconds of imports, which the offline answer must not wait for); None when unknown."""
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "pretrained_saes.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            inside = False
            for line in fh:
                if not line.startswith(" "):
                    inside = line.rstrip().rstrip(":") == release
                elif inside and line.strip().startswith("repo_id:"):
                    return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        return None
    return None
