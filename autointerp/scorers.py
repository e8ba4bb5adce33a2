"""Scorers: build labelled items from a latent's held-out windows, ask a judge one question, score its answer.

Each scorer owns its prompt (system text and message layout), the parser of the reply, its offline answer, and
declares the results.csv metrics it produces (`produces`: Score attribute -> metric name), so a new scorer is one
class and one registration here.

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
from autointerp.judges import (
    Judge,
    Question,
    Snippet,
    Verdict,
    matching_snippets,
    named_token_predictions,
)
from autointerp.pools import Window
from autointerp.prompts import Message, numbered, parse_selection, parse_simulation, render_window
from autointerp.sampling import LatentExamples
from autointerp.status import Status
from evalkit.core.registry import Registry


@dataclass(frozen=True)
class Score:
    """One (latent, scorer) outcome; `score` is None whenever status is not ok."""

    scorer: str
    status: Status
    score: float | None = None
    accuracy: float | None = None
    positive_fraction: float | None = None
    n_items: int = 0
    prompt_hash: str = ""
    reason: str = ""
    parse_failures: int = 0


class Scorer(Protocol):
    name: str
    produces: tuple[tuple[str, str], ...]
    """(Score attribute, results.csv metric name) pairs: SAE-level mean and std of each, per-latent values of the
    first (the scorer's headline score)."""

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


def _failed(name: str, verdict: Verdict[object]) -> Score:
    return Score(
        name,
        verdict.status,
        prompt_hash=verdict.prompt_hash,
        reason=verdict.reason,
        parse_failures=verdict.parse_failures,
    )


async def _selection_score(
    name: str,
    explanation: str,
    snippets: list[Snippet],
    labels: list[bool],
    messages: list[Message],
    judge: Judge,
    highlighted_only: bool,
) -> Score:
    """Ask which snippets match and score the selection against the labels. `highlighted_only`: the offline
    answer judges the marked tokens only (fuzzing) rather than any token (detection)."""
    question = Question(
        messages,
        lambda reply: parse_selection(reply, len(snippets)),
        lambda: matching_snippets(explanation, snippets, highlighted_only=highlighted_only),
        (name, explanation, snippets),
    )
    return _classification(name, labels, await judge.ask(question))


def _classification(name: str, labels: list[bool], verdict: Verdict[frozenset[int]]) -> Score:
    if verdict.answer is None:
        return _failed(name, verdict)
    predicted = [k in verdict.answer for k in range(len(labels))]
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))
    return Score(
        name,
        Status.OK,
        balanced_accuracy(labels, predicted),
        accuracy,
        float(np.mean(labels)),
        len(labels),
        verdict.prompt_hash,
    )


def _snippet(window: Window, decode: Decode, highlight: list[bool] | None = None) -> Snippet:
    return Snippet(tuple(decode(list(window.tokens))), tuple(highlight) if highlight is not None else None)


def _described(system: str, explanation: str, body: str) -> list[Message]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Description: {explanation}\n\n{body}"},
    ]


# ----------------------------------------------------------------------------------------------------- detection

DETECTION_SYSTEM = (
    "You check a description of a text pattern against numbered snippets. For each snippet decide "
    "whether it contains text that the description applies to. Reply on one line starting with "
    "'Answer:' followed by the numbers of the matching snippets separated by commas, or 'Answer: "
    "none' if no snippet matches. No other text."
)


def detection_messages(explanation: str, snippets: list[str]) -> list[Message]:
    return _described(DETECTION_SYSTEM, explanation, numbered(snippets))


class DetectionScorer:
    name = "detection"
    produces = (
        ("score", "autointerp_detection_balanced_accuracy"),
        ("accuracy", "autointerp_detection_accuracy"),
        ("positive_fraction", "autointerp_detection_positive_fraction"),
    )

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        items = [(w, True) for w in examples.held_out]
        items += [(w, any(w.active(examples.threshold))) for w in examples.random]
        order = _rng(seed, examples.latent, 11).permutation(len(items)).tolist()
        items = [items[k] for k in order]
        snippets = [_snippet(w, decode) for w, _ in items]
        messages = detection_messages(explanation, [render_window(list(s.tokens)) for s in snippets])
        return await _selection_score(
            self.name, explanation, snippets, [y for _, y in items], messages, judge, highlighted_only=False
        )


# ------------------------------------------------------------------------------------------------------- fuzzing

FUZZING_SYSTEM = (
    "You check a description of a text pattern against numbered snippets in which some tokens are "
    "wrapped in <<double angle brackets>>. For each snippet decide whether the marked tokens are ones "
    "the description applies to. Reply on one line starting with 'Answer:' followed by the numbers of "
    "the snippets whose marked tokens match, separated by commas, or 'Answer: none'. No other text."
)


def fuzzing_messages(explanation: str, snippets: list[str]) -> list[Message]:
    return _described(FUZZING_SYSTEM, explanation, numbered(snippets))


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
    produces = (("score", "autointerp_fuzzing_balanced_accuracy"),)

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        rng = _rng(seed, examples.latent, 12)
        items: list[tuple[Snippet, bool]] = []
        for w in examples.held_out:
            items.append((_snippet(w, decode, list(w.active(examples.threshold))), True))
            wrong = _random_highlight(w, examples.threshold, rng)
            if wrong is not None:
                items.append((_snippet(w, decode, wrong), False))
        items = [items[k] for k in rng.permutation(len(items)).tolist()]
        snippets = [s for s, _ in items]
        messages = fuzzing_messages(
            explanation, [render_window(list(s.tokens), list(s.highlight or ())) for s in snippets]
        )
        return await _selection_score(
            self.name, explanation, snippets, [y for _, y in items], messages, judge, highlighted_only=True
        )


# ---------------------------------------------------------------------------------------------------- simulation

SIMULATION_SYSTEM = (
    "You predict how strongly a unit of a neural network responds to each token of some text "
    "snippets, given a description of what the unit responds to. Each snippet is given as a numbered "
    "list of tokens. For every snippet reply with one line 'Snippet N: ' followed by a JSON list of "
    "integers from 0 (no response) to 10 (strongest response), one per token, in order. No other "
    "text."
)


def simulation_messages(explanation: str, token_lists: list[list[str]]) -> list[Message]:
    blocks = [f"Snippet {k + 1}: {[t for t in toks]!r}" for k, toks in enumerate(token_lists)]
    return _described(SIMULATION_SYSTEM, explanation, "\n".join(blocks))


def _parsed_predictions(reply: str, lengths: list[int]) -> tuple[tuple[float, ...], ...] | None:
    preds = parse_simulation(reply, lengths)
    return None if preds is None else tuple(tuple(p) for p in preds)


class SimulationScorer:
    name = "simulation"
    produces = (("score", "autointerp_simulation_correlation"),)

    async def score(self, examples: LatentExamples, explanation: str, judge: Judge, decode: Decode, seed: int) -> Score:
        windows = [*examples.held_out, *examples.random]
        snippets = [_snippet(w, decode) for w in windows]
        question = Question(
            simulation_messages(explanation, [list(s.tokens) for s in snippets]),
            lambda reply: _parsed_predictions(reply, [len(s.tokens) for s in snippets]),
            lambda: named_token_predictions(explanation, snippets),
            ("simulation", explanation, snippets),
            long_reply=True,
        )
        verdict = await judge.ask(question)
        if verdict.answer is None:
            return _failed(self.name, verdict)
        pred = np.concatenate([np.asarray(p, dtype=float) for p in verdict.answer])
        true = np.concatenate([np.asarray(w.acts, dtype=float) for w in windows])
        if pred.std() == 0 or true.std() == 0:  # no information in a constant prediction: correlation 0
            return Score(
                self.name,
                Status.OK,
                0.0,
                n_items=len(windows),
                prompt_hash=verdict.prompt_hash,
                reason="constant prediction or activation",
            )
        return Score(
            self.name,
            Status.OK,
            float(np.corrcoef(pred, true)[0, 1]),
            n_items=len(windows),
            prompt_hash=verdict.prompt_hash,
        )


SCORERS.add("detection", DetectionScorer())
SCORERS.add("fuzzing", FuzzingScorer())
SCORERS.add("simulation", SimulationScorer())
