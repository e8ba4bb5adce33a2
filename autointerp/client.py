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
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import openai

from autointerp.config import AutointerpConfig
from autointerp.prompts import Message

log = logging.getLogger(__name__)

API_KEY_ENV = ("EVALKIT_LLM_API_KEY", "OPENAI_API_KEY")


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


class LLMRequestError(Exception):
    """A request that did not produce a reply. `status` is what the latent is marked with."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        """llm_error (this request failed), budget_exhausted (a cap was reached), unreachable (endpoint
        down) or auth_error (key refused)."""
        self.reason = reason


@dataclass
class Usage:
    """What the run cost. `requests` counts HTTP attempts, retries included; cache hits send nothing."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, connection: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.connection = connection


def request_hash(base_url: str, model: str, messages: list[Message], params: dict[str, float | int]) -> str:
    payload = {"base_url": base_url.rstrip("/"), "model": model, "messages": messages, "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


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
        self.stop_reason: str | None = None
        self.stop_status = "budget_exhausted"
        """budget_exhausted, unreachable or auth_error once stop_reason is set."""
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

    async def chat(self, model: str, messages: list[Message], max_tokens: int) -> ChatReply:
        params: dict[str, float | int] = {
            "temperature": self.config.temperature,
            "seed": self.config.seed,
            "max_tokens": max_tokens,
        }
        key = request_hash(self.config.base_url, model, messages, params)
        cached = self._cache_read(key)
        if cached is not None:
            self.usage.cache_hits += 1
            return cached
        client = self._client()
        assert self._semaphore is not None
        async with self._semaphore:
            reply = await self._with_retries(client, key, model, messages, params)
        self._cache_write(reply)
        return reply

    async def _with_retries(
        self,
        client: openai.AsyncOpenAI,
        key: str,
        model: str,
        messages: list[Message],
        params: dict[str, float | int],
    ) -> ChatReply:
        for attempt in range(self.config.max_retries + 1):
            self._check_caps()
            self.usage.requests += 1
            try:
                return await self._attempt(client, key, model, messages, params)
            except _Retryable as exc:
                if attempt == self.config.max_retries:
                    self.usage.failures += 1
                    if exc.connection:
                        url = self.config.base_url
                        raise self._stop("unreachable", f"cannot reach the LLM endpoint {url}: {exc.reason}") from None
                    raise LLMRequestError("llm_error", f"{exc.reason} (after {attempt + 1} attempts)") from None
                delay = self._backoff(attempt, exc.retry_after)
                self.usage.retries += 1
                log.warning("LLM request failed (%s); retry %d in %.2fs", exc.reason, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.backoff_max_s)
        base = self.config.backoff_base_s * 2**attempt
        return min(self.config.backoff_max_s, base * (0.5 + self._rng.random()))

    def _check_caps(self) -> None:
        c, u = self.config, self.usage
        if self.stop_reason is not None:
            raise LLMRequestError(self.stop_status, self.stop_reason)
        if c.max_requests is not None and u.requests >= c.max_requests:
            raise self._stop("budget_exhausted", f"request cap reached ({c.max_requests} requests)")
        if c.max_cost_usd is not None and u.cost_usd >= c.max_cost_usd:
            raise self._stop("budget_exhausted", f"cost cap reached (${u.cost_usd:.4f} >= ${c.max_cost_usd:.4f})")

    def _stop(self, status: str, reason: str) -> LLMRequestError:
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
                    "auth_error", f"the LLM endpoint {url} refused the API key (HTTP {exc.status_code})"
                ) from None
            reason = f"HTTP {exc.status_code}"
            if exc.status_code == 429 or exc.status_code >= 500:
                raise _Retryable(reason, _retry_after_seconds(exc.response.headers)) from None
            self.usage.failures += 1
            raise LLMRequestError("llm_error", f"{reason}: {exc.message}"[:300]) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise _Retryable(f"malformed reply: {type(exc).__name__}") from None
        return self._reply_from(resp, key, model)

    def _reply_from(self, resp: object, key: str, model: str) -> ChatReply:
        choices = getattr(resp, "choices", None)
        text = choices[0].message.content if choices else None
        if not isinstance(text, str):
            raise _Retryable("malformed reply: no message content")
        usage = getattr(resp, "usage", None)
        p_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
        c_tok = int(getattr(usage, "completion_tokens", 0) or 0)
        price_in, price_out = self.config.price(model)
        self.usage.prompt_tokens += p_tok
        self.usage.completion_tokens += c_tok
        self.usage.cost_usd += (p_tok * price_in + c_tok * price_out) / 1e6
        return ChatReply(text, model, p_tok, c_tok, False, key)

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cache_read(self, key: str) -> ChatReply | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return ChatReply(
                str(data["text"]),
                str(data["model"]),
                int(data["prompt_tokens"]),
                int(data["completion_tokens"]),
                True,
                key,
            )
        except (ValueError, KeyError, OSError) as exc:  # a damaged entry is refetched, not trusted
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, exc)
            return None

    def _cache_write(self, reply: ChatReply) -> None:
        path = self._cache_path(reply.request_hash)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in asdict(reply).items() if k != "cached"}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)  # atomic: a crash never leaves half an entry
