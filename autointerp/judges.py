"""Judges answer the scorers' questions: which snippets match an explanation; per-token activation guesses.

Two judges share one interface, so every scorer runs unchanged offline or against an LLM:
- baseline: a snippet matches when it contains (detection) or highlights (fuzzing) a token the explanation
  names;
- llm: the prompts of autointerp.prompts sent through LLMClient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from autointerp import prompts
from autointerp.client import LLMClient, LLMRequestError
from autointerp.config import AutointerpConfig
from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import stable_hash
from evalkit.core.registry import Registry


@dataclass(frozen=True)
class Snippet:
    tokens: tuple[str, ...]
    highlight: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Verdict:
    """A judge's answer; `selected`/`predictions` are None when there is no usable answer (see status)."""

    status: str
    """ok, parse_failure, llm_error, budget_exhausted or unreachable."""
    prompt_hash: str
    selected: frozenset[int] | None = None
    predictions: tuple[tuple[float, ...], ...] | None = None
    reason: str = ""
    parse_failures: int = 0


class Judge(Protocol):
    model: str

    async def select(self, task: str, explanation: str, snippets: list[Snippet]) -> Verdict:
        """task 'detection': which snippets contain matching text; 'fuzzing': whose highlights match."""
        ...

    async def simulate(self, explanation: str, snippets: list[Snippet]) -> Verdict:
        """Per-token activation predictions on 0-10."""
        ...


JudgeFactory = Callable[[AutointerpConfig, "LLMClient | None"], Judge]
JUDGES: Registry[JudgeFactory] = Registry("autointerp judge")

# Words an explanation uses to talk about tokens rather than name them; never matched as tokens.
_FILLER = frozenset(
    """a an and are as at be by for from in is it its of on or the that this to with when which word
words token tokens term terms text mention mentions mentioned name names phrase phrases like such including
occurrence occurrences appears appearing related refers reference references""".split()
)


def normalize_token(tok: str) -> str:
    return tok.strip().lower()


def quote_token(token: str) -> str:
    """A token as the baseline explanation writes it: a JSON string, so quotes and backslashes survive."""
    return json.dumps(token, ensure_ascii=False)


def _unquote(quoted: str) -> str:
    try:
        return str(json.loads(quoted))
    except ValueError:  # an LLM's loosely quoted phrase
        return quoted[1:-1]


def named_tokens(explanation: str) -> frozenset[str]:
    """Tokens an explanation names: its "quoted" items (JSON string escapes allowed, so a quote-mark token
    is written "\\"") when it quotes, else its content words."""
    quoted = [_unquote(q) for q in re.findall(r'"(?:[^"\\]|\\.)+"', explanation)]
    if quoted:
        return frozenset(normalize_token(q) for q in quoted if normalize_token(q))
    return frozenset(w for w in (normalize_token(x) for x in re.findall(r"\w+", explanation)) if w not in _FILLER)


def content_hash(*parts: object) -> str:
    return stable_hash(parts, 64, compact=False)


class BaselineJudge:
    """Token matching, no LLM: the cheap reference every LLM score should beat."""

    model = "baseline"

    async def select(self, task: str, explanation: str, snippets: list[Snippet]) -> Verdict:
        names = named_tokens(explanation)
        chosen = set()
        for k, s in enumerate(snippets):
            if task == "fuzzing":  # only highlighted tokens count; no highlight means none
                marks = s.highlight if s.highlight is not None else (False,) * len(s.tokens)
            else:
                marks = (True,) * len(s.tokens)
            if any(m and normalize_token(t) in names for t, m in zip(s.tokens, marks, strict=True)):
                chosen.add(k)
        return Verdict("ok", content_hash(task, explanation, snippets), selected=frozenset(chosen))

    async def simulate(self, explanation: str, snippets: list[Snippet]) -> Verdict:
        names = named_tokens(explanation)
        preds = tuple(tuple(10.0 if normalize_token(t) in names else 0.0 for t in s.tokens) for s in snippets)
        return Verdict("ok", content_hash("simulation", explanation, snippets), predictions=preds)


class LLMJudge:
    """Asks the scorer model through LLMClient; replies that break the format count as parse failures."""

    def __init__(self, config: AutointerpConfig, client: LLMClient) -> None:
        self.config = config
        self.client = client
        self.model = config.scorer_model

    async def select(self, task: str, explanation: str, snippets: list[Snippet]) -> Verdict:
        if task == "fuzzing":
            texts = [prompts.render_window(list(s.tokens), list(s.highlight or ())) for s in snippets]
            messages = prompts.fuzzing_messages(explanation, texts)
        else:
            messages = prompts.detection_messages(
                explanation, [prompts.render_window(list(s.tokens)) for s in snippets]
            )
        try:
            reply = await self.client.chat(self.model, messages, self.config.max_tokens_score)
        except LLMRequestError as exc:
            return Verdict(exc.status, "", reason=exc.reason)
        selected = prompts.parse_selection(reply.text, len(snippets))
        if selected is None:
            return Verdict(
                "parse_failure",
                reply.request_hash,
                reason=f"unparsable reply: {reply.text[:120]!r}",
                parse_failures=1,
            )
        return Verdict("ok", reply.request_hash, selected=frozenset(selected))

    async def simulate(self, explanation: str, snippets: list[Snippet]) -> Verdict:
        messages = prompts.simulation_messages(explanation, [list(s.tokens) for s in snippets])
        try:
            reply = await self.client.chat(self.model, messages, self.config.max_tokens_simulation)
        except LLMRequestError as exc:
            return Verdict(exc.status, "", reason=exc.reason)
        preds = prompts.parse_simulation(reply.text, [len(s.tokens) for s in snippets])
        if preds is None:
            return Verdict(
                "parse_failure",
                reply.request_hash,
                reason=f"unparsable reply: {reply.text[:120]!r}",
                parse_failures=1,
            )
        return Verdict("ok", reply.request_hash, predictions=tuple(tuple(p) for p in preds))


def _make_baseline(config: AutointerpConfig, client: LLMClient | None) -> Judge:
    return BaselineJudge()


def _make_llm(config: AutointerpConfig, client: LLMClient | None) -> Judge:
    if client is None:
        raise EvalkitInputError("--autointerp", "the llm judge needs an LLM client")
    return LLMJudge(config, client)


JUDGES.add("baseline", _make_baseline)
JUDGES.add("llm", _make_llm)
