"""report.html in a real browser: Debian chromium, headless, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` speaks CDP as NUL-terminated JSON over fds 3 (in) and 4 (out), so the client is
stdlib only (no websocket library). Runs by default when /usr/bin/chromium exists; .ci/run installs it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from helpers.report_fixture import PLOT_IDS, XSS, write_run_dir

from reports.html import write_report

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

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (.ci/run installs it)"
    ),
]


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


def test_png_decoder_on_a_known_image() -> None:
    # 2×1 RGB, row filter 1 (Sub): pixels (10,20,30) and (10+5, 20+5, 30+5).
    raw = bytes([1, 10, 20, 30, 5, 5, 5])
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert png_pixels(png) == (2, 1, 3, bytes([10, 20, 30, 15, 25, 35]))


DOM_PROBE = """JSON.stringify({
  summaryRows: document.querySelectorAll('#summary-table tbody tr').length,
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  plots: Array.from(document.querySelectorAll('div.plot'))
    .filter(d => d.querySelector('svg.main-svg')).map(d => d.id),
  emptyPlots: Array.from(document.querySelectorAll('div.plot'))  // drawn, but no bar, marker or line
    .filter(d => !Array.from(d.querySelectorAll('.point path, path.point, path.js-line'))
      .some(p => { const box = p.getBBox(); return box.width + box.height > 0; })).map(d => d.id),
  xssShown: document.body.innerText.includes(XSS_JSON),
  liveXssScripts: Array.from(document.scripts).filter(s => s.text.includes('alert(1)')).length,
  byFvu: [1, 2].map(() => {  // click the fvu header twice: ascending, then descending
    Array.from(document.querySelectorAll('#summary-table th')).find(th => th.textContent === 'fvu').click();
    return document.querySelector('#summary-table tbody tr td').textContent;
  }),
})""".replace("XSS_JSON", json.dumps(XSS))


def _load_report(report: Path, profile: Path) -> tuple[dict, bytes, list[dict]]:
    cdp = PipeCDP(profile)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        cdp.call("Page.navigate", {"url": report.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired", timeout=60)
        cdp.drain(1.0)  # late console messages or requests
        probe = cdp.call("Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True}, session)
        shot = cdp.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": {"x": 0, "y": 0, "width": 1200, "height": 900, "scale": 0.5}},
            session,
        )
        return json.loads(probe["result"]["value"]), base64.b64decode(shot["data"]), list(cdp.events)
    finally:
        cdp.close()


def test_report_renders_offline_without_errors(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", afa_samples=True)
    report = write_report(run)
    dom, png, events = _load_report(report, tmp_path / "profile")
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)

    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))] == []
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e for e in events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"]
    errors += [e for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert errors == []
    assert not any(e.get("method") == "Page.javascriptDialogOpening" for e in events)  # alert(1) never ran

    assert dom["summaryRows"] == 9
    assert dom["sections"] == [
        "summary",
        "claims",
        "pareto",
        "matched",
        "density",
        "alignment",
        "norm",
        "afa",
        "stability",
        "autointerp",
        "cards",
    ]
    assert sorted(dom["plots"]) == sorted(PLOT_IDS)
    assert dom["emptyPlots"] == []
    assert dom["xssShown"] is True and dom["liveXssScripts"] == 0
    assert dom["byFvu"] == ["std_l1a", "cos_b"]  # fvu 0.1 first, then 0.6 first

    width, height, ch, pixels = png_pixels(png)
    assert (width, height) == (600, 450)
    luma = pixels[::ch]  # red channel is enough to tell a blank page from a drawn one
    mean = sum(luma) / len(luma)
    variance = sum((v - mean) ** 2 for v in luma) / len(luma)
    assert variance > 100, f"screenshot looks blank (variance {variance:.1f})"
