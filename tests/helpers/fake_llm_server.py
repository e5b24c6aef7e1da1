"""A real HTTP server on 127.0.0.1 that answers like OpenAI's Chat Completions and Anthropic's Messages APIs.

Tests script it per request and read back what it received:

    with FakeLLMServer(api_key="sk-test") as server:
        server.answer_with(lambda prompt: Reply(text="[[A]]" if ... else "[[B]]"))  # every request, by its prompt
        server.reply(Reply(status=429, headers={"Retry-After": "1"}))  # the next request(s) first, once each
        ... client posts to server.base_url + "/v1/chat/completions" or "/v1/messages" ...
        assert len(server.requests) == 2

Replies are wrapped in the endpoint's real response JSON (errors too); `Reply.raw` sends bytes as they are, `delay`
sleeps before answering (to outlast a client's timeout). With `api_key` set, requests without the right header
(`Authorization: Bearer KEY` or `x-api-key: KEY`) get the provider's 401. `max_in_flight` is the most requests it
was ever answering at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    text: str = ""  # the assistant's answer (status 200) or the error message (other statuses)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None  # sent verbatim instead of the API-shaped JSON


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    received_at: float

    @property
    def prompt(self) -> str:
        return self.body["messages"][-1]["content"]


class FakeLLMServer:
    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Reply] = deque()
        self._answer: Callable[[str], Reply] = lambda prompt: Reply(text="[[C]]")
        self._in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a handler still sleeping on a slow reply must not hold up stop()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-llm", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these, one each, in order; `answer_with`'s function answers after."""
        with self._lock:
            self._queue.extend(replies)

    def answer_with(self, answer: Callable[[str], Reply]) -> None:
        """Answer each request that finds no queued reply with `answer(prompt)`."""
        with self._lock:
            self._answer = answer

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self, prompt: str) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            answer = self._answer
        return answer(prompt)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with server._lock:
                    server.requests.append(RecordedRequest(self.path, headers, body, time.monotonic()))
                if self.path not in (OPENAI_PATH, ANTHROPIC_PATH):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                anthropic = self.path == ANTHROPIC_PATH
                if anthropic and "anthropic-version" not in headers:
                    return self._send(400, _error(True, 400, "anthropic-version header is required"), {})
                given_key = headers.get("x-api-key") if anthropic else headers.get("authorization", "")[7:]
                if server.api_key is not None and given_key != server.api_key:
                    return self._send(401, _error(anthropic, 401, "invalid api key"), {})
                reply = server._next_reply(body["messages"][-1]["content"])
                time.sleep(reply.delay)
                if reply.raw is not None:
                    return self._send(reply.status, reply.raw, reply.headers)
                if reply.status != 200:
                    return self._send(reply.status, _error(anthropic, reply.status, reply.text), reply.headers)
                payload = _anthropic_message(body, reply.text) if anthropic else _openai_completion(body, reply.text)
                self._send(200, payload, reply.headers)

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler


def _openai_completion(request: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())},
    }


def _anthropic_message(request: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": len(text.split())},
    }


def _error(anthropic: bool, status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
