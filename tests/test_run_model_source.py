"""`evalkit run --model DIR --dataset FILE` on the small embedded world.

The hook comes from the SAE config; downstream metrics go through the model source and are checked against
direct full forward passes of the same model on the same tokens.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from evalkit.app.cli import main
from evalkit.sources.factory import open_source
from evalkit.world.build import World, build_world

N_TOKENS = 600


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(cache_dir=tmp_path_factory.mktemp("cache"), size="small")


@pytest.fixture(scope="module")
def run_dir(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StandardSAE]:
    root = tmp_path_factory.mktemp("model-run")
    torch.manual_seed(0)
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=world.d_model, d_sae=64, metadata=SAEMetadata(hook_name=world.hook_name, model_name="world")
        )
    )
    with torch.no_grad():  # a tied decoder, so the reconstruction is not hopeless
        sae.W_dec.copy_(sae.W_enc.T * 0.5)
    sae.save_model(root / "sae")
    out = root / "out"
    code = main(
        [
            "run",
            "--sae",
            str(root / "sae"),
            "--model",
            str(world.model_dir),
            "--dataset",
            str(world.eval_text_path),
            "--tokens",
            str(N_TOKENS),
            "--batch-size",
            "256",
            "--seq-len",
            str(world.seq_len),
            "--metrics",
            "core,downstream",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out, sae


def metric_values(out: Path) -> dict[str, float]:
    with open(out / "results.csv", newline="") as fh:
        return {r["metric"]: float(r["value"]) for r in csv.DictReader(fh) if r["latent"] == ""}


def direct_ce(world: World, sae: StandardSAE) -> dict[str, float]:
    """Full forward passes with a replacing hook on the same source's tokens (the first N_TOKENS kept)."""
    source = open_source(
        model=str(world.model_dir),
        hook=world.hook_name,
        dataset=str(world.eval_text_path),
        n_tokens=2 * N_TOKENS + 1024,
        batch_size=256,
        seq_len=world.seq_len,
    )
    model = source.model
    sums = {"clean": 0.0, "sae": 0.0}
    count, budget = 0, N_TOKENS
    for batch in source:
        keep = ~batch.special_BS
        flat = keep.flatten()
        keep = (flat & (flat.cumsum(0) <= budget)).reshape(keep.shape)
        budget -= int(keep.sum())

        def splice(acts: torch.Tensor, hook: object, keep: torch.Tensor = keep) -> torch.Tensor:
            out = acts.clone()
            out[keep] = sae.decode(sae.encode(acts[keep]))
            return out

        with torch.no_grad():
            clean = model(batch.tokens_BS, return_type="loss", loss_per_token=True)
            spliced = model.run_with_hooks(
                batch.tokens_BS,
                return_type="loss",
                loss_per_token=True,
                fwd_hooks=[(world.hook_name, splice)],
            )
        mask = keep[:, :-1]
        sums["clean"] += float(clean[mask].sum())
        sums["sae"] += float(spliced[mask].sum())
        count += int(mask.sum())
        if budget <= 0:
            break
    return {k: v / count for k, v in sums.items()}


def test_downstream_through_the_model_source(world: World, run_dir: tuple[Path, StandardSAE]) -> None:
    out, sae = run_dir
    got = metric_values(out)
    expected = direct_ce(world, sae)
    assert got["ce_loss_clean"] == pytest.approx(expected["clean"], rel=1e-4)
    assert got["ce_loss_sae"] == pytest.approx(expected["sae"], rel=1e-4)
    assert got["ce_loss_zero_ablation"] > got["ce_loss_clean"]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["hook"] for r in rows} == {world.hook_name}
    assert {r["n_tokens"] for r in rows} == {str(N_TOKENS)}


def test_autointerp_baseline_joins_the_outputs_and_is_cached(world: World, run_dir: tuple[Path, StandardSAE]) -> None:
    sae_dir = run_dir[0].parent / "sae"
    out = run_dir[0].parent / "out-autointerp"
    argv = [
        "run",
        "--sae",
        str(sae_dir),
        "--model",
        str(world.model_dir),
        "--dataset",
        str(world.eval_text_path),
        "--tokens",
        str(N_TOKENS),
        "--batch-size",
        "256",
        "--seq-len",
        str(world.seq_len),
        "--metrics",
        "l0",
        "--autointerp",
        "baseline",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    with open(out / "autointerp.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["sae_id"] for r in rows} == {"sae"}
    assert {"detection", "fuzzing"} <= {r["scorer"] for r in rows}
    assert "autointerp_detection_accuracy" in metric_values(out)
    assert (out / "examples" / "sae.jsonl").stat().st_size > 0
    before = {name: (out / name).read_bytes() for name in ("results.csv", "autointerp.csv")}
    (out / "examples" / "sae.jsonl").unlink()  # a cached SAE is not observed again, so nothing rewrites it
    assert main(argv) == 0
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "examples" / "sae.jsonl").exists()
