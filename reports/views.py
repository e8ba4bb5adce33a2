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


@dataclass
class TokenView:
    text: str
    intensity: float
    """Activation relative to the latent's max over the shown windows, 0..1."""
    activation: float


@dataclass
class CardView:
    sae_id: str
    latent: int
    facts: list[tuple[str, str]]
    explanations: list[tuple[str, str]]
    """(source, explanation text with its scores)."""
    windows: list[list[TokenView]]


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[TableView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What is absent and why: shown instead of crashing."""
    cards: list[CardView] = field(default_factory=list)


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


def sort_key(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return str(value) if value is not None else ""


def table_view(
    headers: list[str], rows: list[list[object]], caption: str = "", sortable: bool = False, css_id: str = ""
) -> TableView:
    return TableView(
        headers=headers,
        rows=[[fmt(v) for v in row] for row in rows],
        sort_keys=[[sort_key(v) for v in row] for row in rows],
        caption=caption,
        sortable=sortable,
        css_id=css_id,
    )
