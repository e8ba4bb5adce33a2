"""`evalkit compare` writes only into --out (or a new folder it names), never into an input folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.report_fixture import SAES, write_run_dir

from evalkit.app.cli import main


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    first = dict(list(SAES.items())[:5])
    second = dict(list(SAES.items())[5:])
    return write_run_dir(tmp_path / "run-a", first), write_run_dir(tmp_path / "run-b", second)


def test_compare_leaves_its_inputs_byte_identical(tmp_path: Path, two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    before = (snapshot(a), snapshot(b))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert (snapshot(a), snapshot(b)) == before
    assert (tmp_path / "cmp" / "report.html").is_file() and (tmp_path / "cmp" / "matched.csv").is_file()


@pytest.mark.parametrize("where", ["run-a", "run-a/sub", "run-b/."])
def test_out_inside_an_input_is_bad_input(
    tmp_path: Path, two_runs: tuple[Path, Path], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_runs
    before = (snapshot(a), snapshot(b))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never writes into an input folder" in err[0]
    assert (snapshot(a), snapshot(b)) == before


def test_without_out_a_new_folder_is_named(
    tmp_path: Path, two_runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_runs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evalkit-compare-1").mkdir()  # taken: the next free name is used
    before = (snapshot(a), snapshot(b))
    assert main(["compare", str(a), str(b)]) == 0
    assert (tmp_path / "evalkit-compare-2" / "report.html").is_file()
    assert not any((tmp_path / "evalkit-compare-1").iterdir())
    assert (snapshot(a), snapshot(b)) == before
