"""The small-size demo, built once per test session (tests/conftest.py registers the fixture): test_demo checks
its outputs, test_browser opens its report (a demo-like report: every section, every plot, ~28 SAEs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from evalkit.app.demo import DemoResult, run_demo
from evalkit.world.build import World, build_world


@dataclass
class DemoRuns:
    world: World
    first: DemoResult
    second: DemoResult
    first_results_csv: bytes


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRuns]:
    """The small-size demo from an empty cache, run twice into one folder."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_CACHE", str(root / "cache"))
        first = run_demo(root / "out", size="small")
        first_csv = (root / "out" / "results.csv").read_bytes()
        second = run_demo(root / "out", size="small")
        yield DemoRuns(build_world(size="small"), first, second, first_csv)
