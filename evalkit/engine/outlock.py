"""One run at a time per output folder: an advisory lock on `<out>/.evalkit-lock` holding the holder's pid.

The lock is an `fcntl.flock` on the file, so the kernel releases it when the holder dies however it dies
(SIGKILL included): a lock file left by a dead process is simply taken over, with a log line naming the old
pid. A second run either waits (`--wait`) or stops with exit 2 naming the live holder's pid.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from evalkit.core.errors import EvalkitInputError

log = logging.getLogger(__name__)

LOCK_NAME = ".evalkit-lock"
WAIT_LOG_EVERY_S = 30.0


class OutputLock:
    """`with OutputLock(out_dir, wait=False):` — held for the whole run (or report)."""

    def __init__(self, out_dir: Path, wait: bool = False, poll_s: float = 0.2) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.wait = wait
        self.poll_s = poll_s
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "pid unknown"
        pid, host = info.get("pid"), info.get("host")
        return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        next_log = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait:
                    os.close(fd)
                    raise EvalkitInputError(
                        self.path.parent,
                        f"output folder is in use by another evalkit run ({self._holder()}); "
                        "pass --wait to wait for it, or choose another --out",
                    ) from None
                if time.monotonic() >= next_log:
                    log.info("waiting for the evalkit run holding %s (%s)", self.path.parent, self._holder())
                    next_log = time.monotonic() + WAIT_LOG_EVERY_S
                time.sleep(self.poll_s)
        stale = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if stale:
            log.warning("taking over the lock on %s left by an interrupted run (%s)", self.path.parent, stale)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time())}
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Empty the file before unlocking: a non-empty lock file found by the next holder means a crash.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
