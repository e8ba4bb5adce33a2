"""report.html: one self-contained file (plotly.js inlined once, figures as JSON), rendered by jinja2 with
autoescape on, so every string from the data arrives in the page as text."""

from __future__ import annotations

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
from reports.load import RunTables, load_run
from reports.matched import build_families, compute_matched, write_matched
from reports.plots import Figure
from reports.sections import SECTION_BUILDERS, ReportData
from reports.views import Section

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
    figure_json: list[tuple[str, Markup]]


@lru_cache(maxsize=1)
def plotly_bundle() -> str:
    """plotly.js from the installed plotly package (its offline bundle), made safe to sit inside <script>."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")


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
        figure_json=[(fig_id, figure_json(fig)) for fig_id, fig in section.figures],
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,  # every data string is escaped; only the bundled assets are marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(
    tables: RunTables,
    matched: pd.DataFrame,
    match_by: str,
    source_labels: Sequence[str] | None = None,
    differences: pd.DataFrame | None = None,
) -> str:
    """The page's HTML; `source_labels` name the folders read (default: their paths as given); `differences` are
    the pairwise family differences with intervals (reports.differences)."""
    data = ReportData(tables, build_families(tables), matched, match_by, differences)
    sections = [builder(data) for builder in SECTION_BUILDERS] + [cards_section(tables)]
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
            plotly_js=Markup(plotly_bundle()),
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
    atomic_write_text(path, render_report(tables, matched, by, labels, differences))
    log.info("report: %s", path)
    return path
