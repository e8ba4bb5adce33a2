"""report.html: one self-contained file, rendered by jinja2 with autoescape on, so every string from the data
arrives in the page as text.

plotly.js is inlined once: its official "basic" partial bundle (scatter and bar traces, the only ones the report
draws; plotly.js-basic-dist-min 4.1.1, MIT, the same plotly.js version the plotly package ships), stored gzipped
in reports/assets and base64-encoded into the page (0.5 MB instead of the full bundle's 4.8 MB, which also took
seconds to evaluate). The page inflates it with the browser's own DecompressionStream: no network. Figures are
plain JSON blocks (sampled and rounded by reports/plots.py).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from evalkit.core.io import atomic_write_text, evalkit_version
from reports.cards import cards_section
from reports.claims import claims_table, write_claims
from reports.differences import compute_differences, write_differences
from reports.distributions import DETAIL_BUILDERS
from reports.load import RunTables, load_run
from reports.matched import build_families, compute_matched, write_matched
from reports.plots import Figure
from reports.sections import ReportData, overview_builders
from reports.views import FigureView, Section

log = logging.getLogger(__name__)


@dataclass
class RenderedSection:
    """A Section plus its figures serialised for the page."""

    id: str
    title: str
    intro: str
    notes: list[str]
    tables: list[object]
    cards: list[object]
    figures: list[tuple[FigureView, Markup]]
    switch_label: str


PLOTLY_BUNDLE = "plotly-basic-4.1.1.min.js.gz"
PLOTTED_TRACE_TYPES = frozenset({"scatter", "bar"})
"""What the basic bundle draws; every figure the report builds uses only these (tests check it)."""


@lru_cache(maxsize=1)
def plotly_bundle_gz_b64() -> str:
    """The gzipped basic bundle, base64-encoded for the page."""
    return base64.b64encode(files("reports").joinpath("assets", PLOTLY_BUNDLE).read_bytes()).decode()


def plotly_bundle() -> str:
    """plotly.js as text (the inflated bundle)."""
    return gzip.decompress(base64.b64decode(plotly_bundle_gz_b64())).decode("utf-8")


def _asset(name: str) -> str:
    return files("reports").joinpath("assets", name).read_text(encoding="utf-8")


def _json_safe(obj: object) -> object:
    """NaN/inf -> null everywhere: JSON.parse rejects NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def figure_json(fig: Figure) -> Markup:
    """JSON for a <script type="application/json"> block.

    <, > and & are escaped, so no data string can close the tag.
    """
    text = json.dumps(_json_safe(fig), separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def _render_section(section: Section) -> RenderedSection:
    return RenderedSection(
        id=section.id,
        title=section.title,
        intro=section.intro,
        notes=section.notes,
        tables=list(section.tables),
        cards=list(section.cards),
        figures=[(view, figure_json(view.figure)) for view in section.figures],
        switch_label=section.switch_label,
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,  # every data string is escaped; only the bundled assets are marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _token_counts(tables: RunTables) -> str:
    """'4,096 evaluation tokens' (or a range over SAEs), from the results' n_tokens column."""
    if "n_tokens" not in tables.results.columns:
        return ""
    n = pd.to_numeric(tables.results["n_tokens"], errors="coerce").dropna()
    if n.empty:
        return ""
    lo, hi = int(n.min()), int(n.max())
    return f"{lo:,} evaluation tokens" if lo == hi else f"{lo:,}–{hi:,} evaluation tokens"


def render_report(
    tables: RunTables,
    matched: pd.DataFrame,
    match_by: str,
    source_labels: Sequence[str] | None = None,
    differences: pd.DataFrame | None = None,
) -> str:
    """The page's HTML; `source_labels` name the folders read (default: their paths as given); `differences` are
    the pairwise family differences with intervals (reports.differences)."""
    data = ReportData(
        tables=tables, families=build_families(tables), matched=matched, match_by=match_by, differences=differences
    )
    builders = (*overview_builders(), *DETAIL_BUILDERS)
    sections = [builder(data) for builder in builders] + [cards_section(tables)]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title="evalkit report",
            version=evalkit_version(),
            sources=list(source_labels) if source_labels is not None else [str(d) for d in tables.dirs],
            n_saes=len(tables.saes),
            sections=[_render_section(s) for s in sections],
            css=Markup(_asset("report.css")),
            report_js=Markup(_asset("report.js")),
            plotly_gz=Markup(plotly_bundle_gz_b64()),
            n_tokens=_token_counts(tables),
        )
    )


def write_report(
    out_dir: str | Path,
    sources: Sequence[str | Path] | None = None,
    by: str = "fvu",
    targets: Sequence[float] | None = None,
) -> Path:
    """Read the run folder(s) (default: out_dir itself), write matched.csv and report.html into out_dir.

    This is the single call `evalkit demo`, `evalkit report` and `evalkit compare` make after results exist.
    """
    out = Path(out_dir)
    tables = load_run(*(sources or [out]))
    matched = compute_matched(tables, by=by, targets=targets)
    write_matched(matched, out)
    write_claims(claims_table(tables), out)
    differences = compute_differences(tables, matched, by)
    write_differences(differences, out)
    path = out / "report.html"
    # Folders named relative to the report: the page moves with its folder, and a resumed run writes the same bytes.
    labels = [os.path.relpath(d, out) for d in tables.dirs]
    labels = ["this folder" if label == "." else label for label in labels]
    atomic_write_text(path, render_report(tables, matched, by, labels, differences))
    log.info("report: %s", path)
    return path
