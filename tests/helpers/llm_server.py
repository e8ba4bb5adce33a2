"""A real HTTP server on 127.0.0.1 speaking /v1/chat/completions, for autointerp tests.

Stdlib `http.server` in a background thread on an ephemeral port. It counts requests, records their bodies,
and applies scripted faults: a `Fault` applies to the next `times` requests whose messages contain every
string of `match`. Replies come from a responder function (request JSON -> reply text), so tests script the
"model" deterministically; it also tracks how many requests are in flight at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Fault:
    kind: str
    """'429' (with Retry-After), '500', '400', 'slow' (sleep then answer), 'malformed' (invalid JSON body),
    'text' (a well-formed reply whose content is `text`)."""
    times: int = 1
    match: tuple[str, ...] = ()
    """Substrings that must all occur in the request's messages (system + user) for the fault to apply."""
    retry_after: str | None = "1"
    sleep_s: float = 2.0
    text: str = ""


@dataclass
class RequestLog:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops concurrent connects, which then time out


def count_tokens(text: str) -> int:
    """Whitespace-and-punctuation word count: the server's stand-in for a tokenizer."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class LLMServer:
    """Start with `with LLMServer(responder) as srv:`; `srv.base_url` ends with /v1."""

    def __init__(self, responder: Responder, faults: list[Fault] | None = None, reply_delay_s: float = 0.0) -> None:
        self.responder = responder
        self.reply_delay_s = reply_delay_s
        self.faults = list(faults or [])
        self.log = RequestLog()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def n_requests(self) -> int:
        return len(self.log.bodies)

    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _take_fault(self, body: dict[str, Any]) -> Fault | None:
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and all(m in text for m in fault.match):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, body: dict[str, Any], auth: str) -> Fault | None:
        with self._lock:
            self.log.bodies.append(body)
            self.log.times.append(time.monotonic())
            self.log.auth_headers.append(auth)
        return self._take_fault(body)

    def _completion(self, body: dict[str, Any], text: str) -> bytes:
        p_tok = sum(count_tokens(m.get("content", "")) for m in body.get("messages", []))
        c_tok = count_tokens(text)
        with self._lock:
            self.log.prompt_tokens += p_tok
            self.log.completion_tokens += c_tok
        return json.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok},
            }
        ).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fault = server._record(body, self.headers.get("Authorization", ""))
                with server._lock:
                    server.log.in_flight += 1
                    server.log.max_in_flight = max(server.log.max_in_flight, server.log.in_flight)
                try:
                    self._answer(body, fault)
                finally:
                    with server._lock:
                        server.log.in_flight -= 1

            def _answer(self, body: dict[str, Any], fault: Fault | None) -> None:
                time.sleep(server.reply_delay_s)
                if fault is None or fault.kind == "slow":
                    if fault is not None:
                        time.sleep(fault.sleep_s)
                    self._send(200, server._completion(body, server.responder(body)))
                elif fault.kind == "text":
                    self._send(200, server._completion(body, fault.text))
                elif fault.kind == "malformed":
                    self._send(200, b'{"id": "chatcmpl-test", "choices": [')
                elif fault.kind == "429":
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
                else:
                    code = int(fault.kind)
                    self._send(code, json.dumps({"error": {"message": f"scripted {code}"}}).encode())

        return Handler
