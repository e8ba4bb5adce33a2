"""Fault injection for the resume tests: a real SIGKILL at a chosen point of a run.

`EVALKIT_TEST_KILL_AT="STAGE:N"` kills the process the N-th time `fault_point(STAGE)` is reached. Stages:
`pass` (after a batch), `checkpoint` (a checkpoint written to its temporary file, not yet renamed), `finish`
(after a result shard is saved), `llm` (after an LLM reply is cached), `report` (after an output file is
written). Unset (every normal run), `fault_point` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "EVALKIT_TEST_KILL_AT"
PAUSE_ENV = "EVALKIT_TEST_PAUSE_AT"
"""`STAGE:N:SECONDS`: sleep that long the N-th time STAGE is reached (the concurrent-runs test keeps a run busy)."""
_counts: dict[str, int] = {}


def fault_point(stage: str) -> None:
    pause = os.environ.get(PAUSE_ENV)
    if pause and pause.split(":")[0] == stage:
        name, n, seconds = pause.split(":")
        _counts[f"pause:{stage}"] = _counts.get(f"pause:{stage}", 0) + 1
        if _counts[f"pause:{stage}"] == int(n):
            time.sleep(float(seconds))
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != stage:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
