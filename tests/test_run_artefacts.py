"""Runner -> tables -> report integration: concept_best names, the AFA per-token sample, content hashes."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from evalkit.app.request import RunRequest
from evalkit.app.run_cli import run_info
from evalkit.core.batch import ActivationBatch
from evalkit.core.io import file_stem
from evalkit.engine.outputs import SaeOutput, write_outputs
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeHandle, handle_from_sae
from evalkit.engine.runner import Runner, RunOutcome
from evalkit.engine.store import ResultStore
from metrics.afa import SAMPLE_TOKENS, TokenReservoir
from metrics.base import load_metric_modules, select_metrics
from reports.html import write_report
from reports.load import family_labels, load_run

D, N_SEQ, SEQ = 4, 8, 6
LABELS = ("noun", "verb,past", "punct")  # a comma, so the CSV must quote it
LATENT_OF_LABEL = (2, 0, 1)  # label j is carried by latent LATENT_OF_LABEL[j]; latent 3 never fires
SAE_ID = "planted/sae 1"  # characters file_stem replaces


def planted_sae(scale: float = 1.0) -> StandardSAE:
    """Identity encoder/decoder, zero biases: f = relu(x), x̂ = f."""
    sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=D, metadata=SAEMetadata(hook_name="h")))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D) * scale)
        sae.W_dec.copy_(torch.eye(D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Each token carries one label j: dimension LATENT_OF_LABEL[j] is positive, every other one negative."""
    gen = torch.Generator().manual_seed(3)
    label_BS = torch.randint(0, len(LABELS), (N_SEQ, SEQ), generator=gen)
    acts_BSD = -0.3 - torch.rand(N_SEQ, SEQ, D, generator=gen)
    latent_BS = torch.tensor(LATENT_OF_LABEL)[label_BS]
    acts_BSD.scatter_(2, latent_BS[..., None], 0.5 + torch.rand(N_SEQ, SEQ, 1, generator=gen))
    return acts_BSD, torch.nn.functional.one_hot(label_BS, len(LABELS)).bool()


def labelled_source() -> DataSource:
    acts_BSD, labels_BSL = planted_data()
    special_BS = torch.zeros(N_SEQ, SEQ, dtype=torch.bool)
    special_BS[:, 0] = True
    positions_BS = torch.arange(SEQ).expand(N_SEQ, SEQ).clone()

    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, N_SEQ, 3):
            yield ActivationBatch(
                acts_BSD[i : i + 3],
                positions_BS[i : i + 3],
                special_BS[i : i + 3],
                labels_BSL=labels_BSL[i : i + 3],
                label_names=LABELS,
            )

    return DataSource(batches, {"kind": "planted"}, hook_name="h")


def run_into(out: Path, handles: list[SaeHandle], metrics: str = "afa,concepts") -> RunOutcome:
    load_metric_modules()
    runner = Runner(ResultStore(out), EvalSettings(), select_metrics(metrics))
    outcome = runner.run(handles, {"h": labelled_source()})
    req = RunRequest(sae=tuple(h.path for h in handles), out=out)
    info = run_info(req, EvalSettings(), runner.specs, outcome, handles, [], 0.0)
    outputs = [SaeOutput(r.handle, r.hook, r.shards) for r in outcome.results]
    write_outputs(out, outputs, info, {})
    return outcome


def eval_tokens() -> torch.Tensor:
    acts_BSD, _ = planted_data()
    return acts_BSD[:, 1:].reshape(-1, D)


def test_features_csv_names_the_best_concept_and_survives_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_into(out, [handle_from_sae(planted_sae(), SAE_ID)])
    with (out / "features.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = {int(r["latent"]): r["concept_best"] for r in rows}
    assert best == {latent: LABELS[j] for j, latent in enumerate(LATENT_OF_LABEL)}  # latent 3 is dead
    assert {float(r["concept_best_f1"]) for r in rows} == {1.0}
    results = pd.read_csv(out / "results.csv")
    assert "concept_best" not in set(results["metric"])  # a features.csv column only
    assert pd.api.types.is_float_dtype(results["value"])
    before = (out / "features.csv").read_bytes()
    (out / "features.csv").unlink()
    again = run_into(out, [handle_from_sae(planted_sae(), SAE_ID)])
    assert again.computed == []  # every shard reused: the names come from the cached concepts shard
    assert (out / "features.csv").read_bytes() == before


def test_afa_sample_file_is_the_reservoir_and_reproduced_from_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_into(out, [handle_from_sae(planted_sae(), SAE_ID)])
    path = out / "afa" / f"{file_stem(SAE_ID)}.csv"
    sample = pd.read_csv(path)
    assert list(sample.columns) == ["z_norm", "ftilde_norm", "eps_lbo"]
    x_TD = eval_tokens().double()
    assert len(sample) == min(SAMPLE_TOKENS, len(x_TD))  # few tokens here: the sample is all of them
    # In stream order, with ‖f̃‖ = ‖relu(x)‖ (identity dictionary, no bias) and ε_LBO by its formula.
    z_T, c_T = x_TD.norm(dim=1), x_TD.clamp_min(0).norm(dim=1)
    np.testing.assert_allclose(sample["z_norm"], z_T.numpy(), rtol=1e-6)  # ‖x‖ is taken in float32
    np.testing.assert_allclose(sample["ftilde_norm"], c_T.numpy(), rtol=1e-6)
    eps_T = (z_T**2 - c_T**2).abs() / (3 * c_T**2)
    np.testing.assert_allclose(sample["eps_lbo"], eps_T.numpy(), rtol=1e-5)
    before = path.read_bytes()
    path.unlink()
    again = run_into(out, [handle_from_sae(planted_sae(), SAE_ID)])
    assert again.computed == [] and path.read_bytes() == before  # rewritten from the cached shard


def test_report_draws_the_afa_scatter_and_histogram_from_the_runner_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_into(out, [handle_from_sae(planted_sae(), SAE_ID)], "core,sparsity,afa,concepts")
    html = write_report(out).read_text(encoding="utf-8")
    assert 'data-plot="afa-scatter"' in html and 'data-plot="afa-eps-hist"' in html
    assert "No per-token samples" not in html
    tables = load_run(out)
    assert tables.features is not None
    assert set(tables.features["concept_best"].dropna()) == set(LABELS)


def test_reservoir_is_a_seeded_uniform_sample_in_stream_order() -> None:
    rows_NC = torch.arange(1000, dtype=torch.float64)[:, None]
    decile_hits = np.zeros(10)
    for seed in range(50):
        res = TokenReservoir(100, 1, seed)
        for chunk in rows_NC.split(64):
            res.add(chunk)
        kept = res.rows()[:, 0]
        assert kept.shape == (100,) and bool((kept.diff() > 0).all())  # distinct, in stream order
        decile_hits += np.bincount((kept // 100).long().numpy(), minlength=10)
    # 5,000 draws: each decile expects 500 (sd ≈ 21); a "first k rows" reservoir puts all in decile 0.
    assert np.all(np.abs(decile_hits - 500) < 100)
    first, same = TokenReservoir(10, 1, 7), TokenReservoir(10, 1, 7)
    first.add(rows_NC)
    same.add(rows_NC)
    assert torch.equal(first.rows(), same.rows())


def test_content_hashes_in_run_json_merge_folders(tmp_path: Path) -> None:
    # Same weights under two names in two folders: one SAE. Same name and path, other weights: two SAEs.
    run_into(tmp_path / "a", [handle_from_sae(planted_sae(), "planted", path="/saes/planted")], "afa")
    run_into(
        tmp_path / "b",
        [
            handle_from_sae(planted_sae(), "planted_copy", path="/elsewhere/copy"),
            handle_from_sae(planted_sae(2.0), "retrained", path="/saes/retrained"),
        ],
        "afa",
    )
    run_into(tmp_path / "c", [handle_from_sae(planted_sae(3.0), "planted", path="/saes/planted")], "afa")
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["saes"][0]["content_hash"] == handle_from_sae(planted_sae(), "x").content_hash
    tables = load_run(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert sorted(tables.saes.index) == ["planted", "planted@c", "retrained"]
    median = tables.sae_metrics["afa_eps_lbo_median"]
    assert median["planted"] != median["planted@c"]


def test_family_names_carry_aligned_flag_hook_and_width() -> None:
    assert handle_from_sae(planted_sae(), "x").family == f"standard|h|{D}"
    saes = pd.DataFrame(
        {
            "family": ["topk+aligned|h1|16", "topk|h1|16", "topk|h2|16", "standard", "standard"],
            "architecture": ["topk", "topk", "topk", "standard", "standard"],
            "hook": ["h1", "h1", "h2", "h1", "h2"],
            "d_sae": [16, 16, 16, 16, 16],
        }
    )
    # evalkit's names already are one family each; only a bare name spanning hooks gets `@hook`.
    assert family_labels(saes).tolist() == [
        "topk+aligned|h1|16",
        "topk|h1|16",
        "topk|h2|16",
        "standard@h1",
        "standard@h2",
    ]
