"""Training zoo SAEs for a fixed step budget, with the loss curve and the training facts saved.

docs/world.md's criterion for a loss that has levelled off: the mean training loss over the last 10% of steps is within
1% of the mean over the 10% before. It is checked once, at the end of the budget, and only counts after `min_steps`
(a guard: on this world the loss of a top-k SAE falls like a power law for thousands of steps, and between noisy
heavy-tail batches two early windows can agree by chance; one run passed at 350 steps with 3x the loss its seed
replica reached at 4000). Every SAE of one configuration, seed replicas included, trains the same number of steps,
so stability comparisons do not mix short and long runs. `CurveTrainer` is sae-lens' `SAETrainer` that records every
step's losses.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

CURVE_FILE = "training_curve.csv"
TRAINING_METADATA_KEY = "evalkit_training"
"""cfg.json metadata key holding what the SAE was trained on and for how long (a training outcome: seed groups
ignore it)."""


@dataclass(frozen=True)
class Convergence:
    """The levelling-off criterion, with its guard: a run shorter than `min_steps` has not levelled off."""

    min_steps: int = 1000
    window: float = 0.1
    """Share of the steps so far in each of the two compared windows."""
    tolerance: float = 0.01
    """Largest relative change of the mean loss between the windows."""


def window_change(losses: Sequence[float], window: float = 0.1) -> float:
    """|mean(last w) − mean(w before)| / |mean(w before)| with w = window·len (at least 1); inf if too short."""
    w = max(1, int(len(losses) * window))
    if len(losses) < 2 * w:
        return float("inf")
    last = sum(losses[-w:]) / w
    before = sum(losses[-2 * w : -w]) / w
    return abs(last - before) / max(abs(before), 1e-30)


def levelled_off(losses: Sequence[float], rule: Convergence = Convergence()) -> bool:
    """The criterion with its guard: at least `rule.min_steps` steps, and the last window within tolerance."""
    return len(losses) >= rule.min_steps and window_change(losses, rule.window) <= rule.tolerance


class CurveTrainer(SAETrainer):  # type: ignore[type-arg]
    """SAETrainer that records each step's losses (training runs its whole step budget)."""

    def __init__(
        self, cfg: SAETrainerConfig, sae: TrainingSAE[Any], data: Iterator[torch.Tensor], rule: Convergence
    ) -> None:
        super().__init__(cfg, sae, data)
        self.rule = rule
        self.curve: list[dict[str, float]] = []

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        output = super().step(batch)
        row = {"loss": float(output.loss.detach())}
        row.update({name: float(value.detach()) for name, value in output.losses.items()})
        self.curve.append(row)
        return output

    def loss_levelled_off(self) -> bool:
        return levelled_off([r["loss"] for r in self.curve], self.rule)

    def summary(self, batch_size: int, n_distinct_tokens: int) -> dict[str, object]:
        """The facts cfg.json records: steps, tokens, final loss and the criterion's value."""
        losses = [r["loss"] for r in self.curve]
        w = max(1, int(len(losses) * self.rule.window))
        return {
            "steps": len(losses),
            "batch_size": batch_size,
            "tokens_seen": len(losses) * batch_size,
            "distinct_training_tokens": n_distinct_tokens,
            "epochs": len(losses) * batch_size / max(n_distinct_tokens, 1),
            "final_loss": sum(losses[-w:]) / w,
            "loss_change_last_window": window_change(losses, self.rule.window),
            "converged": self.loss_levelled_off(),
            "criterion": f"mean loss over the last {self.rule.window:.0%} of steps within {self.rule.tolerance:.0%} "
            f"of the {self.rule.window:.0%} before, after at least {self.rule.min_steps} steps",
        }


def write_curve(curve: Sequence[dict[str, float]], folder: Path) -> None:
    """The per-step losses as CSV beside the SAE (step, loss, then each loss term)."""
    columns = sorted({k for row in curve for k in row if k != "loss"})
    with open(folder / CURVE_FILE, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", *columns])
        for step, row in enumerate(curve):
            writer.writerow([step, f"{row['loss']:.7g}", *(f"{row.get(c, float('nan')):.7g}" for c in columns)])


def read_curve(folder: Path) -> list[dict[str, float]]:
    with open(folder / CURVE_FILE, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def record_training(folder: Path, facts: dict[str, object]) -> None:
    """Add the training facts to the saved SAE's cfg.json metadata."""
    path = folder / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg.setdefault("metadata", {})[TRAINING_METADATA_KEY] = facts
    path.write_text(json.dumps(cfg, indent=2))


__all__ = [
    "CURVE_FILE",
    "Convergence",
    "CurveTrainer",
    "TRAINING_METADATA_KEY",
    "levelled_off",
    "read_curve",
    "record_training",
    "window_change",
    "write_curve",
]
