"""`sae-lens:RELEASE/SAE_ID`: an SAE from sae-lens' pretrained registry, via `SAE.from_pretrained`.

It needs the network or a filled Hugging Face cache; a miss (offline, no cache) becomes an EvalkitInputError
that says so instead of a hub traceback.
"""

from __future__ import annotations

import difflib
from typing import Any

from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.saes.sae import SAE

from evalkit.core.errors import EvalkitInputError
from evalkit.core.hub import missing_from_cache
from evalkit.sae.build import check_finite

PREFIX = "sae-lens:"


def split_spec(spec: str) -> tuple[str, str]:
    """RELEASE/SAE_ID; releases and ids may both contain '/', so prefer the longest known release."""
    body = spec[len(PREFIX) :]
    releases = get_pretrained_saes_directory()
    parts = body.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        release = "/".join(parts[:cut])
        if release in releases:
            return release, "/".join(parts[cut:])
    if len(parts) < 2 or not parts[0]:
        raise EvalkitInputError(spec, "expected sae-lens:RELEASE/SAE_ID")
    close = difflib.get_close_matches(parts[0], list(releases), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EvalkitInputError(spec, f"unknown sae-lens release {parts[0]!r}{hint}")


def load_pretrained(spec: str, device: str) -> tuple[SAE[Any], dict[str, Any]]:
    release, sae_id = split_spec(spec)
    known_ids = list(get_pretrained_saes_directory()[release].saes_map)
    if sae_id not in known_ids:
        close = difflib.get_close_matches(sae_id, known_ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EvalkitInputError(spec, f"unknown SAE id {sae_id!r} in release {release!r}{hint}")
    try:
        sae, cfg_dict, _ = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device=device)
    except (
        OSError,
        ValueError,
    ):  # hub errors (offline, cache miss, HTTP) are OSError/ValueError subclasses
        raise EvalkitInputError(spec, missing_from_cache("this SAE")) from None
    check_finite(dict(sae.state_dict()), spec)
    return sae, {**cfg_dict, "release": release, "sae_id": sae_id}
