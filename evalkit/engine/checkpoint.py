"""Checkpoints inside the evaluation pass: every accumulator's state saved every N batches or T seconds, so a
kill loses at most one interval and a rerun continues from the last checkpoint with identical results.

A checkpoint holds, for one pass (one hook's data × the pending accumulators and observers), the number of
batches consumed, the token filter's budget, what the pass measured about the data (PassStats), each pending
accumulator's `state_dict()` (the stream-accumulator state protocol, metrics.base) and each observer's. It is
keyed by a hash of everything that decides the pass (data, settings, the pending result keys, the observed
SAEs), so a checkpoint of another pass is never resumed. The file is a sha256 line followed by a
`torch.save` payload (loaded with weights_only=True), written atomically and fsynced; a damaged one is warned
about by name and the pass starts from the beginning. It is deleted once the pass's results are stored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalkit.core.faults import fault_point
from evalkit.core.io import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 300.0
"""Without --checkpoint-every, a checkpoint falls about every 5 minutes of wall time."""


@dataclass
class PassResume:
    """What a checkpoint restores: the next batch to read and the states to load."""

    next_batch: int
    n_seq_seen: int
    remaining: int | None
    stats: dict[str, Any]
    accumulators: dict[str, dict[str, Any]]
    """Per "<sae content hash>/<entry>": the accumulator's state_dict."""
    observers: list[dict[str, Any]]


class PassCheckpointer:
    """Decides when to save, saves atomically, loads and validates; one per pass."""

    def __init__(self, path: Path, every_batches: int | None, every_s: float = DEFAULT_INTERVAL_S) -> None:
        self.path = path
        self.every_batches = every_batches
        self.every_s = every_s
        self._last = time.monotonic()
        self.n_saved = 0
        self.save_s = 0.0

    def due(self, batches_done: int) -> bool:
        if self.every_batches is not None:
            return batches_done % self.every_batches == 0
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: PassResume) -> None:
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save(
            {
                "next_batch": state.next_batch,
                "n_seq_seen": state.n_seq_seen,
                "remaining": -1 if state.remaining is None else state.remaining,
                "stats": state.stats,
                "accumulators": state.accumulators,
                "observers": state.observers,
            },
            buf,
        )
        payload = buf.getvalue()
        digest = hashlib.sha256(payload).hexdigest().encode()
        atomic_write_bytes(self.path, digest + b"\n" + payload, before_rename=lambda: fault_point("checkpoint"))
        self._last = time.monotonic()
        self.n_saved += 1
        self.save_s += time.perf_counter() - t0

    def load(self) -> PassResume | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        digest, _, payload = raw.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            log.warning("damaged checkpoint %s (checksum mismatch, %d bytes): restarting the pass", self.path, len(raw))
            return None
        try:
            data = torch.load(io.BytesIO(payload), weights_only=True)
            remaining = int(data["remaining"])
            return PassResume(
                int(data["next_batch"]),
                int(data["n_seq_seen"]),
                None if remaining < 0 else remaining,
                dict(data["stats"]),
                dict(data["accumulators"]),
                list(data["observers"]),
            )
        except Exception as exc:  # a checksummed file that does not parse was written by another version
            log.warning("unusable checkpoint %s (%s): restarting the pass", self.path, type(exc).__name__)
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def checkpointable(objects: Sequence[object]) -> bool:
    """Every accumulator/observer implements the state protocol (state_dict / load_state_dict)."""
    return all(
        callable(getattr(o, "state_dict", None)) and callable(getattr(o, "load_state_dict", None)) for o in objects
    )


def load_states(targets: Mapping[str, Any], states: Mapping[str, Mapping[str, Any]]) -> bool:
    """Load each state into its target; False (nothing loaded) unless the checkpoint has every target's state
    (it may have more: results stored after the pass, before the kill, are no longer pending)."""
    if not set(targets) <= set(states):
        return False
    for key, target in targets.items():
        target.load_state_dict(dict(states[key]))
    return True
