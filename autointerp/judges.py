"""Judges answer the scorers' questions. One call, `ask(question)`: the scorer's Question carries its prompt and
parser (and its offline answer), so a judge knows nothing of any scorer and every scorer runs unchanged offline or
against an LLM:
- baseline: the question's offline answer, by token matching (helpers below: a snippet matches when it contains,
  or highlights, a token the explanation names);
- llm: the question's messages sent through LLMClient, the reply read by the question's parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from autointerp.client import LLMClient, LLMRequestError
from autointerp.config import AutointerpConfig
from autointerp.prompts import Message
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import stable_hash
from evalkit.core.registry import Registry

T = TypeVar("T")


@dataclass(frozen=True)
class Snippet:
    tokens: tuple[str, ...]
    highlight: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Question(Generic[T]):
    """One question a scorer asks a judge. The scorer owns all of it: the LLM prompt and the parser of its reply,
    and the offline answer (token matching) the baseline judge gives, with the parts that identify it."""

    messages: list[Message]
    parse: Callable[[str], T | None]
    """The answer in a reply; None when the reply does not follow the requested format."""
    offline: Callable[[], T]
    offline_key: tuple[object, ...]
    """What the offline answer depends on (hashed into the verdict's prompt_hash)."""
    long_reply: bool = False
    """The reply has one line per snippet (per-token predictions): the judge allows the longer reply budget."""


@dataclass(frozen=True)
class Verdict(Generic[T]):
    """A judge's answer; `answer` is None when there is no usable one (see status)."""

    status: Status
    prompt_hash: str
    answer: T | None = None
    reason: str = ""
    parse_failures: int = 0


class Judge(Protocol):
    model: str

    async def ask(self, question: Question[T]) -> Verdict[T]: ...


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

    async def ask(self, question: Question[T]) -> Verdict[T]:
        return Verdict(Status.OK, content_hash(*question.offline_key), answer=question.offline())


class LLMJudge:
    """Asks the scorer model through LLMClient; replies that break the format count as parse failures."""

    def __init__(self, config: AutointerpConfig, client: LLMClient) -> None:
        self.config = config
        self.client = client
        self.model = config.scorer_model

    async def ask(self, question: Question[T]) -> Verdict[T]:
        budget = self.config.max_tokens_simulation if question.long_reply else self.config.max_tokens_score
        try:
            reply = await self.client.chat(self.model, question.messages, budget)
        except LLMRequestError as exc:
            return Verdict(exc.status, "", reason=exc.reason)
        answer = question.parse(reply.text)
        if answer is None:
            return Verdict(
                Status.PARSE_FAILURE,
                reply.request_hash,
                reason=f"unparsable reply: {reply.text[:120]!r}",
                parse_failures=1,
            )
        return Verdict(Status.OK, reply.request_hash, answer=answer)


def matching_snippets(explanation: str, snippets: list[Snippet], highlighted_only: bool) -> frozenset[int]:
    """The baseline's selection: snippets with a token the explanation names (among highlighted tokens only, when
    `highlighted_only`; no highlight then means none)."""
    names = named_tokens(explanation)
    chosen = set()
    for k, s in enumerate(snippets):
        if highlighted_only:
            marks = s.highlight if s.highlight is not None else (False,) * len(s.tokens)
        else:
            marks = (True,) * len(s.tokens)
        if any(m and normalize_token(t) in names for t, m in zip(s.tokens, marks, strict=True)):
            chosen.add(k)
    return frozenset(chosen)


def named_token_predictions(explanation: str, snippets: list[Snippet]) -> tuple[tuple[float, ...], ...]:
    """The baseline's simulation: 10 on tokens the explanation names, 0 elsewhere."""
    names = named_tokens(explanation)
    return tuple(tuple(10.0 if normalize_token(t) in names else 0.0 for t in s.tokens) for s in snippets)


def _make_baseline(config: AutointerpConfig, client: LLMClient | None) -> Judge:
    return BaselineJudge()


def _make_llm(config: AutointerpConfig, client: LLMClient | None) -> Judge:
    if client is None:
        raise EvalkitInputError("--autointerp", "the llm judge needs an LLM client")
    return LLMJudge(config, client)


JUDGES.add("baseline", _make_baseline)
JUDGES.add("llm", _make_llm)
