"""Scorers: build labelled items from a latent's held-out windows, ask a judge, turn its answer into a score.

- detection: held-out active windows + random windows, shuffled, no highlighting; accuracy, balanced accuracy
  and the share of positives (a judge answering "none" gets accuracy = share of negatives, balanced accuracy
  0.5).
- fuzzing: held-out active windows highlighted on their active tokens (positives) and the same windows
  highlighted on as many randomly chosen inactive tokens (negatives); balanced accuracy.
- simulation: per-token 0-10 predictions on held-out and random windows; Pearson correlation with the true
  activations, pooled over windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from autointerp.explainers import Decode
from autointerp.judges import Judge, Snippet, Verdict
from autointerp.sampling import LatentExamples, Window
from evalkit.core.registry import Registry


@dataclass(frozen=True)
class Score:
    """One (latent, scorer) outcome; `score` is None whenever status is not ok."""

    scorer: str
    status: str
    score: float | None = None
    accuracy: float | None = None
    positive_fraction: float | None = None
    n_items: int = 0
    prompt_hash: str = ""
    reason: str = ""
    parse_failures: int = 0


class Scorer(Protocol):
    async def score(
        self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int
    ) -> Score: ...


SCORERS: Registry[Scorer] = Registry("autointerp scorer")


def _rng(seed: int, latent: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, latent, salt])


def balanced_accuracy(labels: list[bool], predicted: list[bool]) -> float:
    """Mean of the recalls of the classes present (sklearn's definition)."""
    recalls = []
    for cls in (True, False):
        idx = [k for k, y in enumerate(labels) if y == cls]
        if idx:
            recalls.append(sum(predicted[k] == cls for k in idx) / len(idx))
    return float(np.mean(recalls))


def _failed(name: str, verdict: Verdict) -> Score:
    return Score(
        name,
        verdict.status,
        prompt_hash=verdict.prompt_hash,
        reason=verdict.reason,
        parse_failures=verdict.parse_failures,
    )


def _classification(name: str, labels: list[bool], verdict: Verdict) -> Score:
    if verdict.selected is None:
        return _failed(name, verdict)
    predicted = [k in verdict.selected for k in range(len(labels))]
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))
    return Score(
        name,
        "ok",
        balanced_accuracy(labels, predicted),
        accuracy,
        float(np.mean(labels)),
        len(labels),
        verdict.prompt_hash,
    )


def _snippet(window: Window, decode: Decode, highlight: list[bool] | None = None) -> Snippet:
    return Snippet(tuple(decode(list(window.tokens))), tuple(highlight) if highlight is not None else None)


class DetectionScorer:
    name = "detection"

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        items = [(w, True) for w in examples.held_out]
        items += [(w, any(w.active(examples.threshold))) for w in examples.random]
        order = _rng(seed, examples.latent, 11).permutation(len(items)).tolist()
        items = [items[k] for k in order]
        verdict = await judge.select("detection", explanation, [_snippet(w, decode) for w, _ in items])
        return _classification(self.name, [y for _, y in items], verdict)


def _random_highlight(window: Window, threshold: float, rng: np.random.Generator) -> list[bool] | None:
    active = window.active(threshold)
    inactive = [j for j, on in enumerate(active) if not on]
    n_mark = min(max(1, sum(active)), len(inactive))
    if n_mark == 0:
        return None
    marked = set(rng.choice(inactive, size=n_mark, replace=False).tolist())
    return [j in marked for j in range(len(active))]


class FuzzingScorer:
    name = "fuzzing"

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        rng = _rng(seed, examples.latent, 12)
        items: list[tuple[Snippet, bool]] = []
        for w in examples.held_out:
            items.append((_snippet(w, decode, list(w.active(examples.threshold))), True))
            wrong = _random_highlight(w, examples.threshold, rng)
            if wrong is not None:
                items.append((_snippet(w, decode, wrong), False))
        items = [items[k] for k in rng.permutation(len(items)).tolist()]
        verdict = await judge.select("fuzzing", explanation, [s for s, _ in items])
        return _classification(self.name, [y for _, y in items], verdict)


class SimulationScorer:
    name = "simulation"

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        windows = [*examples.held_out, *examples.random]
        verdict = await judge.simulate(explanation, [_snippet(w, decode) for w in windows])
        if verdict.predictions is None:
            return _failed(self.name, verdict)
        pred = np.concatenate([np.asarray(p, dtype=float) for p in verdict.predictions])
        true = np.concatenate([np.asarray(w.acts, dtype=float) for w in windows])
        if pred.std() == 0 or true.std() == 0:  # no information in a constant prediction: correlation 0
            return Score(
                self.name,
                "ok",
                0.0,
                n_items=len(windows),
                prompt_hash=verdict.prompt_hash,
                reason="constant prediction or activation",
            )
        return Score(
            self.name,
            "ok",
            float(np.corrcoef(pred, true)[0, 1]),
            n_items=len(windows),
            prompt_hash=verdict.prompt_hash,
        )


SCORERS.add("detection", DetectionScorer())
SCORERS.add("fuzzing", FuzzingScorer())
SCORERS.add("simulation", SimulationScorer())
