"""Progress of a long step: a tqdm bar on a terminal; otherwise a log line at least every 30 s (done/total, rate,
ETA), so a run in CI, under nohup or into a log file is never silent for minutes.

`EVALKIT_PROGRESS_INTERVAL` (seconds) changes the interval of the log lines (tests use a small one).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import TracebackType

log = logging.getLogger("evalkit.progress")

DEFAULT_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """`with Progress(total, "evaluating blocks.3", "tokens") as p: ... p.update(n)`; total may be None."""

    def __init__(self, total: float | None, desc: str, unit: str, interval_s: float | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0.0
        self.start = time.monotonic()
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True)
        else:
            every = interval_s or float(os.environ.get("EVALKIT_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
            # A timer thread, not the update calls: one slow batch must not silence the log for longer.
            self._thread = threading.Thread(target=self._tick, args=(every,), daemon=True)
            self._thread.start()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done:,.0f}"
        if self.total:
            text += f"/{self.total:,.0f} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.3g} {self.unit}/s, {_duration(elapsed)} elapsed"
        if self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            log.info("%s", self.line())

    def update(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            log.info("%s (done)", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
