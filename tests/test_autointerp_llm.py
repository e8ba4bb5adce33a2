"""The LLM path against a real chat-completions server on 127.0.0.1 (tests/helpers/llm_server.py), faults included.

The server's "model" is a scripted rule: it names the most frequent highlighted word, and selects the snippets
that contain (detection) or highlight (fuzzing) the described word. On the planted world that rule is right,
so every latent the faults leave alone must score exactly 1.
"""

from __future__ import annotations

import asyncio
import csv
import email.utils
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.llm_server import Fault, LLMServer
from helpers.planted_autointerp import N_PLANTED, VOCAB, decode, planted_examples
from helpers.scripted_llm import EXPLAIN_SYSTEM, KEY, MODEL, llm_config, scripted_llm

from autointerp.client import LLMClient, LLMRequestError, _retry_after_seconds
from autointerp.config import AutointerpConfig
from autointerp.pipeline import CONTROL, run_autointerp


@pytest.fixture(scope="module")
def examples():
    return planted_examples(AutointerpConfig())


def _by(result, scorer: str) -> dict[int, Any]:
    return {r.latent: r for r in result.rows if r.scorer == scorer}


def test_clean_run_scores_planted_latents_and_rerun_sends_nothing(examples, tmp_path) -> None:
    with LLMServer(scripted_llm) as srv:
        config = llm_config(srv.base_url)
        first = run_autointerp(examples, decode, config, tmp_path / "cache")
        per_latent = 4  # explanation, detection, fuzzing, shuffled control
        assert srv.n_requests == N_PLANTED * per_latent
        assert all(b["temperature"] == 0 and b["seed"] == 0 and b["model"] == MODEL for b in srv.log.bodies)
        for k in range(N_PLANTED):
            assert first.explanations[k].text == f"the word {VOCAB[k + 1]}"
            assert _by(first, "detection")[k].score == 1.0 and _by(first, "fuzzing")[k].score == 1.0
        assert first.usage.prompt_tokens == srv.log.prompt_tokens  # usage comes from the server's replies
        second = run_autointerp(examples, decode, config, tmp_path / "cache")
        assert srv.n_requests == N_PLANTED * per_latent  # every reply came from the disk cache
        assert second.sent.cache_hits == N_PLANTED * per_latent and second.sent.requests == 0
        # The results report what they took, wherever the replies came from (issue #14: resume == uninterrupted).
        assert second.usage.requests == first.usage.requests == N_PLANTED * per_latent
        assert second.usage.cost_usd == first.usage.cost_usd
        assert [r.as_dict() for r in second.rows] == [r.as_dict() for r in first.rows]


def test_simulation_scorer_parses_per_token_predictions(examples) -> None:
    with LLMServer(scripted_llm) as srv:
        config = llm_config(srv.base_url, scorers=("simulation",), shuffled_control=False, latents=(0, 1))
        result = run_autointerp(examples, decode, config, None)
        assert srv.n_requests == 4
    for row in result.rows:
        assert row.scorer == "simulation" and row.status == "ok" and row.score > 0.9, row


def test_faults_are_retried_or_marked_and_the_run_finishes(examples, tmp_path) -> None:
    fuzzing = "marked tokens"
    faults = [
        Fault("429", match=("<<cat>>",), retry_after="1"),
        Fault("500", match=("<<dog>>",)),
        Fault("slow", match=("<<red>>",), sleep_s=3.0),  # past the 1 s timeout
        Fault("malformed", match=("<<blue>>",)),
        Fault("text", match=("<<seven>>",), text="Hard to say.\nMaybe numbers, maybe not."),
        Fault("400", match=("Description: the word june", fuzzing)),
        Fault("500", times=99, match=("Description: the word paris", fuzzing)),
        Fault("text", match=("Description: the word happy", fuzzing), text="Snippets 1 and 2 look right"),
    ]
    with LLMServer(scripted_llm, faults) as srv:
        config = llm_config(srv.base_url, timeout_s=1.0)
        result = run_autointerp(examples, decode, config, tmp_path / "cache")
        bodies = srv.log.bodies
    detection, fuzz = _by(result, "detection"), _by(result, "fuzzing")
    for k, word in enumerate(VOCAB[1 : N_PLANTED + 1]):
        if word == "seven":  # explanation off-format: no score at all, reason kept
            assert result.explanations[k].status == "parse_failure"
            assert detection[k].status == fuzz[k].status == "parse_failure" and detection[k].score is None
            assert "explainer: unparsable reply" in detection[k].reason
            continue
        assert detection[k].score == 1.0, (word, detection[k])
        if word == "june":
            assert fuzz[k].status == "llm_error" and "HTTP 400" in fuzz[k].reason and fuzz[k].score is None
        elif word == "paris":
            assert fuzz[k].status == "llm_error" and "HTTP 500 (after 3 attempts)" in fuzz[k].reason
        elif word == "happy":
            assert fuzz[k].status == "parse_failure" and fuzz[k].parse_failures == 1
        else:
            assert fuzz[k].score == 1.0, (word, fuzz[k])
    metrics = {m.metric: m.value for m in result.metrics if m.latent is None}
    assert metrics["autointerp_parse_failures"] == 2
    assert metrics["autointerp_llm_errors"] == 2
    assert metrics["autointerp_scored_latents"] == N_PLANTED - 1
    # 4 per latent; the "seven" latent stops after its explanation and is nobody's control partner;
    # +1 retry each for 429, 500, timeout, malformed; +2 retries for the 500 that never ends; 400 not retried.
    n_control = N_PLANTED - 1
    assert len(bodies) == (N_PLANTED - 1) * 3 + 1 + n_control + 4 + 2
    explain = [
        (t, b) for t, b in zip(srv.log.times, bodies, strict=True) if b["messages"][0]["content"] == EXPLAIN_SYSTEM
    ]
    cat = [t for t, b in explain if "<<cat>>" in b["messages"][-1]["content"]]
    assert len(cat) == 2 and cat[1] - cat[0] >= 0.95  # Retry-After: 1 honoured


def test_cost_cap_stops_cleanly_and_a_rerun_finishes_the_rest(examples, tmp_path) -> None:
    with LLMServer(scripted_llm) as srv:
        capped = llm_config(srv.base_url, concurrency=1, max_cost_usd=1.0)
        first = run_autointerp(examples, decode, capped, tmp_path / "cache")
        assert first.stop_reason is not None and first.stop_reason.startswith("cost cap reached")
        sent = srv.n_requests
        assert sent == first.usage.requests and 1 <= sent < N_PLANTED
        assert first.usage.cost_usd >= 1.0
        assert first.stop_status == "budget_exhausted" and first.input_error() is None
        done = [e for e in first.explanations.values() if e.status == "ok"]
        assert len(done) == sent  # every request that was sent produced a kept explanation
        stopped = [r for r in first.rows if r.status == "budget_exhausted"]
        assert stopped and all(r.score is None for r in stopped)
        assert not any(r.status == "ok" for r in first.rows)  # scoring came after the cap: nothing faked
        second = run_autointerp(examples, decode, llm_config(srv.base_url), tmp_path / "cache")
        assert second.stop_reason is None
        assert srv.n_requests - sent == N_PLANTED * 4 - sent  # finished explanations were not re-sent
        assert all(r.score == 1.0 for r in second.rows if r.scorer != CONTROL)


def test_request_cap_and_bounded_concurrency(examples, tmp_path) -> None:
    with LLMServer(scripted_llm, reply_delay_s=0.15) as srv:
        result = run_autointerp(examples, decode, llm_config(srv.base_url, concurrency=3, max_requests=7), None)
        assert srv.n_requests == 7 and result.stop_reason == "request cap reached (7 requests)"
        assert srv.log.max_in_flight == 3


def test_unreachable_endpoint_is_named_and_nothing_crashes(examples) -> None:
    url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    result = run_autointerp(examples, decode, llm_config(url, max_retries=1), None)
    assert result.stop_reason is not None and url in result.stop_reason
    assert {r.status for r in result.rows} == {"unreachable"}
    error = result.input_error()
    assert error is not None and url in str(error)  # the CLI prints this line and exits 2
    assert all(r.score is None for r in result.rows)


def test_api_key_never_reaches_files_or_logs(examples, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("EVALKIT_LLM_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    faults = [Fault("500", match=("<<cat>>",)), Fault("401", match=("<<dog>>",))]
    with LLMServer(scripted_llm, faults) as srv:
        config = llm_config(srv.base_url)
        client = LLMClient(config, out / "cache")
        result = run_autointerp(examples, decode, config, out / "cache", client)
        assert srv.log.auth_headers[0] == f"Bearer {KEY}"  # the key was really used...
    with open(out / "autointerp.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result.rows[0].as_dict()))
        writer.writeheader()
        writer.writerows(r.as_dict() for r in result.rows)
    (out / "config.txt").write_text(repr(config) + repr(client) + repr(result))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5  # csv, repr dump and cached replies written before the 401 stopped the run
    for path in files:  # ...and is nowhere else
        assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in caplog.text and "refused the API key" in (result.stop_reason or "")
    assert {r.status for r in result.rows if r.status != "ok"} <= {"auth_error"}


def test_client_does_not_retry_other_4xx_and_retries_5xx(tmp_path) -> None:
    async def ask(client: LLMClient, content: str) -> str:
        try:
            return (await client.chat(MODEL, [{"role": "user", "content": content}], 5)).text
        finally:
            await client.aclose()

    with LLMServer(lambda body: "fine", [Fault("404", match=("a",)), Fault("503", match=("b",))]) as srv:
        config = llm_config(srv.base_url)
        with pytest.raises(LLMRequestError, match="HTTP 404"):
            asyncio.run(ask(LLMClient(config, tmp_path), "a"))
        assert srv.n_requests == 1
        assert asyncio.run(ask(LLMClient(config, tmp_path), "b")) == "fine"
        assert srv.n_requests == 3
        assert len(list(Path(tmp_path).rglob("*.json"))) == 1  # the 404 was not cached


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert _retry_after_seconds({"retry-after": "2"}) == 2.0
    assert 25 < (_retry_after_seconds({"retry-after": future}) or 0) <= 30
    assert _retry_after_seconds({"retry-after": "soon"}) is None
    assert _retry_after_seconds({}) is None
