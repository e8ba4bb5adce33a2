"""A minimal Chrome DevTools Protocol client over chromium's debugging pipe, and a PNG decoder, for the browser
tests and for looking at a report by hand (screenshots).

`--remote-debugging-pipe` speaks CDP as NUL-terminated JSON over fds 3 (in) and 4 (out), so the client is
stdlib only (no websocket library).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import time
import zlib
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1200,900",
)


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class PipeCDP:
    """A minimal Chrome DevTools Protocol client over chromium's debugging pipe."""

    def __init__(self, user_data_dir: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Move the child's ends to fds >= 10, so the redirections below cannot clobber one another at 3/4.
        to_chrome_r, from_chrome_w = (_high_fd(to_chrome_r), _high_fd(from_chrome_w))
        # bash (dash rejects fds > 9) puts our pipe ends at fds 3/4, where --remote-debugging-pipe wants them.
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        self.proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                script,
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                return None
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the debugging pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while (msg := self._read_message(deadline)) is not None:
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            msg = self._read_message(deadline)
            if msg is None:
                raise TimeoutError(method)
            if msg.get("method") == "Page.javascriptDialogOpening":  # it would block the page until answered
                raise AssertionError(f"a script from the data ran and opened a dialog: {msg['params']}")
            self.events.append(msg)
        return next(e for e in self.events if e.get("method") == method)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (msg := self._read_message(deadline)) is not None:
            self.events.append(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def png_pixels(png: bytes) -> tuple[int, int, int, bytes]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (chromium's kind): (width, height, channels, raw bytes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    ch = 3 if color == 2 else 4
    stride, raw = width * ch, zlib.decompress(idat)
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        ftype, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - ch] if i >= ch else 0
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            if ftype == 1:
                row[i] = (row[i] + a) & 255
            elif ftype == 2:
                row[i] = (row[i] + b) & 255
            elif ftype == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return width, height, ch, bytes(out)


class Page:
    """One report opened in headless chromium: evaluate JavaScript, take screenshots, read the events seen."""

    def __init__(self, report: Path, profile: Path, width: int = 1280, height: int = 900) -> None:
        self.cdp = PipeCDP(profile)
        self.width, self.height = width, height
        try:
            target = self.cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                self.cdp.call(f"{domain}.enable", session=self.session)
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            self.cdp.call("Emulation.setDeviceMetricsOverride", metrics, self.session)
            self.cdp.call("Page.navigate", {"url": report.resolve().as_uri()}, self.session)
            self.cdp.wait_event("Page.loadEventFired", timeout=60)
        except BaseException:
            self.cdp.close()
            raise

    def evaluate(self, expression: str) -> object:
        result = self.cdp.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        """Poll until the expression is truthy (e.g. the page saying its plots are drawn)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            self.cdp.drain(0.1)
        raise TimeoutError(expression)

    def screenshot(self, x: float = 0, y: float = 0, width: float | None = None, height: float | None = None) -> bytes:
        clip = {"x": x, "y": y, "width": width or self.width, "height": height or self.height, "scale": 1}
        shot = self.cdp.call(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, self.session
        )
        import base64

        return base64.b64decode(shot["data"])

    @property
    def events(self) -> list[dict]:
        return list(self.cdp.events)

    def close(self) -> None:
        self.cdp.close()
