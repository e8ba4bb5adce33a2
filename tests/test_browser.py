"""report.html in a real browser: Debian chromium, headless, driven over the DevTools protocol on a pipe
(tests/helpers/cdp.py). Runs by default when /usr/bin/chromium exists; .ci/run installs it.

Two reports: the constructed fixture (hostile strings, sorting) and the small demo's (a demo-like report: every
section and plot, ~28 SAEs, real example windows), on which layout is checked with bounding boxes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.cdp import CHROMIUM, Page, png_pixels
from helpers.demo import DemoRuns
from helpers.report_fixture import PLOT_IDS, XSS, write_run_dir

from reports.html import write_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (.ci/run installs it)"
    ),
]
LOAD_BUDGET_MS = 1500
DRAWN = "document.body.dataset.allDrawnMs && document.body.dataset.plotsDrawn"

DOM_PROBE = """JSON.stringify({
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  plots: Array.from(document.querySelectorAll('div.plot'))
    .filter(d => d.querySelector('svg.main-svg')).map(d => d.id),
  emptyPlots: Array.from(document.querySelectorAll('div.plot'))  // drawn, but no bar, marker or line
    .filter(d => !Array.from(d.querySelectorAll('.point path, path.point, path.js-line'))
      .some(p => { const box = p.getBBox(); return box.width + box.height > 0; })).map(d => d.id),
  xssShown: document.body.innerText.includes(XSS_JSON),
  liveXssScripts: Array.from(document.scripts).filter(s => s.text.includes('alert(1)')).length,
  summaryRows: document.querySelectorAll('#summary-table tbody tr').length,
  byFvu: [1, 2].map(() => {  // click the FVU header twice: ascending, then descending
    Array.from(document.querySelectorAll('#summary-table th'))
      .find(th => th.firstChild.textContent === 'FVU').click();
    return document.querySelector('#summary-table tbody tr td').textContent;
  }),
})""".replace("XSS_JSON", json.dumps(XSS))

# Pairs of elements that overlap inside one feature card or one plot header, elements that stick out of their
# card, cards that overlap each other, and token lines wider than their card.
LAYOUT_PROBE = """(() => {
  const box = e => e.getBoundingClientRect();
  const meet = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
                      && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  const overlaps = [], outside = [];
  const check = (container, parts) => {
    const c = box(container), rects = parts.map(box);
    rects.forEach((r, i) => {
      if (r.left < c.left - 1 || r.right > c.right + 1) outside.push(container.id || container.className);
      for (let j = i + 1; j < rects.length; j++)
        if (meet(r, rects[j])) overlaps.push([parts[i].className, parts[j].className]);
    });
  };
  document.querySelectorAll('.card').forEach(
    c => check(c, Array.from(c.querySelectorAll('h3, .fact, .expl, .window'))));
  document.querySelectorAll('.fig').forEach(
    f => check(f, ['.fig-head h3', '.pick', '.plot'].map(q => f.querySelector(q)).filter(Boolean)));
  const cards = Array.from(document.querySelectorAll('.card'));
  let cardOverlaps = 0;
  cards.forEach((a, i) => cards.slice(i + 1).forEach(b => { if (meet(box(a), box(b))) cardOverlaps++; }));
  const wide = Array.from(document.querySelectorAll('.window'))
    .filter(w => w.scrollWidth > w.clientWidth + 1).length;
  const board = document.getElementById('leaderboard-table'), rows = board ? board.tBodies[0].rows : [];
  return JSON.stringify({
    overlaps, outside, cardOverlaps, wide, cards: cards.length,
    figHeads: document.querySelectorAll('.fig-head').length,
    boardTop: board ? box(board).top : null,
    boardRowsVisible: Array.from(rows).filter(r => box(r).bottom <= window.innerHeight).length,
    boardRows: rows.length,
    boardFits: board ? box(board).right <= window.innerWidth : false,
    readyMs: Number(document.body.dataset.readyMs),
    allDrawnMs: Number(document.body.dataset.allDrawnMs),
  });
})()"""


def _requests_and_errors(events: list[dict]) -> tuple[list[str], list[dict]]:
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    remote = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e for e in events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"]
    errors += [e for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    return remote, errors


def test_report_renders_offline_without_errors(tmp_path: Path) -> None:
    report = write_report(write_run_dir(tmp_path / "run", afa_samples=True))
    page = Page(report, tmp_path / "profile", 1200, 900)
    try:
        assert page.wait_for(DRAWN) == str(len(PLOT_IDS))
        dom = json.loads(str(page.evaluate(DOM_PROBE)))
        png = page.screenshot()
        page.cdp.drain(0.5)
        remote, errors = _requests_and_errors(page.events)
        dialogs = [e for e in page.events if e.get("method") == "Page.javascriptDialogOpening"]
    finally:
        page.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert remote == [] and errors == [] and dialogs == []  # no network, no error, alert(1) never ran
    assert dom["sections"][:2] == ["leaderboard", "claims"] and dom["sections"][-1] == "cards"
    assert sorted(dom["plots"]) == sorted(PLOT_IDS) and dom["emptyPlots"] == []
    assert dom["xssShown"] is True and dom["liveXssScripts"] == 0
    assert dom["summaryRows"] == 9
    assert dom["byFvu"] == ["std_l1a", "cos_b"]  # fvu 0.1 first, then 0.6 first
    width, height, ch, pixels = png_pixels(png)
    assert (width, height) == (1200, 900)
    luma = pixels[::ch]
    mean = sum(luma) / len(luma)
    assert sum((v - mean) ** 2 for v in luma) / len(luma) > 100, "screenshot looks blank"


def test_demo_report_layout_in_chromium(small_demo: DemoRuns, tmp_path: Path) -> None:
    """On the demo's report: every plot drawn, the leaderboard on the first screen, nothing overlapping inside
    cards and plot headers, no network, ready within the load budget (best of three loads: CI machines are
    shared)."""
    report = small_demo.first.report_path
    loads = []
    for attempt in range(3):
        page = Page(report, tmp_path / f"profile{attempt}", 1280, 900)
        try:
            drawn = page.wait_for(DRAWN)
            layout = json.loads(str(page.evaluate(LAYOUT_PROBE)))
            page.cdp.drain(0.3)
            remote, errors = _requests_and_errors(page.events)
        finally:
            page.close()
        loads.append(layout["readyMs"])
        if layout["readyMs"] < LOAD_BUDGET_MS:
            break
    assert remote == [] and errors == []
    assert int(drawn) == len(PLOT_IDS)
    assert layout["cards"] > 0 and layout["figHeads"] == len(PLOT_IDS)
    assert layout["overlaps"] == [] and layout["outside"] == [] and layout["cardOverlaps"] == 0
    assert layout["wide"] == 0  # token lines wrap inside their card
    # the first screen (1280 × 900) holds the leaderboard: its table starts on it, with rows visible, and fits
    assert layout["boardTop"] < 900 and layout["boardRowsVisible"] >= min(3, layout["boardRows"])
    assert layout["boardFits"]
    # load: navigation start to the first screen ready (plotly inflated, the plots in view drawn); the others
    # draw in idle moments right after (allDrawnMs), or as soon as they are scrolled to
    assert min(loads) < LOAD_BUDGET_MS, f"load (navigation to first screen ready) took {loads} ms"
    assert layout["allDrawnMs"] >= layout["readyMs"]
