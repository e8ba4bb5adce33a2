"""The offline path (`--autointerp baseline`) on planted latents with known answers.

The planted world (random words; latent k fires exactly on word k) is also used by test_autointerp_llm.py.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers.planted_autointerp import N_PLANTED, RARE_LATENT, VOCAB, decode, planted_examples

from autointerp.config import AutointerpConfig
from autointerp.judges import BaselineJudge, Question, Snippet, matching_snippets, named_tokens, quote_token
from autointerp.pipeline import CONTROL, config_for_mode, example_records, run_autointerp
from autointerp.prompts import parse_explanation, parse_selection, parse_simulation, render_window
from autointerp.scorers import balanced_accuracy
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError


@pytest.fixture(scope="module")
def baseline_result():
    config = config_for_mode("baseline", scorers=("detection", "fuzzing", "simulation"))
    assert config is not None
    examples = planted_examples(config)
    return examples, run_autointerp(examples, decode, config, cache_dir=None)


def _rows(result, scorer: str) -> dict[int, object]:
    return {r.latent: r for r in result.rows if r.scorer == scorer}


def test_planted_cat_latent_is_named_and_detected_perfectly(baseline_result) -> None:
    _, result = baseline_result
    assert result.explanations[0].text == 'the tokens "cat"'
    detection, fuzzing = _rows(result, "detection")[0], _rows(result, "fuzzing")[0]
    assert detection.status == "ok" and detection.score == 1.0 and detection.accuracy == 1.0
    assert fuzzing.status == "ok" and fuzzing.score == 1.0
    assert 0 < detection.positive_fraction < 1  # both classes present, so balanced accuracy is meaningful
    for k in range(N_PLANTED):
        assert result.explanations[k].text == f'the tokens "{VOCAB[k + 1]}"'
        assert _rows(result, "detection")[k].score == 1.0
        assert _rows(result, "simulation")[k].score > 0.9  # 10 on the word, 0 elsewhere vs 1-2 on the word


def test_shuffled_control_is_near_chance(baseline_result) -> None:
    _, result = baseline_result
    control = [r for r in result.rows if r.scorer == CONTROL]
    assert len(control) == N_PLANTED
    assert all(r.explanation != result.explanations[r.latent].text for r in control)
    mean = sum(r.score for r in control) / len(control)
    assert 0.3 < mean < 0.7, mean
    metrics = {(m.metric, m.latent): m.value for m in result.metrics}
    assert metrics[("autointerp_detection_balanced_accuracy", None)] == 1.0
    assert metrics[("autointerp_detection_balanced_accuracy_shuffled", None)] == pytest.approx(mean)
    assert metrics[("autointerp_scored_latents", None)] == N_PLANTED
    assert metrics[("autointerp_parse_failures", None)] == 0
    assert metrics[("autointerp_detection_balanced_accuracy", 0)] == 1.0


def test_insufficient_and_dead_latents_are_reported_not_dropped(baseline_result) -> None:
    examples, result = baseline_result
    assert examples[RARE_LATENT].status == "insufficient_examples"
    assert RARE_LATENT not in {r.latent for r in result.rows}  # not sampled: only eligible latents are
    metrics = {m.metric: m.value for m in result.metrics if m.latent is None}
    assert metrics["autointerp_insufficient_latents"] == 1
    config = config_for_mode("baseline", latents=(0, 10, RARE_LATENT))
    explicit = run_autointerp(examples, decode, config, cache_dir=None)
    by_latent = {(r.latent, r.scorer): r for r in explicit.rows}
    for latent in (10, RARE_LATENT):
        for scorer in ("detection", "fuzzing"):
            row = by_latent[(latent, scorer)]
            assert row.status == "insufficient_examples" and row.score is None and row.reason
    assert by_latent[(0, "detection")].score == 1.0


def test_unknown_mode_and_scorer_are_input_errors() -> None:
    with pytest.raises(EvalkitInputError, match="unknown mode"):
        config_for_mode("gpt")
    assert config_for_mode("off") is None
    config = config_for_mode("baseline", scorers=("detecton",))
    with pytest.raises(EvalkitInputError, match="did you mean detection"):
        run_autointerp({}, decode, config, cache_dir=None)


def test_balanced_accuracy_by_hand() -> None:
    assert balanced_accuracy([True, True, False, False, False, False], [True, False, False, False, False, True]) == (
        pytest.approx((1 / 2 + 3 / 4) / 2)
    )
    # answering "none" on 4 positives + 10 negatives: accuracy 10/14, balanced accuracy 0.5
    assert balanced_accuracy([True] * 4 + [False] * 10, [False] * 14) == 0.5


def test_baseline_judge_matches_named_tokens_only() -> None:
    assert named_tokens('the tokens "cat", ","') == {"cat", ","}
    assert named_tokens("mentions of the word Paris") == {"paris"}
    tricky = ['"', "\\", ",", "it's"]
    assert named_tokens("the tokens " + ", ".join(quote_token(t) for t in tricky)) == set(tricky)
    snippets = [Snippet(("a", "cat", "sat")), Snippet(("a", "dog", "sat"), (False, True, False))]
    assert matching_snippets('the tokens "dog"', snippets, highlighted_only=False) == {1}
    assert matching_snippets('the tokens "sat"', snippets, highlighted_only=True) == set()  # present, not marked
    # The judge answers any scorer's question with the question's own offline answer; one call, no task names.
    question = Question([], lambda reply: None, lambda: frozenset({7}), ("any", "explanation"))
    verdict = asyncio.run(BaselineJudge().ask(question))
    assert verdict.status is Status.OK and verdict.answer == {7} and verdict.prompt_hash


def test_prompt_rendering_and_parsers() -> None:
    assert render_window(["the", "big", "cat", "sat"], [False, True, True, False]) == "the <<big cat>> sat"
    assert render_window(["The", " cat", "s", "!"], [False, True, True, False]) == "The <<cats>>!"
    assert parse_explanation("Explanation: the word cat") == "the word cat"
    assert parse_explanation("Explanation: " + "word " * 21) is None
    assert parse_explanation("I think\nit is about cats") is None
    assert parse_selection("Answer: 2, 5", 6) == {1, 4}
    assert parse_selection("Answer: none", 6) == set()
    assert parse_selection("Answer: 7", 6) is None
    assert parse_selection("Snippets 1 and 3 match", 6) is None
    assert parse_simulation("Snippet 1: [0, 10]\nSnippet 2: [3]", [2, 1]) == [[0.0, 10.0], [3.0]]
    assert parse_simulation("Snippet 1: [0, 10]", [2, 1]) is None


def test_example_records_match_the_report_format(baseline_result) -> None:
    examples, _ = baseline_result
    records = example_records({0: examples[0]}, decode)
    assert len(records) == 10 + 5 + 2 + 2 + 10  # explain top + iw, held-out top + iw, random
    top = [r for r in records if r["kind"] == "top"]
    assert top and all("cat" in r["tokens"] and len(r["tokens"]) == len(r["activations"]) for r in top)


def test_config_fingerprint_tracks_settings() -> None:
    base = AutointerpConfig()
    assert base.fingerprint() == AutointerpConfig().fingerprint()
    assert base.fingerprint() != AutointerpConfig(base_url="http://127.0.0.1:1/v1").fingerprint()
    with pytest.raises(EvalkitInputError, match="window"):
        AutointerpConfig(window=0)
