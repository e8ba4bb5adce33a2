"""Training zoo SAEs until their loss has levelled off, with the loss curve and the training facts saved.

docs/world.md's criterion: the mean training loss over the last 10% of steps is within 1% of the mean over the 10%
before. `ConvergingTrainer` is sae-lens' `SAETrainer` with two additions: it records every step's losses, and
every `check_every` steps after `min_steps` it stops once the criterion holds (or at the step budget,
recorded as not converged). The learning rate is constant, so stopping early changes nothing else about the run.
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
    """When training stops: the loss levelled off, checked every `check_every` steps from `min_steps` on."""

    min_steps: int = 300
    check_every: int = 50
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


def levelled_off(losses: Sequence[float], window: float = 0.1, tolerance: float = 0.01) -> bool:
    return window_change(losses, window) <= tolerance


class ConvergingTrainer(SAETrainer):  # type: ignore[type-arg]
    """SAETrainer that records each step's losses and stops once the loss has levelled off."""

    def __init__(
        self, cfg: SAETrainerConfig, sae: TrainingSAE[Any], data: Iterator[torch.Tensor], rule: Convergence
    ) -> None:
        super().__init__(cfg, sae, data)
        self.rule = rule
        self.curve: list[dict[str, float]] = []
        self.converged = False

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        output = super().step(batch)
        row = {"loss": float(output.loss.detach())}
        row.update({name: float(value.detach()) for name, value in output.losses.items()})
        self.curve.append(row)
        n = len(self.curve)
        if n >= self.rule.min_steps and n % self.rule.check_every == 0 and self.loss_levelled_off():
            self.converged = True
            self.cfg.total_training_samples = self.n_training_samples  # fit() ends after this step
        return output

    def loss_levelled_off(self) -> bool:
        return levelled_off([r["loss"] for r in self.curve], self.rule.window, self.rule.tolerance)

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
            "converged": self.converged,
            "criterion": f"mean loss over the last {self.rule.window:.0%} of steps within "
            f"{self.rule.tolerance:.0%} of the {self.rule.window:.0%} before",
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
    "ConvergingTrainer",
    "TRAINING_METADATA_KEY",
    "levelled_off",
    "read_curve",
    "record_training",
    "window_change",
    "write_curve",
]
