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
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from torch.optim.lr_scheduler import LambdaLR

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


def levelled_off(losses: Sequence[float], rule: Convergence = Convergence(), steps: int | None = None) -> bool:
    """The criterion with its guard: at least `rule.min_steps` steps, and the last window within tolerance.

    `losses` are evenly spaced over the `steps` trained (default: one per step)."""
    n_steps = len(losses) if steps is None else steps
    return n_steps >= rule.min_steps and window_change(losses, rule.window) <= rule.tolerance


@dataclass(frozen=True)
class LrSchedule:
    """Warm-up, hold, cosine decay to `end_factor`, then hold at `end_factor` (shares of the step budget).

    Why the final hold: under a schedule that keeps decaying to the last step, the loss keeps falling because the
    learning rate falls (top-k k=32 here: 16% between the last two 10% windows after 3,000 cosine-annealed steps),
    so the levelling-off criterion could never tell learning from annealing. Over a final stretch at one constant
    learning rate it measures whether the SAE is still learning.
    """

    warmup_steps: int = 5
    decay_start: float = 0.4
    decay_end: float = 0.7
    end_factor: float = 0.1

    def factor(self, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        start, end = self.decay_start * total, self.decay_end * total
        if step < start:
            return 1.0
        if step >= end:
            return self.end_factor
        cosine = 0.5 * (1 + math.cos(math.pi * (step - start) / max(end - start, 1)))
        return self.end_factor + (1 - self.end_factor) * cosine


PROBE_EVERY = 50
"""Steps between two evaluations of the training objective on the fixed probe tokens."""


class CurveTrainer(SAETrainer):  # type: ignore[type-arg]
    """SAETrainer that records each step's losses (training runs its whole step budget) under `LrSchedule`, and
    every PROBE_EVERY steps the training objective on fixed probe tokens (`probe_loss`), which the criterion reads.

    Why a fixed probe: on the embedded world's heavy tail the loss of one training batch varies by 35-43% (sd/mean,
    top-k k=32 and batch-top-k k=16 at 256 tokens a batch, in the final constant-rate stretch), so the mean of a
    200-step window carries 2.5-3% of noise and the 1% criterion on batch losses passes or fails by chance. On
    fixed tokens (the same for every SAE) only the weights change from one probe to the next.
    """

    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: TrainingSAE[Any],
        data: Iterator[torch.Tensor],
        rule: Convergence,
        schedule: LrSchedule,
        probe_BD: torch.Tensor,
    ) -> None:
        super().__init__(cfg, sae, data)
        total = cfg.total_training_steps
        self.lr_scheduler = LambdaLR(self.optimizer, lambda step: schedule.factor(step, total))
        self.rule = rule
        self.probe_batches = probe_BD.split(cfg.train_batch_size_samples)
        self.curve: list[dict[str, float]] = []

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        output = super().step(batch)
        row = {"loss": float(output.loss.detach())}
        row.update({name: float(value.detach()) for name, value in output.losses.items()})
        if (len(self.curve) + 1) % PROBE_EVERY == 0:
            row["probe_loss"] = self.probe_loss()
        self.curve.append(row)
        return output

    @torch.no_grad()
    def probe_loss(self) -> float:
        """The training objective (no dead-latent aux term) averaged over the probe batches; the SAE's buffers (running
        thresholds) are restored afterwards, so probing changes nothing about training."""
        buffers = {name: b.clone() for name, b in self.sae.named_buffers()}
        total = 0.0
        for batch_BD in self.probe_batches:
            step_input = TrainStepInput(batch_BD, self.get_coefficients(), None, self.n_training_steps, False)
            total += float(self.sae.training_forward_pass(step_input).loss)
        for name, b in self.sae.named_buffers():
            b.copy_(buffers[name])
        return total / len(self.probe_batches)

    def probe_losses(self) -> list[float]:
        return [r["probe_loss"] for r in self.curve if "probe_loss" in r]

    def loss_levelled_off(self) -> bool:
        return levelled_off(self.probe_losses(), self.rule, steps=len(self.curve))

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
            # None (JSON null) where a run is too short to have the value: cfg.json must stay strict JSON
            "loss_change_last_window": _finite(window_change(losses, self.rule.window)),
            "probe_loss_final": _finite(self.probe_losses()[-1]) if self.probe_losses() else None,
            "probe_loss_change_last_window": _finite(window_change(self.probe_losses(), self.rule.window)),
            "converged": self.loss_levelled_off(),
            "criterion": f"mean probe loss over the last {self.rule.window:.0%} of steps within "
            f"{self.rule.tolerance:.0%} of the {self.rule.window:.0%} before, after at least "
            f"{self.rule.min_steps} steps",
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
    "LrSchedule",
    "TRAINING_METADATA_KEY",
    "levelled_off",
    "read_curve",
    "record_training",
    "window_change",
    "write_curve",
]
