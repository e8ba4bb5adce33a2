"""Reports: read the results store, write matched.csv and report.html.

`write_report(out_dir)` is the one call the demo and the CLI make.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reports.html import write_report


def __getattr__(name: str) -> object:
    # Lazy, so importing reports.tables does not pull in jinja2/plotly.
    if name == "write_report":
        from reports.html import write_report

        return write_report
    raise AttributeError(name)


__all__ = ["write_report"]
