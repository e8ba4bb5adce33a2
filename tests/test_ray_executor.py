"""`evalkit run --executor ray` on a local Ray cluster started by the test (2 CPUs, no dashboard): by SAEs and by
tokens it writes the local executor's results.csv (floats 1e-6 relative, integers exact); a worker killed
mid-unit is replaced and the run finishes identically; a killed driver's rerun reuses every stored unit (these
two are marked slow: `pytest -m slow tests/test_ray_executor.py`; tests/test_engine_distributed.py covers the
driver's unit reuse in the default run)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.run_folders import run_argv
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from evalkit.app.cli import main

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
METRICS = "core,sparsity,norm,afa,alignment"
VALUE_COLUMN = "value"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray")
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny")
    StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=meta)).save_model(root / "saes" / "a_standard")
    TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=3, metadata=meta)).save_model(root / "saes" / "b_topk")
    TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=5, metadata=meta)).save_model(root / "saes" / "c_topk")
    acts = torch.randn(24, 8, 16) + 2.0
    acts[:, 0] *= 20.0  # massive first tokens, so the norm metrics have something to find
    save_file({"activations": acts}, root / "acts.safetensors")
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Ray cluster for this module; returns the file that arms the one-shot worker death."""
    arm = tmp_path_factory.mktemp("arm") / "die-once"
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {"EVALKIT_TEST_WORKER_DIE_ARM": str(arm), "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield arm
    ray.shutdown()


def args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return run_argv(workdir / "saes", workdir / "acts.safetensors", METRICS, 32, out, "--tokens", "150", *extra)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_results(got: Path, want: Path) -> None:
    got_rows, want_rows = rows(got), rows(want)
    assert len(got_rows) == len(want_rows) > 20
    for g, w in zip(got_rows, want_rows, strict=True):
        assert {k: v for k, v in g.items() if k != VALUE_COLUMN} == {k: v for k, v in w.items() if k != VALUE_COLUMN}
        value = float(w[VALUE_COLUMN])
        if value.is_integer():
            assert float(g[VALUE_COLUMN]) == value, w
        else:
            assert float(g[VALUE_COLUMN]) == pytest.approx(value, rel=1e-6), w
    assert (got / "afa").is_dir() and sorted(p.read_bytes() for p in (got / "afa").iterdir()) == sorted(
        p.read_bytes() for p in (want / "afa").iterdir()
    )  # the sampled tokens: identical


def execution(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["execution"]


@pytest.fixture(scope="module")
def local(workdir: Path) -> Path:
    out = workdir / "local"
    assert main(args(workdir, out)) == 0
    return out


@pytest.mark.parametrize("split", ["saes", "tokens"])
def test_ray_run_writes_the_local_results(workdir: Path, local: Path, cluster: Path, split: str) -> None:
    out = workdir / f"ray-{split}"
    assert main(args(workdir, out, "--executor", "ray", "--split", split, "--workers", "2")) == 0
    assert_same_results(out, local)
    info = execution(out)
    assert info["executor"] == "ray" and info["units_computed"] == 2 and info["worker_failures"] == 0


@pytest.mark.slow  # ~15 s on 2 quiet cores: new actors after the death
def test_worker_killed_mid_unit_is_retried(workdir: Path, local: Path, cluster: Path) -> None:
    cluster.touch()  # the first worker to finish a unit dies before returning it
    out = workdir / "ray-killed-worker"
    assert main(args(workdir, out, "--executor", "ray", "--split", "tokens", "--workers", "2")) == 0
    assert not cluster.exists()
    info = execution(out)
    assert info["worker_failures"] == 1 and info["units_computed"] == 2
    assert_same_results(out, local)


@pytest.mark.slow  # ~25 s on 2 quiet cores: a second driver process and its actors
def test_killed_driver_rerun_reuses_finished_units(workdir: Path, local: Path, cluster: Path) -> None:
    out = workdir / "ray-killed-driver"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "evalkit", *args(workdir, out, "--executor", "ray", "--ray-address", address)]
    cmd += ["--split", "tokens", "--workers", "2"]
    env = {**os.environ, "EVALKIT_TEST_KILL_DRIVER_AFTER_UNITS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
    assert not (out / "results.csv").exists()
    assert len(list((out / ".evalkit-cache" / "units").glob("*.safetensors"))) == 1
    assert main(args(workdir, out, "--executor", "ray", "--split", "tokens", "--workers", "2")) == 0
    info = execution(out)
    assert info["units_reused"] == 1 and info["units_computed"] == 1
    assert_same_results(out, local)
