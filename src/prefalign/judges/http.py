"""Chat clients for LLM judges: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, Ollama) and Anthropic.

Standard library only (urllib), so judging adds no dependency. Each client sends one user message and returns the
answer text, with:

* a timeout per request (connect and each read);
* retries on 429, 408/409, 5xx (Anthropic's 529 "overloaded" included) and connection errors or timeouts, waiting what
  the server asks for (`retry-after-ms`, OpenAI's, or `Retry-After` in seconds or as an HTTP date) and otherwise
  exponential backoff with jitter, so that many workers hitting the same rate limit do not retry in lockstep;
* the on-disk cache consulted before any request, and filled after each success;
* the API key read from an environment variable once, sent only as a header, never logged, cached or put in errors.

A request that still fails after its retries raises `JudgeRequestError`, which judges record per item. A 401, 403 or 404
means a wrong key, model or URL that no retry fixes and every later request would repeat: it raises PrefalignError
and stops the run.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..console import warn
from ..errors import PrefalignError
from .cache import JudgeCache, request_key

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({401, 403, 404})


class JudgeRequestError(Exception):
    """One request that failed for good (after retries, or with an error no retry fixes); the message says why."""


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` retries after the first attempt; the n-th waits about backoff_base * 2**n seconds (between half
    and all of it, at random), or what the server's Retry-After asks, never more than backoff_max."""

    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        ceiling = min(self.backoff_base * 2**retry, self.backoff_max)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Counters:
    """Named event counts shared by a client and its judge, safe to bump from worker threads."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a 429/503 response asks for, in seconds, or None if it names none (or an unreadable one)."""
    if headers is None:
        return None
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return (when - datetime.now(UTC)).total_seconds()


class ChatClient:
    """A single-turn chat endpoint. Subclasses say where to post, what to send and where the answer text is."""

    provider: ClassVar[str]
    default_base_url: ClassVar[str]
    default_key_env: ClassVar[str]
    extra_headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        cache: JudgeCache | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.0,
    ):
        if not model:
            raise PrefalignError(f"the {self.provider} judge needs a model name: '{self.provider}:MODEL'")
        self.model = model
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.cache = cache
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.counters = Counters()
        key_env = api_key_env or self.default_key_env
        self._api_key = os.environ.get(key_env) or None
        # Local OpenAI-compatible servers (vLLM, llama.cpp, Ollama) take no key; the provider's own API, or a variable
        # the user named, must have one.
        if self._api_key is None and (api_key_env is not None or base_url is None):
            raise PrefalignError(f"the {self.provider} judge needs an API key: set the environment variable {key_env}")

    def __repr__(self) -> str:  # the key stays out of reprs, hence out of tracebacks and logs
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def url(self) -> str:
        raise NotImplementedError

    def request_body(self, prompt: str) -> dict[str, Any]:
        raise NotImplementedError

    def auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def answer_text(self, payload: Any) -> str:
        """The answer in a decoded response; KeyError, IndexError or TypeError if the shape is wrong."""
        raise NotImplementedError

    def complete(self, prompt: str) -> str:
        """The model's answer to `prompt`, from the cache if this exact request was answered before."""
        body = self.request_body(prompt)
        key = request_key(self.provider, self.base_url, self.model, body) if self.cache is not None else ""
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            self.counters.add("cache_hits")
            return cached
        answer = self._post(json.dumps(body).encode("utf-8"))
        if self.cache is not None:
            self.cache.put(key, answer)
        return answer

    def _post(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.extra_headers}
        if self._api_key is not None:
            headers.update(self.auth_headers(self._api_key))
        for attempt in range(self.retry.max_retries + 1):
            self.counters.add("requests")
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._decode(raw)
            except urllib.error.HTTPError as error:
                detail = _error_detail(error)
                if error.code in FATAL_STATUS:
                    raise PrefalignError(
                        f"{self.provider} judge: HTTP {error.code} from {self.url}: {detail} "
                        f"(check the model name, --judge-base-url and the API key)"
                    ) from None
                if error.code not in RETRYABLE_STATUS:
                    raise JudgeRequestError(f"HTTP {error.code}: {detail}") from None
                reason = f"HTTP {error.code}"
                retry_after = retry_after_seconds(error.headers)
            except (OSError, http.client.HTTPException) as error:  # timeouts, refused or dropped connections
                reason = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt == self.retry.max_retries:
                raise JudgeRequestError(f"{reason} (gave up after {attempt + 1} attempts)")
            wait = self.retry.delay(attempt, retry_after)
            self.counters.add("retries")
            warn(
                f"{self.provider} judge: {reason} from {self.url}; "
                f"retry {attempt + 1}/{self.retry.max_retries} in {wait:.2f} s"
            )
            time.sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _decode(self, raw: bytes) -> str:
        try:
            return self.answer_text(json.loads(raw))
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"malformed {self.provider} response: {raw[:200]!r}") from None


def _error_detail(error: urllib.error.HTTPError) -> str:
    """A short, single-line excerpt of an error response's body."""
    try:
        text = error.read(500).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        text = ""
    return " ".join(text.split())[:300] or str(error.reason)


class OpenAIClient(ChatClient):
    """OpenAI's Chat Completions API, as OpenAI, vLLM, llama.cpp's server and Ollama serve it.

    `base_url` includes the version prefix, as in OpenAI's own clients: http://localhost:8000/v1 for vLLM,
    http://localhost:11434/v1 for Ollama, http://localhost:8080/v1 for llama.cpp.
    """

    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    default_key_env = "OPENAI_API_KEY"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def request_body(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def answer_text(self, payload: Any) -> str:
        return payload["choices"][0]["message"]["content"] or ""  # null content: a refusal, parsed as no verdict


class AnthropicClient(ChatClient):
    """Anthropic's Messages API. `base_url` is the host, as in Anthropic's SDK: https://api.anthropic.com."""

    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_key_env = "ANTHROPIC_API_KEY"
    extra_headers: ClassVar[dict[str, str]] = {"anthropic-version": "2023-06-01"}

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/messages"

    def request_body(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def answer_text(self, payload: Any) -> str:
        return "".join(block["text"] for block in payload["content"] if block.get("type") == "text")
