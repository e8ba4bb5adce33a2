"""Issue #14, end to end: fault injection (a real SIGKILL at seeded random points of each stage, then a rerun
whose every output equals an uninterrupted run's), a pass resumed from its checkpoint, concurrent runs, a
read-only folder, damaged shards, colliding SAE names, a bad SAE among good ones, bad labels and options.

Kills run `python -m evalkit` in a subprocess with EVALKIT_TEST_KILL_AT=STAGE:N (evalkit.core.faults); N is
drawn from random.Random(SEED). Small data (48 sequences × 8 tokens, 12 batches) keeps each run to seconds; the
kill in the pass stays in the default run, the other stages are marked slow.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.llm_server import LLMServer
from helpers.run_folders import output_files, run_argv
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from evalkit.app.cli import main

SEED = 14
HOOK = "blocks.0.hook_resid_post"
N_SEQ, SEQ_LEN, D_IN = 48, 8, 16
BATCH_TOKENS = 32  # 4 sequences per batch: 12 batches
N_BATCHES = N_SEQ * SEQ_LEN // BATCH_TOKENS
METRICS = "core,sparsity,afa"


def _save_topk(folder: Path, seed: int, k: int = 3) -> None:
    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny")
    TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=32, k=k, metadata=meta)).save_model(folder)


def _edit_cfg(folder: Path, **edit: Any) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(edit)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rel")
    for i, name in enumerate(("a", "b", "c")):
        _save_topk(root / "saes" / name, i)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (N_SEQ, SEQ_LEN), generator=gen)
    acts = torch.randn(N_SEQ, SEQ_LEN, D_IN, generator=gen) + 1.0
    save_file({"activations": acts, "tokens": tokens}, root / "acts.safetensors")
    return root


@pytest.fixture(scope="module", autouse=True)
def fixed_build_date() -> Iterator[None]:
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    yield
    if old is None:
        os.environ.pop("SOURCE_DATE_EPOCH")
    else:
        os.environ["SOURCE_DATE_EPOCH"] = old


def run_args(work: Path, out: Path, *extra: str, sae: Path | None = None) -> list[str]:
    saes, acts = sae or work / "saes", work / "acts.safetensors"
    return run_argv(saes, acts, METRICS, BATCH_TOKENS, out, "--checkpoint-every", "1", *extra)


def execution(out: Path) -> dict[str, Any]:
    return json.loads((out / "run.json").read_text())["execution"]


def killed_run(argv: list[str], stage: str, n: int, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "EVALKIT_TEST_KILL_AT": f"{stage}:{n}", "SOURCE_DATE_EPOCH": "1700000000", **env}
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *argv], env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def uninterrupted(work: Path) -> Path:
    out = work / "full"
    assert main(run_args(work, out)) == 0
    return out


# ------------------------------------------------------------------------- 8: a kill during the pass resumes


def test_kill_during_the_pass_resumes_from_its_checkpoint(work: Path, uninterrupted: Path) -> None:
    n = random.Random(SEED).randint(2, N_BATCHES - 2)
    out = work / "killed-pass"
    proc = killed_run(run_args(work, out), "pass", n)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(run_args(work, out)) == 0
    passes = execution(out)["passes"][HOOK]
    fresh = execution(uninterrupted)["passes"][HOOK]
    assert fresh["batches_read"] == N_BATCHES and fresh["checkpoints_written"] == N_BATCHES
    # killed after batch n, before its checkpoint: at most one interval (1 batch) is lost
    assert passes["resumed_at_batch"] == n - 1
    assert passes["batches_read"] == N_BATCHES - (n - 1) < fresh["batches_read"]
    assert output_files(out) == output_files(uninterrupted)
    assert not list((out / ".evalkit-cache" / "checkpoints").glob("*.ckpt"))  # removed once results are stored
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["checkpoint", "finish", "report"])
def test_kill_at_a_seeded_point_of_each_stage_then_rerun_is_identical(
    stage: str, work: Path, uninterrupted: Path
) -> None:
    limits = {"checkpoint": N_BATCHES - 1, "finish": 3 * 4, "report": 5}
    n = random.Random(f"{SEED}:{stage}").randint(1, limits[stage])
    out = work / f"killed-{stage}"
    proc = killed_run(run_args(work, out), stage, n)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(run_args(work, out)) == 0
    assert output_files(out) == output_files(uninterrupted)
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------------------- 5: the LLM stage


def _llm(body: dict[str, Any]) -> str:
    return "Explanation: token 7" if "Explanation" in body["messages"][0]["content"] else "Answer: 1"


def _llm_values(out: Path) -> dict[str, float]:
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()[1:]]
    return {f"{r[0]}:{r[8]}": float(r[9]) for r in rows if r[8].startswith("autointerp_llm")}


@pytest.mark.slow
def test_kill_in_the_llm_stage_then_resume_reports_the_uninterrupted_usage(work: Path) -> None:
    with LLMServer(_llm) as srv:
        llm = ["--autointerp", "llm", "--llm-base-url", srv.base_url, "--llm-model", "m", "--metrics", "core"]
        full = work / "llm-full"
        assert main(run_args(work, full, *llm)) == 0
        sent_full = srv.n_requests
        out = work / "llm-killed"
        n = random.Random(f"{SEED}:llm").randint(5, sent_full // 2)
        proc = killed_run(run_args(work, out, *llm), "llm", n)
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert main(run_args(work, out, *llm)) == 0
    assert _llm_values(out) == _llm_values(full) and _llm_values(full)["a:autointerp_llm_requests"] > 0
    usage = execution(out)["llm_usage"]
    sent = sum(u["sent_this_run"]["requests"] for u in usage.values())
    took = sum(u["results_took"]["requests"] for u in usage.values())
    assert 0 < sent < took  # what the rerun sent, apart from what the results took (spent before the kill)
    # Sent by both processes: the n replies cached before the kill, at most the 8 requests then in flight
    # (AutointerpConfig.concurrency; answered but lost with the process), and what the rerun sent.
    assert n + sent <= srv.n_requests - sent_full <= n + 8 + sent


# --------------------------------------------------------------------------------- 6: concurrent runs


@pytest.mark.slow  # the lock itself is tested in the default run by tests/test_reliability_units.py
def test_a_second_run_into_a_busy_folder_exits_2_naming_the_holder_or_waits(work: Path, capsys) -> None:
    out = work / "busy"
    env = {**os.environ, "EVALKIT_TEST_PAUSE_AT": "pass:1:6"}
    first = subprocess.Popen([sys.executable, "-m", "evalkit", *run_args(work, out)], env=env)
    try:
        lock = out / ".evalkit-lock"
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(run_args(work, out, sae=work / "saes" / "a")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            err[-1].endswith(
                f"in use by another evalkit run (pid {first.pid}); pass --wait to wait for it, or choose another --out"
            )
            and len(err) == 1
        )
        assert main(run_args(work, out, "--wait", sae=work / "saes" / "a")) == 0
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()
    run = json.loads((out / "run.json").read_text())
    assert [s["sae_id"] for s in run["saes"]] == ["a"]
    assert {line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]} == {"a"}


# ------------------------------------------------------------------------------ 2: an unwritable --out


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the folder immutable instead
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: no way to make a read-only folder")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_read_only_or_impossible_out_exits_2_before_the_pass(work: Path, read_only_dir: Path, capsys) -> None:
    (work / "a-file").write_text("x")
    for out, problem in (
        (read_only_dir, "output folder is not writable"),
        (work / "a-file", "--out is a file, not a folder"),
        (Path("/proc/evalkit-out"), "cannot create the output folder"),
    ):
        t0 = time.perf_counter()
        assert main(run_args(work, out)) == 2
        assert time.perf_counter() - t0 < 5.0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and problem in err[0], err
    assert main(["report", str(read_only_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder is not writable" in err[0]


# ---------------------------------------------------------------------------------- 7: damaged shards


def test_damaged_shards_are_recomputed_with_a_warning_naming_them(work: Path, uninterrupted: Path, caplog) -> None:
    out = work / "damaged"
    shutil.copytree(uninterrupted, out)
    shards = sorted(p for p in (out / ".evalkit-cache").rglob("*.json") if p.parent.name != "data")
    shards[0].write_bytes(b"")
    shards[3].write_bytes(b"\x00\xffgarbage")
    assert main(run_args(work, out)) == 0
    assert str(shards[0]) in caplog.text and str(shards[3]) in caplog.text
    assert execution(out)["computed"] == 2
    assert output_files(out) == output_files(uninterrupted)


# ------------------------------------------------------------------------------ 4: colliding SAE names


def test_colliding_sae_names_get_their_own_files(work: Path) -> None:
    zoo = work / "colliding"
    for i, name in enumerate(("a b", "a_b", "模型", "字典")):
        _save_topk(zoo / name, 10 + i)
    out = work / "colliding-out"
    assert main(run_args(work, out, sae=zoo)) == 0
    from evalkit.core.io import file_stem

    afa = {p.name: p.read_bytes() for p in (out / "afa").glob("*.csv")}
    ids = ("a b", "a_b", "模型", "字典")
    assert sorted(afa) == sorted(f"{file_stem(i)}.csv" for i in ids)  # four files, each found by its sae_id
    assert len(set(afa.values())) == 4  # four different SAEs' samples, none overwritten


# ------------------------------------------------------------------------- 1, 3: bad SAEs among good ones


def test_bad_saes_among_good_ones_are_reported_and_the_rest_evaluated(work: Path, capsys, caplog) -> None:
    zoo = work / "mixed"
    shutil.copytree(work / "saes", zoo)
    for name, edit in (("big_k", {"k": 100000}), ("neg_d_sae", {"d_sae": -5}), ("zero_k", {"k": 0})):
        _save_topk(zoo / name, 20)
        _edit_cfg(zoo / name, **edit)
    _save_topk(zoo / "no_k", 21)
    cfg = json.loads((zoo / "no_k" / "cfg.json").read_text())
    cfg.pop("k")
    (zoo / "no_k" / "cfg.json").write_text(json.dumps(cfg))
    out = work / "mixed-out"
    assert main(run_args(work, out, sae=zoo)) == 2
    err = caplog.text  # logged on stderr, one line per bad SAE
    run = json.loads((out / "run.json").read_text())
    failed = {Path(f["path"]).parent.name: f["reason"] for f in run["failed"]}
    assert failed == {
        "big_k": "field 'k' must satisfy 0 < k <= d_sae (32), got 100000",
        "neg_d_sae": "field 'd_sae' must be > 0, got -5",
        "zero_k": "field 'k' must satisfy 0 < k <= d_sae (32), got 0",
        "no_k": "missing field 'k', required for architecture topk (no default is guessed)",
    }
    assert all(f"{name}/cfg.json" in err for name in failed)
    assert [s["sae_id"] for s in run["saes"]] == ["a", "b", "c"]
    strict = work / "mixed-strict"
    capsys.readouterr()
    assert main(run_args(work, strict, "--strict", sae=zoo)) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "big_k/cfg.json" in err_lines[0] and not (strict / "results.csv").exists()


# ------------------------------------------------------------------------ 9, 11: labels, options, dtypes


def test_bad_labels_options_and_dtypes_exit_2_in_one_line(work: Path, capsys) -> None:
    names = {"label_names": json.dumps(["x"])}
    save_file({"labels": torch.zeros(N_SEQ * SEQ_LEN + 5, 1)}, work / "long.safetensors", metadata=names)
    two = torch.zeros(N_SEQ * SEQ_LEN, 1)
    two[3] = 2
    save_file({"labels": two}, work / "two.safetensors", metadata=names)
    save_file({"activations": torch.ones(4, 8, D_IN, dtype=torch.int32)}, work / "int.safetensors")
    cases = [
        (run_args(work, work / "l1", "--labels", str(work / "long.safetensors")), "has 389 label rows"),
        (run_args(work, work / "l2", "--labels", str(work / "two.safetensors")), "only 0/1, found 2.0 at row 3"),
        (run_args(work, work / "m", "--metrics", ","), "--metrics: selects no metric"),
        ([*run_args(work, work / "i")[:3], "--activations", str(work / "int.safetensors")], "dtype I32"),
    ]
    for argv, problem in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0], err
