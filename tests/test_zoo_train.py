"""Zoo training until the loss levels off: the criterion on hand-made curves, a planted run that stops on it,
and top-AFA's training loss carrying its AFA term."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from evalkit.world.planted import planted_activations
from evalkit.world.zoo import AFA_COEFFICIENTS, ZooEntry, ZooSize, activation_scale, train_one, zoo_entries
from evalkit.world.zoo_train import Convergence, levelled_off, read_curve, window_change

WORLD = SimpleNamespace(model_dir=Path("planted"), hook_name="planted", fingerprint="planted")


def test_window_change_hand_cases() -> None:
    # 20 steps, windows of 2: last two mean 1.0, the two before mean 1.005 -> change 0.5% (levelled off)
    flat = [5.0] * 16 + [1.01, 1.0, 1.0, 1.0]
    assert window_change(flat) == pytest.approx(0.005 / 1.005)
    assert levelled_off(flat)
    falling = [5.0] * 16 + [1.2, 1.2, 1.0, 1.0]  # 1.2 -> 1.0: 16.7%
    assert window_change(falling) == pytest.approx(0.2 / 1.2)
    assert not levelled_off(falling)
    assert window_change([1.0]) == float("inf")  # too short for two windows


def _train(tmp_path: Path, entry: ZooEntry, zoo: ZooSize) -> tuple[dict[str, object], list[dict[str, float]]]:
    acts_ND = planted_activations(4096, d_in=32, n_features=64, heavy_frac=0.0, seed=0).acts_ND
    out = tmp_path / entry.name
    record, _ = train_one(entry, acts_ND, activation_scale(acts_ND), WORLD, zoo, out)  # type: ignore[arg-type]
    return record, read_curve(out)


def test_training_stops_once_the_loss_levels_off(tmp_path) -> None:
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100, check_every=20))
    entry = ZooEntry("topk", "unit_enc_topk", {"k": 4, "rescale_acts_by_decoder_norm": False}, 0, steps=3000)
    record, curve = _train(tmp_path, entry, zoo)
    losses = [row["loss"] for row in curve]
    assert record["converged"] is True and 100 <= record["steps"] < 3000 and record["steps"] % 20 == 0
    assert len(losses) == record["steps"] and levelled_off(losses)
    assert not levelled_off(losses[: record["steps"] - 20])  # it stopped at the first check that passed
    assert losses[-1] < 0.5 * losses[0]
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    facts = cfg["metadata"]["evalkit_training"]
    assert facts["steps"] == record["steps"] and facts["tokens_seen"] == 128 * record["steps"]
    assert facts["distinct_training_tokens"] == 4096 and facts["converged"] is True
    assert facts["final_loss"] == pytest.approx(sum(losses[-(len(losses) // 10) :]) / (len(losses) // 10))


def test_a_run_cut_by_its_budget_says_so(tmp_path) -> None:
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100, check_every=20))
    entry = ZooEntry("topk", "unit_enc_topk", {"k": 4, "rescale_acts_by_decoder_norm": False}, 0, steps=30)
    record, curve = _train(tmp_path, entry, zoo)
    assert record["converged"] is False and record["steps"] == len(curve) == 30


def test_topafa_zoo_entries_train_with_their_afa_loss(tmp_path) -> None:
    """The zoo sweeps top-AFA's AFA coefficient (never 0, the reference config's 'off'), and each step's loss is
    MSE + aux + the AFA term, which is coefficient·d_in·mean((‖f‖ − ‖x‖)²) > 0."""
    topafa = [e for e in zoo_entries(1024) if e.architecture == "topafa"]
    coefficients = sorted(e.params["afa_loss_coefficient"] for e in topafa)
    assert len(coefficients) >= 3 and coefficients == sorted(AFA_COEFFICIENTS) and min(coefficients) > 0
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100, check_every=20))
    entry = ZooEntry("topafa", "topafa", {"afa_loss_coefficient": 1 / 16}, 0, steps=10)
    _, curve = _train(tmp_path, entry, zoo)
    for row in curve:
        assert row["afa_loss"] > 0
        terms = row["mse_loss"] + row["auxiliary_reconstruction_loss"] + row["afa_loss"]
        assert row["loss"] == pytest.approx(terms, rel=1e-5)
