"""`torch.load` of user files with weights_only=True, failing with one plain line.

torch's own messages run to 6–8 lines, may carry ANSI colour codes, and advise retrying with
`weights_only=False` — which would execute whatever the file's pickle says. evalkit never does that, so the
advice is dropped and the message reduced to what is wrong with the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from evalkit.core.errors import EvalkitInputError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BLOCKED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def torch_load_problem(exc: BaseException) -> str:
    """One line saying why a weights-only torch.load failed, without torch's advice to disable the check."""
    text = _ANSI.sub("", str(exc))
    found = _BLOCKED_GLOBAL.search(text) or _GLOBAL.search(text)
    if found:
        return (
            f"unreadable or corrupt torch file: it holds a pickled Python object ({found.group(1)}), which "
            "evalkit never loads; save a plain dict of tensors (or use safetensors)"
        )
    if "Weights only load failed" in text or "Unsupported operand" in text:
        return "unreadable or corrupt torch file (not a plain pickle of tensors)"
    if "zip archive" in text or "central directory" in text:
        return "unreadable or corrupt torch file (truncated, or not a torch file)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    sentences = [s for s in re.split(r"(?<=\.)\s+", first) if "weights_only" not in s]
    return f"unreadable or corrupt torch file ({type(exc).__name__}: {' '.join(sentences)[:200]})"


def load_weights_only(path: Path, **kwargs: Any) -> Any:
    """torch.load(path, weights_only=True, ...) with failures as one-line EvalkitInputErrors naming the file."""
    try:
        return torch.load(str(path), weights_only=True, **kwargs)
    except Exception as exc:  # torch raises several unrelated types for corrupt or unsafe files
        raise EvalkitInputError(path, torch_load_problem(exc)) from None
