"""Explainers turn a latent's explainer windows into one short phrase; registered by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from autointerp import prompts
from autointerp.client import LLMClient, LLMRequestError
from autointerp.config import AutointerpConfig
from autointerp.judges import content_hash, normalize_token, quote_token
from autointerp.sampling import LatentExamples
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError
from evalkit.core.registry import Registry

Decode = Callable[[list[int]], list[str]]
"""Token ids -> one display string per token (same length)."""


@dataclass(frozen=True)
class Explanation:
    latent: int
    text: str | None
    """None when no explanation could be obtained (see status)."""
    status: Status
    """ok, parse_failure, llm_error, budget_exhausted or unreachable."""
    model: str
    prompt_hash: str = ""
    reason: str = ""
    parse_failures: int = 0


class Explainer(Protocol):
    model: str

    async def explain(self, examples: LatentExamples, decode: Decode) -> Explanation: ...


ExplainerFactory = Callable[[AutointerpConfig, "LLMClient | None"], Explainer]
EXPLAINERS: Registry[ExplainerFactory] = Registry("autointerp explainer")


def _decoded(examples: LatentExamples, decode: Decode) -> list[tuple[list[str], list[bool]]]:
    out = []
    for w in examples.explain:
        strings = decode(list(w.tokens))
        if len(strings) != len(w.tokens):
            raise EvalkitInputError(
                "autointerp decode",
                f"decode returned {len(strings)} strings for "
                f"{len(w.tokens)} tokens; it must return one string per token",
            )
        out.append((strings, list(w.active(examples.threshold))))
    return out


class BaselineExplainer:
    """'the tokens "X", "Y", "Z"': the most frequent active tokens of the explainer windows (ties: total
    activation)."""

    model = "baseline"

    def __init__(self, config: AutointerpConfig) -> None:
        self.n_tokens = config.baseline_n_tokens

    async def explain(self, examples: LatentExamples, decode: Decode) -> Explanation:
        counts: Counter[str] = Counter()
        mass: Counter[str] = Counter()
        for window, (strings, active) in zip(examples.explain, _decoded(examples, decode), strict=True):
            for s, on, act in zip(strings, active, window.acts, strict=True):
                if on and normalize_token(s):
                    counts[normalize_token(s)] += 1
                    mass[normalize_token(s)] += act
        ranked = sorted(counts, key=lambda t: (-counts[t], -mass[t], t))[: self.n_tokens]
        if not ranked:
            return Explanation(
                examples.latent,
                None,
                Status.PARSE_FAILURE,
                self.model,
                reason="no active token with a printable string",
                parse_failures=1,
            )
        text = "the tokens " + ", ".join(quote_token(t) for t in ranked)
        return Explanation(examples.latent, text, Status.OK, self.model, content_hash("baseline-explain", ranked))


class LLMExplainer:
    """One prompt per latent with active tokens highlighted <<like this>>; the reply is one short phrase."""

    def __init__(self, config: AutointerpConfig, client: LLMClient) -> None:
        self.config = config
        self.client = client
        self.model = config.explainer_model

    async def explain(self, examples: LatentExamples, decode: Decode) -> Explanation:
        snippets = [prompts.render_window(s, a) for s, a in _decoded(examples, decode)]
        messages = prompts.explain_messages(snippets)
        try:
            reply = await self.client.chat(self.model, messages, self.config.max_tokens_explain)
        except LLMRequestError as exc:
            return Explanation(examples.latent, None, exc.status, self.model, reason=exc.reason)
        text = prompts.parse_explanation(reply.text)
        if text is None:
            return Explanation(
                examples.latent,
                None,
                Status.PARSE_FAILURE,
                self.model,
                reply.request_hash,
                f"unparsable reply: {reply.text[:120]!r}",
                parse_failures=1,
            )
        return Explanation(examples.latent, text, Status.OK, self.model, reply.request_hash)


def _make_baseline(config: AutointerpConfig, client: LLMClient | None) -> Explainer:
    return BaselineExplainer(config)


def _make_llm(config: AutointerpConfig, client: LLMClient | None) -> Explainer:
    if client is None:
        raise EvalkitInputError("--autointerp", "the llm explainer needs an LLM client")
    return LLMExplainer(config, client)


EXPLAINERS.add("baseline", _make_baseline)
EXPLAINERS.add("llm", _make_llm)
