"""Zoo training: the levelling-off criterion and its guard on hand-made curves, a planted run recording its curve and
the criterion, seed replicas training equal steps, and top-AFA's training loss carrying its AFA term."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from evalkit.world.planted import planted_activations
from evalkit.world.zoo import activation_scale, train_one
from evalkit.world.zoo_recipe import AFA_COEFFICIENTS, ZooEntry, ZooSize, zoo_entries
from evalkit.world.zoo_train import Convergence, LrSchedule, levelled_off, read_curve, window_change

WORLD = SimpleNamespace(model_dir=Path("planted"), hook_name="planted", fingerprint="planted")


NO_GUARD = Convergence(min_steps=0)


def test_window_change_hand_cases() -> None:
    # 20 steps, windows of 2: last two mean 1.0, the two before mean 1.005 -> change 0.5% (levelled off)
    flat = [5.0] * 16 + [1.01, 1.0, 1.0, 1.0]
    assert window_change(flat) == pytest.approx(0.005 / 1.005)
    assert levelled_off(flat, NO_GUARD)
    falling = [5.0] * 16 + [1.2, 1.2, 1.0, 1.0]  # 1.2 -> 1.0: 16.7%
    assert window_change(falling) == pytest.approx(0.2 / 1.2)
    assert not levelled_off(falling, NO_GUARD)
    assert window_change([1.0]) == float("inf")  # too short for two windows


def test_the_guard_rejects_an_early_plateau() -> None:
    """A power-law curve L = t^-0.5 with a flat stretch from step 280 to 350 (noise between heavy-tail batches):
    the bare criterion passes at 350 steps; the guard (at least min_steps) does not, and the full curve, still
    falling 5% per window at 2,000 steps, has not levelled off either. A curve that flattens out does."""
    power = [(t + 1) ** -0.5 for t in range(2000)]
    plateau = power[:280] + [power[279]] * 70
    assert window_change(plateau) < 0.01 and levelled_off(plateau, NO_GUARD)
    assert not levelled_off(plateau)  # default guard: 1,000 steps
    assert Convergence().min_steps == 1000 and not levelled_off(power)
    assert window_change(power) == pytest.approx(1 - (1900 / 1700) ** -0.5, abs=0.002)  # window midpoints
    flattening = [1.0 + 10 * math.exp(-t / 100) for t in range(1500)]
    assert levelled_off(flattening)


def test_lr_schedule_holds_constant_over_the_windows_the_criterion_compares() -> None:
    """Warm-up, hold, cosine decay between 40% and 70% of the budget, then a hold at a tenth: the last 20% of steps
    (the criterion's two windows) run at one learning rate, so a fall there is learning, not annealing."""
    schedule = LrSchedule()
    factors = [schedule.factor(step, 1000) for step in range(1000)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == 1.0 and factors[399] == 1.0
    assert factors[550] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert set(factors[700:]) == {0.1}
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def _train(tmp_path: Path, entry: ZooEntry, zoo: ZooSize) -> tuple[dict[str, object], list[dict[str, float]]]:
    acts_ND = planted_activations(4096, d_in=32, n_features=64, heavy_frac=0.0, seed=0).acts_ND
    out = tmp_path / entry.name
    record, _ = train_one(entry, acts_ND, activation_scale(acts_ND), WORLD, zoo, out)  # type: ignore[arg-type]
    return record, read_curve(out)


def test_training_runs_its_budget_and_records_the_criterion(tmp_path) -> None:
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100))
    entry = ZooEntry("topk", "unit_enc_topk", {"k": 4, "rescale_acts_by_decoder_norm": False}, 0, steps=400)
    record, curve = _train(tmp_path, entry, zoo)
    losses = [row["loss"] for row in curve]
    assert record["steps"] == len(losses) == 400  # no early stop: every SAE of a configuration trains its budget
    probes = [row["probe_loss"] for row in curve if not math.isnan(row["probe_loss"])]
    assert [i for i, row in enumerate(curve) if not math.isnan(row["probe_loss"])] == list(range(49, 400, 50))
    assert record["converged"] == levelled_off(probes, zoo.convergence, steps=400)
    assert (
        probes[-1] < 0.5 * losses[0]
        and probes[-1] < probes[0]
        and record["probe_loss_final"] == pytest.approx(probes[-1], rel=1e-5)
    )
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    facts = cfg["metadata"]["evalkit_training"]
    assert facts["steps"] == 400 and facts["tokens_seen"] == 128 * 400
    assert facts["distinct_training_tokens"] == 4096 and facts["converged"] == record["converged"]
    assert facts["final_loss"] == pytest.approx(sum(losses[-40:]) / 40, rel=1e-5)  # the curve keeps 7 digits
    assert facts["loss_change_last_window"] == pytest.approx(window_change(losses), rel=1e-3)


def test_a_run_shorter_than_the_guard_has_not_levelled_off(tmp_path) -> None:
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100))
    entry = ZooEntry("topk", "unit_enc_topk", {"k": 4, "rescale_acts_by_decoder_norm": False}, 0, steps=30)
    record, curve = _train(tmp_path, entry, zoo)
    assert record["converged"] is False and record["steps"] == len(curve) == 30
    # too short for a probe or two windows: those facts are null, and cfg.json stays strict JSON (SAEBench's writer
    # refuses inf/nan)
    text = (tmp_path / "topk" / "cfg.json").read_text()
    facts = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in cfg.json"))
    facts = facts["metadata"]["evalkit_training"]
    assert facts["probe_loss_final"] is None and facts["probe_loss_change_last_window"] is None


def test_seed_replicas_train_the_same_number_of_steps() -> None:
    """Every configuration's seeds (same architecture and parameters) share one step budget, so stability compares
    SAEs trained equally long."""
    groups: dict[str, list[ZooEntry]] = {}
    for e in zoo_entries(1024):
        groups.setdefault(e.architecture + json.dumps(e.params, sort_keys=True), []).append(e)
    replicated = [g for g in groups.values() if len(g) >= 3]
    assert len(replicated) >= 3 and all(len({e.seed for e in g}) == len(g) for g in replicated)
    assert all(len({e.steps for e in g}) == 1 for g in groups.values())


def test_topafa_zoo_entries_train_with_their_afa_loss(tmp_path) -> None:
    """The zoo sweeps top-AFA's AFA coefficient (never 0, the reference config's 'off'), and each step's loss is
    MSE + aux + the AFA term, which is coefficient·d_in·mean((‖f‖ − ‖x‖)²) > 0."""
    topafa = [e for e in zoo_entries(1024) if e.architecture == "topafa"]
    coefficients = sorted(e.params["afa_loss_coefficient"] for e in topafa)
    assert len(coefficients) >= 3 and coefficients == sorted(AFA_COEFFICIENTS) and min(coefficients) > 0
    zoo = ZooSize(d_sae_multiple=2, batch_size=128, convergence=Convergence(min_steps=100))
    entry = ZooEntry("topafa", "topafa", {"afa_loss_coefficient": 1 / 16}, 0, steps=10)
    _, curve = _train(tmp_path, entry, zoo)
    for row in curve:
        assert row["afa_loss"] > 0
        terms = row["mse_loss"] + row["auxiliary_reconstruction_loss"] + row["afa_loss"]
        assert row["loss"] == pytest.approx(terms, rel=1e-5)
