"""docs/ stays true to the code: every command-line option is documented in docs/cli.md, every registered metric
in docs/metrics.md, and every relative link of README.md and docs/ resolves (to a file, and to a heading)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from evalkit.app.cli import build_parser
from metrics.base import METRICS, load_metric_modules

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_every_option_of_every_command_is_in_docs_cli() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        assert f"evalkit {name}" in text, name
        for action in sub._actions:
            missing += [
                f"{name} {o}" for o in action.option_strings if o.startswith("--") and o != "--help" and o not in text
            ]
    assert missing == []


def test_every_registered_metric_is_defined_in_docs_metrics() -> None:
    load_metric_modules()
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    names = {n for _, spec in METRICS.items() for n in spec.names}
    internal = {"concept_best_index"}  # features.csv shows it as concept_best, a label name
    assert sorted(n for n in names - internal if f"`{n}`" not in text and n not in text) == []


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.is_file():
            headings = re.findall(r"^#+\s+(.*)$", dest.read_text(encoding="utf-8"), flags=re.M)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(target)
    assert broken == []
