"""The LLM client: AsyncOpenAI against any OpenAI-compatible endpoint, with evalkit's own retry policy, a disk
cache, usage/cost accounting and caps.

The openai client's built-in retries are switched off (max_retries=0) so the policy here is the one in force:
jittered exponential backoff on 429, 5xx, timeouts, connection errors and malformed replies, honouring
Retry-After; no retry on other 4xx. The API key comes from the environment and is held only by the openai
client object; it is never logged, hashed into a cache key or written anywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai

from autointerp.config import AutointerpConfig
from autointerp.prompts import Message
from autointerp.status import Status
from evalkit.core.faults import fault_point
from evalkit.core.identity import stable_hash
from evalkit.core.io import dump_checked, load_checked

log = logging.getLogger(__name__)

API_KEY_ENV = ("EVALKIT_LLM_API_KEY", "OPENAI_API_KEY")


@dataclass
class Usage:
    """What requests cost. `requests` counts HTTP attempts, retries included.

    LLMClient keeps two: `usage`, what the results took (a reply read from the disk cache brings the usage
    recorded with it, so a resumed run reports what the uninterrupted run would), and `sent`, what this
    process actually sent (cache hits send nothing)."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        for name in ("requests", "retries", "cache_hits", "failures", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd += other.cost_usd

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    request_hash: str
    """Hash of (base_url, model, messages, parameters): the cache key, also the `prompt_hash` of
    autointerp.csv."""
    spent: Usage = field(default_factory=Usage)
    """What obtaining this reply cost (attempts including retries, tokens, cost); stored with the cached reply."""


class LLMRequestError(Exception):
    """A request that did not produce a reply. `status` is what the latent is marked with."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        """llm_error (this request failed), budget_exhausted (a cap was reached), unreachable (endpoint
        down) or auth_error (key refused)."""
        self.reason = reason


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, connection: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.connection = connection


def request_hash(base_url: str, model: str, messages: list[Message], params: dict[str, float | int]) -> str:
    payload = {"base_url": base_url.rstrip("/"), "model": model, "messages": messages, "params": params}
    return stable_hash(payload, 64, compact=False)


def _retry_after_seconds(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _k: None)("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class LLMClient:
    """Chat completions with bounded concurrency, retries, caching and caps. One instance per autointerp
    run."""

    def __init__(self, config: AutointerpConfig, cache_dir: Path | None = None, api_key: str | None = None) -> None:
        self.config = config
        self.cache_dir = Path(cache_dir) / "llm" if cache_dir is not None else None
        self.usage = Usage()
        """What the replies this client returned took, cached ones included (the results' figures)."""
        self.sent = Usage()
        """What this process actually sent."""
        self._replies: dict[str, ChatReply] = {}
        """Replies already returned in this run: an identical prompt is answered once and counted once."""
        self._in_flight: dict[str, asyncio.Task[ChatReply]] = {}
        self._records: list[Usage] = []
        """What each reply (or failed request) took, for order-independent totals."""
        self._cap_reached = False
        self.stop_reason: str | None = None
        self.stop_status = Status.BUDGET_EXHAUSTED
        """BUDGET_EXHAUSTED, UNREACHABLE or AUTH_ERROR once stop_reason is set."""
        """Set when a cap was reached or the endpoint is unreachable; later requests fail fast."""
        self._api_key = api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self._openai: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._rng = random.Random(config.seed)

    def __repr__(self) -> str:  # never show the key
        return f"LLMClient(base_url={self.config.base_url!r}, key={'set' if self._api_key else 'unset'})"

    def _client(self) -> openai.AsyncOpenAI:
        if self._openai is None:
            if not self._api_key:
                log.warning("no API key in %s; sending requests without one", " or ".join(API_KEY_ENV))
            self._openai = openai.AsyncOpenAI(
                api_key=self._api_key or "none",
                base_url=self.config.base_url,
                timeout=self.config.timeout_s,
                max_retries=0,
            )
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        return self._openai

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()
        self._openai = None
        self._semaphore = None
        self._in_flight = {}

    async def chat(self, model: str, messages: list[Message], max_tokens: int) -> ChatReply:
        params: dict[str, float | int] = {
            "temperature": self.config.temperature,
            "seed": self.config.seed,
            "max_tokens": max_tokens,
        }
        key = request_hash(self.config.base_url, model, messages, params)
        if key in self._replies:
            return self._replies[key]
        task = self._in_flight.get(key)
        if task is None:  # identical prompts in flight at once share one request
            task = asyncio.ensure_future(self._fetch(key, model, messages, params))
            self._in_flight[key] = task
        try:
            return await task
        finally:
            self._in_flight.pop(key, None)

    async def _fetch(self, key: str, model: str, messages: list[Message], params: dict[str, float | int]) -> ChatReply:
        cached = self._cache_read(key, model)
        if cached is not None:
            self.sent.cache_hits += 1
            self.usage.add(cached.spent)
            self._records.append(cached.spent)
            self._replies[key] = cached
            return cached
        client = self._client()
        assert self._semaphore is not None
        spent = Usage()
        self._records.append(spent)
        async with self._semaphore:
            reply = await self._with_retries(client, key, model, messages, params, spent)
        self._cache_write(reply)
        fault_point("llm")
        self._replies[key] = reply
        return reply

    async def _with_retries(
        self,
        client: openai.AsyncOpenAI,
        key: str,
        model: str,
        messages: list[Message],
        params: dict[str, float | int],
        spent: Usage,
    ) -> ChatReply:
        for attempt in range(self.config.max_retries + 1):
            self._check_caps()
            self._count(spent, requests=1)
            try:
                return await self._attempt(client, key, model, messages, params, spent)
            except _Retryable as exc:
                if attempt == self.config.max_retries:
                    self._count(spent, failures=1)
                    if exc.connection:
                        url = self.config.base_url
                        raise self._stop(
                            Status.UNREACHABLE, f"cannot reach the LLM endpoint {url}: {exc.reason}"
                        ) from None
                    raise LLMRequestError(Status.LLM_ERROR, f"{exc.reason} (after {attempt + 1} attempts)") from None
                delay = self._backoff(attempt, exc.retry_after)
                self._count(spent, retries=1)
                log.warning("LLM request failed (%s); retry %d in %.2fs", exc.reason, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.backoff_max_s)
        base = self.config.backoff_base_s * 2**attempt
        return min(self.config.backoff_max_s, base * (0.5 + self._rng.random()))

    def _count(self, spent: Usage, **amounts: float) -> None:
        """Add to this reply's record, to what the results took and to what this process sent, at once (the
        caps see attempts in flight)."""
        for usage in (spent, self.usage, self.sent):
            for name, amount in amounts.items():
                setattr(usage, name, getattr(usage, name) + amount)

    def _check_caps(self) -> None:
        """Before every attempt: the caps count what the results took so far (earlier runs' cached replies
        included), so a cap is passed by at most the requests already in flight."""
        c = self.config
        requests, cost = self.usage.requests, self.usage.cost_usd
        if self.stop_reason is not None:
            raise LLMRequestError(self.stop_status, self.stop_reason)
        if c.max_requests is not None and requests >= c.max_requests:
            raise self._stop(Status.BUDGET_EXHAUSTED, f"request cap reached ({c.max_requests} requests)")
        if c.max_cost_usd is not None and cost >= c.max_cost_usd:
            self._cap_reached = True
            raise self._stop(Status.BUDGET_EXHAUSTED, f"cost cap reached (${cost:.4f} >= ${c.max_cost_usd:.4f})")

    def totals(self) -> Usage:
        """What the results took, summed exactly (math.fsum) so the figure does not depend on the order replies
        arrived in: a resumed run reading some replies from the cache reports the uninterrupted run's cost."""
        total = Usage()
        for name in ("requests", "retries", "failures", "prompt_tokens", "completion_tokens"):
            setattr(total, name, sum(getattr(r, name) for r in self._records))
        total.cost_usd = math.fsum(r.cost_usd for r in self._records)
        total.cache_hits = self.sent.cache_hits
        return total

    def final_stop_reason(self) -> str | None:
        """The stop reason with the true total: requests in flight when the cost cap was reached still
        completed and cost money, so the message states what was spent in the end."""
        if not self._cap_reached or self.config.max_cost_usd is None:
            return self.stop_reason
        return (
            f"cost cap reached (cap ${self.config.max_cost_usd:.4f}; ${self.totals().cost_usd:.4f} spent in total, "
            f"requests in flight when it was reached included)"
        )

    def _stop(self, status: Status, reason: str) -> LLMRequestError:
        """Record why no further request will be sent; every later request fails fast with the same status."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_status = reason, status
        return LLMRequestError(self.stop_status, self.stop_reason)

    async def _attempt(
        self,
        client: openai.AsyncOpenAI,
        key: str,
        model: str,
        messages: list[Message],
        params: dict[str, float | int],
        spent: Usage,
    ) -> ChatReply:
        try:
            resp = await client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                **params,
            )  # type: ignore[arg-type]
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.config.timeout_s:g}s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {exc}", connection=True) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):  # every later request would fail the same way
                url = self.config.base_url
                raise self._stop(
                    Status.AUTH_ERROR, f"the LLM endpoint {url} refused the API key (HTTP {exc.status_code})"
                ) from None
            reason = f"HTTP {exc.status_code}"
            if exc.status_code == 429 or exc.status_code >= 500:
                raise _Retryable(reason, _retry_after_seconds(exc.response.headers)) from None
            self._count(spent, failures=1)
            raise LLMRequestError(Status.LLM_ERROR, f"{reason}: {exc.message}"[:300]) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise _Retryable(f"malformed reply: {type(exc).__name__}") from None
        return self._reply_from(resp, key, model, spent)

    def _reply_from(self, resp: object, key: str, model: str, spent: Usage) -> ChatReply:
        choices = getattr(resp, "choices", None)
        text = choices[0].message.content if choices else None
        if not isinstance(text, str):
            raise _Retryable("malformed reply: no message content")
        usage = getattr(resp, "usage", None)
        p_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
        c_tok = int(getattr(usage, "completion_tokens", 0) or 0)
        price_in, price_out = self.config.price(model)
        self._count(
            spent, prompt_tokens=p_tok, completion_tokens=c_tok, cost_usd=(p_tok * price_in + c_tok * price_out) / 1e6
        )
        return ChatReply(text, model, p_tok, c_tok, False, key, spent)

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cache_read(self, key: str, model: str) -> ChatReply | None:
        path = self._cache_path(key)
        if path is None:
            return None
        data = load_checked(path, "LLM cache")  # a damaged entry is warned about and refetched, not trusted
        if data is None:
            return None
        try:
            p_tok, c_tok = int(data["prompt_tokens"]), int(data["completion_tokens"])
            price_in, price_out = self.config.price(model)
            recorded = data.get("spent") or {}
            spent = Usage(
                requests=int(recorded.get("requests", 1)),
                retries=int(recorded.get("retries", 0)),
                failures=int(recorded.get("failures", 0)),
                prompt_tokens=p_tok,
                completion_tokens=c_tok,
                cost_usd=float(recorded.get("cost_usd", (p_tok * price_in + c_tok * price_out) / 1e6)),
            )
            return ChatReply(str(data["text"]), str(data["model"]), p_tok, c_tok, True, key, spent)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, exc)
            return None

    def _cache_write(self, reply: ChatReply) -> None:
        """The reply with what it cost, so a later run that reads it reports the same usage (atomic, fsynced)."""
        path = self._cache_path(reply.request_hash)
        if path is None:
            return
        record = {k: v for k, v in asdict(reply).items() if k not in ("cached", "spent")}
        record["spent"] = reply.spent.as_dict()
        dump_checked(path, record)
