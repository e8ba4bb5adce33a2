"""The layer map, checked: every module's imports (read with ast, nothing executed) point down or sideways, never up.

The same map is written in README.md's "Architecture" section. A module belongs to the layer of the longest prefix
in LAYERS that names it; every module of the shipped packages must belong to one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evalkit", "metrics", "autointerp", "reports")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("evalkit", "evalkit.core"),  # 0 leaf: records, errors, registry, hashes, atomic write, file stem, version
    ("evalkit.sae",),  # 1 SAE layer: variants, scores, loaders
    ("metrics",),  # 2 metrics: pure computations on SaeBatch / SAE weights
    ("evalkit.world", "evalkit.sources"),  # 3 data: the embedded world and zoo, activation sources
    ("evalkit.engine",),  # 4 run engine: runner, passes, store, output tables
    ("autointerp", "reports"),  # 5 autointerp pipeline, reports (read output folders)
    ("evalkit.app", "evalkit.__main__"),  # 6 application: CLI, demo, autointerp stage wiring
)
"""Lowest first. An import from layer i may name layer j only when j <= i."""


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = ROOT / Path(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import of a shipped package in `source`, relative imports resolved."""
    here = module.split(".")
    package = here if is_package else here[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from pkg import sub` imports the submodule pkg.sub when it is one
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
    return [(line, m) for line, m in found if m.split(".")[0] in PACKAGES]


def upward_edges(source: str, module: str, is_package: bool = False) -> list[str]:
    here = layer_of(module)
    return [
        f"{module}:{line} imports {m} (layer {layer_of(m)} above {here})"
        for line, m in imported_modules(source, module, is_package)
        if layer_of(m) > here
    ]


def shipped_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in shipped_modules() if layer_of(module_name(p)) < 0]
    assert unplaced == []


@pytest.mark.parametrize("path", shipped_modules(), ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    assert upward_edges(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py") == []


def test_init_files_import_nothing() -> None:
    """No side-effect imports: a package's __init__ holds a docstring at most, so importing a leaf stays light."""
    heavy = [
        str(p.relative_to(ROOT))
        for p in shipped_modules()
        if p.name == "__init__.py"
        and any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.parse(p.read_text()).body)
    ]
    assert heavy == []


def test_the_checker_sees_an_upward_edge() -> None:
    """The check can fail: a metric importing the run engine, or the SAE layer importing a source, is caught."""
    source = "from evalkit.engine.runner import Runner\nimport evalkit.core.records\nfrom . import base\n"
    assert upward_edges(source, "metrics.fake") == ["metrics.fake:1 imports evalkit.engine.runner (layer 4 above 2)"]
    assert upward_edges("from ..sources import base\n", "evalkit.sae.fake") == [
        "evalkit.sae.fake:1 imports evalkit.sources.base (layer 3 above 1)"
    ]
    assert upward_edges("from evalkit.app import run_cli\n", "evalkit.app.demo") == []


def test_readme_states_the_same_map() -> None:
    """README.md's layer table names exactly the prefixes of LAYERS, row by row."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if re.match(r"^\| \d+ ", line)]
    table = tuple(tuple(re.findall(r"`([^`]+)`", row.split("|")[2])) for row in rows)
    assert table == LAYERS
