"""The options of the LLM judges (`openai:MODEL`, `anthropic:MODEL`): one option group, shared by every command that
judges (`prefalign pairs build`, `prefalign eval`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_GROUP = "LLM judges (openai:, anthropic:)"


def _option(help_text: str, metavar: str) -> dict[str, str]:
    return {"help": help_text, "metavar": metavar, "group": _GROUP}


@dataclass
class JudgeOptions:
    """Endpoint, key, templates, cache and request limits of an HTTP judge; the defaults are `load_judge`'s."""

    judge_base_url: str | None = field(
        default=None,
        metadata=_option(
            "endpoint of an OpenAI-compatible API (vLLM, llama.cpp, Ollama), e.g. http://127.0.0.1:8000/v1", "URL"
        ),
    )
    judge_api_key_env: str | None = field(
        default=None,
        metadata=_option(
            "environment variable holding the API key (default: OPENAI_API_KEY or ANTHROPIC_API_KEY)", "VAR"
        ),
    )
    judge_template: str | None = field(
        default=None, metadata=_option("file with the pairwise judging prompt template", "FILE")
    )
    judge_score_template: str | None = field(
        default=None, metadata=_option("file with the pointwise (1-5) judging prompt template", "FILE")
    )
    judge_cache: str | None = field(
        default=None, metadata=_option("SQLite file caching judge answers (default: in PREFALIGN_HOME)", "FILE")
    )
    judge_concurrency: int = field(default=4, metadata=_option("judge requests in flight", "N"))
    judge_timeout: float = field(default=60.0, metadata=_option("seconds per judge request", "SECONDS"))
    judge_max_retries: int = field(
        default=5, metadata=_option("retries of a judge request on 429, 5xx and timeouts", "N")
    )

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `load_judge`: the options that are set (an unset one keeps `load_judge`'s default)."""
        values = {
            "base_url": self.judge_base_url,
            "api_key_env": self.judge_api_key_env,
            "template": self.judge_template,
            "score_template": self.judge_score_template,
            "cache_path": self.judge_cache,
            "concurrency": self.judge_concurrency,
            "timeout": self.judge_timeout,
            "max_retries": self.judge_max_retries,
        }
        return {name: value for name, value in values.items() if value is not None}
