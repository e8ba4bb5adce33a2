"""Plain view objects the report template renders: sections, tables, feature cards. No HTML is built here;
the jinja2 template (autoescape on) turns every string into escaped text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from reports.plots import Figure


@dataclass
class TableView:
    headers: list[str]
    rows: list[list[str]]
    sort_keys: list[list[str]]
    """Per cell, what the inline sorter compares (a number as text, or the cell text)."""
    caption: str = ""
    sortable: bool = False
    css_id: str = ""
    subheaders: list[str] = field(default_factory=list)
    """Per column, a second header line (direction arrow and unit); empty strings where there is none."""
    marks: list[list[str]] = field(default_factory=list)
    """Per cell, a CSS class ('best' for a column's best value, '' otherwise)."""
    choice: str = ""
    """Label of this table in its section's switch (only one table of a switch is shown at a time)."""


@dataclass
class TokenView:
    text: str
    """The token as it reads in the text, leading space included."""
    intensity: float
    """Activation relative to the latent's max over the shown windows, 0..1."""
    activation: float

    @property
    def lead(self) -> str:
        """Leading whitespace, drawn outside the token's shading."""
        return self.text[: len(self.text) - len(self.text.lstrip())]

    @property
    def core(self) -> str:
        return self.text.lstrip() or self.text


@dataclass
class CardView:
    sae_id: str
    latent: int
    facts: list[tuple[str, str]]
    explanations: list[tuple[str, str]]
    """(source, explanation text with its scores)."""
    windows: list[list[TokenView]]


@dataclass
class FigureView:
    """One plot: an HTML header (title, and a selector when the figure holds one SAE at a time) above it."""

    id: str
    title: str
    figure: Figure
    options: list[str] = field(default_factory=list)
    """Selector entries (SAE ids), in figure trace-group order; empty when the figure shows everything."""
    initial: int = 0
    """The entry shown first: the most informative one, not merely the first."""
    note: str = ""


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    figures: list[FigureView] = field(default_factory=list)
    tables: list[TableView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What is absent and why: shown instead of crashing."""
    cards: list[CardView] = field(default_factory=list)
    switch_label: str = ""
    """When set, the section's tables are alternatives (one shown, chosen by a selector labelled so)."""


def fmt(value: object) -> str:
    """Four significant digits for floats, integers as integers, empty for missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sort_key(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return str(value) if value is not None else ""


def table_view(
    headers: list[str],
    rows: list[list[object]],
    caption: str = "",
    sortable: bool = False,
    css_id: str = "",
    subheaders: list[str] | None = None,
    marks: list[list[str]] | None = None,
    choice: str = "",
) -> TableView:
    return TableView(
        headers=headers,
        rows=[[fmt(v) for v in row] for row in rows],
        sort_keys=[[sort_key(v) for v in row] for row in rows],
        caption=caption,
        sortable=sortable,
        css_id=css_id,
        subheaders=subheaders or [],
        marks=[
            [" ".join(c for c in (("num" if _is_number(v) else ""), m) if c) for v, m in zip(row, mrow, strict=True)]
            for row, mrow in zip(rows, marks or [["" for _ in row] for row in rows], strict=True)
        ],
        choice=choice,
    )
