"""`evalkit demo`: world → zoo → the `evalkit run` runner (every metric group) → report.html; a cached rerun.

The default run builds the small world and its small zoo from an empty cache (about 30 s on 2 cores), runs the
demo twice into one folder, and checks the contract outputs, one metric of every group, agreement with
sae-lens' own forward pass on activations computed here without the runner, and that the rerun computes
nothing. The full-size demo is marked slow.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.demo import DemoRuns
from helpers.saebench import validate_with_saebench
from sae_lens import SAE
from safetensors import safe_open

from evalkit.app.cli import build_parser, main
from evalkit.app.demo import run_demo, run_request
from evalkit.app.request import RunRequest
from evalkit.engine.saebench import check_required_keys
from evalkit.sae.factory import make_sae
from evalkit.world.build import World, hook_activations
from evalkit.world.model import load_world_model

RESULTS_COLUMNS = [
    "sae_id", "sae_path", "architecture", "family", "hook", "d_in", "d_sae", "seed",
    "metric", "value", "latent", "n_tokens", "config_hash", "evalkit_version", "stderr",
]  # fmt: skip
RUN_OUTPUTS = ("results.csv", "summary.csv", "matched.csv", "autointerp.csv", "run.json", "report.html")
# One metric of each group that the world's source (model, tokens, labels) and the zoo's seed groups allow.
GROUP_REPRESENTATIVES = (
    "fvu", "ce_loss_score", "l0", "alignment_mean", "norm_detectors", "afa_eps_lbo_median",
    "seed_stability_mmcs", "concept_coverage", "probe_accuracy_k1", "autointerp_scored_latents",
)  # fmt: skip


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sae_value(rows: list[dict[str, str]], sae_id: str, metric: str) -> float:
    (row,) = [r for r in rows if r["sae_id"] == sae_id and r["metric"] == metric and r["latent"] == ""]
    return float(row["value"])


def _zoo_ids(zoo_dir: Path) -> set[str]:
    return {p.name for p in zoo_dir.iterdir() if (p / "cfg.json").is_file()}


def _eval_activations(world: World) -> torch.Tensor:
    """Hook activations of the eval split's non-special tokens, computed without the runner or the sources."""
    start, stop = world.info["splits"]["eval"]  # type: ignore[index]
    with safe_open(str(world.corpus_path), framework="pt") as fh:
        tokens_NS = fh.get_slice("tokens")[start:stop]
    model = load_world_model(world.model_dir)
    acts_NSD = hook_activations(model, tokens_NS, world.hook_name)
    tok = model.tokenizer
    special = [i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None]
    keep_NS = ~torch.isin(tokens_NS, torch.tensor(special))
    return acts_NSD[keep_NS]


def test_demo_writes_every_contract_output(small_demo: DemoRuns) -> None:
    out, zoo_ids = small_demo.first.out_dir, _zoo_ids(small_demo.first.zoo_dir)
    for name in RUN_OUTPUTS:
        assert (out / name).is_file(), name
    assert (out / "features.csv").is_file() or (out / "features.parquet").is_file()
    for sae_id in zoo_ids:
        doc = json.loads((out / "saebench" / f"{sae_id}_core_eval_results.json").read_text())
        # evalkit's pinned list of SAEBench 0.6.0 CoreEvalOutput's required keys, always; SAEBench's own model
        # where sae-bench is installed (an optional extra).
        assert check_required_keys(doc) == [], sae_id
        assert len(doc["eval_result_details"]) == doc["sae_cfg_dict"]["d_sae"]
        if importlib.util.find_spec("sae_bench") is not None:
            validate_with_saebench(doc)
    assert small_demo.first.report_path == out / "report.html"
    html = small_demo.first.report_path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and all(s in html for s in zoo_ids)
    with open(out / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == RESULTS_COLUMNS


def test_demo_runs_every_metric_group_on_every_zoo_sae(small_demo: DemoRuns) -> None:
    out, zoo_ids = small_demo.first.out_dir, _zoo_ids(small_demo.first.zoo_dir)
    # docs/world.md's zoo: every variant, sweeps and seed replicas.
    assert len(zoo_ids) >= 20
    run = json.loads((out / "run.json").read_text())
    assert (run["config"]["autointerp"], run["config"]["sae"]) == (
        "baseline",
        [str(small_demo.first.zoo_dir)],
    )
    rows = _read_csv(out / "results.csv")
    assert {r["sae_id"] for r in rows} == zoo_ids
    grouped = {s for g in run["seed_groups"] for s in g}
    # >= 3 seeds for topk, aligned topk and cosine, grouped automatically (configs equal but for the seed).
    assert len([g for g in run["seed_groups"] if len(g) >= 3]) >= 3
    for name in GROUP_REPRESENTATIVES:
        expected = grouped if name.startswith("seed_stability") else zoo_ids
        assert {r["sae_id"] for r in rows if r["metric"] == name} == expected, name
    # The small world's eval split: 32 sequences of 32 tokens, BOS excluded.
    assert {r["n_tokens"] for r in rows} == {str(32 * 31)}


def test_demo_numbers_agree_with_sae_lens_forward(small_demo: DemoRuns) -> None:
    # float32 like the runner: top-AFA's k(x) compares cumulative sums, so float64 flips borderline tokens.
    x_TD = _eval_activations(small_demo.world).float()
    var = (x_TD - x_TD.mean(0)).double().pow(2).sum(-1).mean()
    rows = _read_csv(small_demo.first.out_dir / "results.csv")
    for sae_id in sorted(_zoo_ids(small_demo.first.zoo_dir)):
        sae = SAE.load_from_disk(str(small_demo.first.zoo_dir / sae_id))
        with torch.no_grad():
            f_TF = sae.encode(x_TD)
            x_hat_TD = sae.decode(f_TF)
        err_T = (x_TD - x_hat_TD).double().pow(2).sum(-1)
        l0 = float((f_TF > 0).sum(-1).double().mean())
        np.testing.assert_allclose(_sae_value(rows, sae_id, "mse"), float(err_T.mean()), rtol=1e-4, err_msg=sae_id)
        np.testing.assert_allclose(_sae_value(rows, sae_id, "fvu"), float(err_T.mean() / var), rtol=1e-4)
        np.testing.assert_allclose(_sae_value(rows, sae_id, "l0"), l0, rtol=1e-6, err_msg=sae_id)


def test_second_demo_reuses_every_result(small_demo: DemoRuns) -> None:
    out = small_demo.second.out_dir
    execution = json.loads((out / "run.json").read_text())["execution"]
    assert execution["computed"] == 0 and execution["reused"] > 0
    assert (out / "results.csv").read_bytes() == small_demo.first_results_csv
    assert small_demo.second.report_path.is_file()


def test_demo_autointerp_is_the_offline_baseline(small_demo: DemoRuns) -> None:
    out = small_demo.first.out_dir
    rows = _read_csv(out / "autointerp.csv")
    assert {r["sae_id"] for r in rows} == _zoo_ids(small_demo.first.zoo_dir)
    assert {r["model"] for r in rows} == {"baseline"}  # --autointerp baseline: no LLM involved
    explained = [r["explanation"] for r in rows if r["status"] == "ok"]
    assert explained and all(e.startswith("the tokens ") for e in explained)


def test_demo_evaluates_a_given_zoo_folder(small_demo: DemoRuns, tmp_path: Path) -> None:
    world = small_demo.world
    sae = make_sae("topk", d_in=world.d_model, d_sae=64, seed=3)
    sae.cfg.metadata.hook_name = world.hook_name
    sae.save_model(tmp_path / "zoo" / "mine")
    result = run_demo(tmp_path / "out", size="small", cache_dir=world.root.parent.parent, zoo_dir=tmp_path / "zoo")
    assert {r["sae_id"] for r in _read_csv(result.out_dir / "results.csv")} == {"mine"}


def test_demo_request_is_the_run_commands(tmp_path: Path) -> None:
    paths = [tmp_path] * 6
    world = World(*paths, hook_name="blocks.1.hook_resid_post", d_model=32, seq_len=32, fingerprint="w:s:x")
    req = run_request(tmp_path / "out", tmp_path / "zoo", world, force=True)
    assert (req.sae, req.metrics, req.autointerp) == ((str(tmp_path / "zoo"),), "all,saebench_weights", "baseline")
    assert (req.out, req.force, req.world) == (tmp_path / "out", True, world)
    # Every other field is what `evalkit run` defaults to.
    cli = RunRequest.from_args(build_parser().parse_args(["run", "--sae", str(tmp_path / "zoo")]))
    # (no_report: the demo writes report.html itself, as its own timed stage; workers: one process per core)
    assert (
        replace(
            req,
            out=cli.out,
            metrics=cli.metrics,
            autointerp=cli.autointerp,
            force=False,
            world=None,
            no_report=False,
            workers=cli.workers,
        )
        == cli
    )


def test_demo_is_a_cli_command(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["demo", "--out", "somewhere"])
    assert args.out == Path("somewhere") and args.size == "default" and callable(args.func)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.slow
def test_full_size_demo(tmp_path: Path, cache_dir: Path) -> None:
    result = run_demo(tmp_path / "out", size="default")
    for name in RUN_OUTPUTS:
        assert (result.out_dir / name).is_file(), name
    rows = _read_csv(result.out_dir / "results.csv")
    assert {r["sae_id"] for r in rows} == _zoo_ids(result.zoo_dir)
    again = run_demo(tmp_path / "out", size="default")
    assert json.loads((again.out_dir / "run.json").read_text())["execution"]["computed"] == 0
