"""Judges by name, as the command line gives them: `verifier`, `verifier:loose`, `openai:MODEL`, `anthropic:MODEL`,
`reward-model:PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PrefalignError
from .base import Judge
from .options import JudgeOptions  # its defaults are the one place the judges' request limits are declared

JUDGE_SPECS = "verifier, verifier:loose, openai:MODEL, anthropic:MODEL, reward-model:PATH"


def default_cache_path() -> Path:
    """Where LLM judge answers are cached unless told otherwise: `$PREFALIGN_HOME/cache/judge-answers.sqlite`."""
    from ..models.registry import prefalign_home

    return prefalign_home() / "cache" / "judge-answers.sqlite"


def load_judge(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    template: str | Path | None = None,
    cache_path: str | Path | None = None,
    concurrency: int = JudgeOptions.judge_concurrency,
    timeout: float = JudgeOptions.judge_timeout,
    max_retries: int = JudgeOptions.judge_max_retries,
    **kwargs: Any,
) -> Judge:
    """The judge named by `spec`.

    HTTP judges (`openai:MODEL` for any OpenAI-compatible endpoint, `anthropic:MODEL`) take the endpoint
    (`base_url`), the name of the environment variable holding the key (`api_key_env`, default OPENAI_API_KEY or
    ANTHROPIC_API_KEY), a pairwise template file (`template`), the answer cache (`cache_path`, default
    `default_cache_path()`), the number of requests in flight, the per-request timeout in seconds and the retries.
    Extra keyword arguments: `score_template` (pointwise template file), `max_tokens`, `temperature`, `backoff_base`,
    `backoff_max`. The verifier takes none of these.
    """
    kind, _, argument = spec.partition(":")
    if kind == "verifier":
        if argument not in ("", "strict", "loose"):
            raise PrefalignError(f"unknown verifier mode in judge '{spec}': use 'verifier' or 'verifier:loose'")
        http_options = {"--judge-base-url": base_url, "--judge-api-key-env": api_key_env, "--judge-template": template}
        given = [option for option, value in {**http_options, **kwargs}.items() if value is not None]
        if given:
            raise PrefalignError(f"{', '.join(given)} apply only to openai: and anthropic: judges")
        from .verifier import VerifierJudge

        return VerifierJudge("loose" if argument == "loose" else "strict")
    if kind in ("openai", "anthropic"):
        return _http_judge(
            kind,
            argument,
            base_url=base_url,
            api_key_env=api_key_env,
            template=template,
            cache_path=cache_path,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            **kwargs,
        )
    if kind == "reward-model":  # a model trained by `prefalign rm train`
        if not argument:
            raise PrefalignError(f"judge '{spec}' needs the reward model's directory: reward-model:PATH")
        http_options = {"--judge-base-url": base_url, "--judge-api-key-env": api_key_env, "--judge-template": template}
        given = [option for option, value in {**http_options, **kwargs}.items() if value is not None]
        if given:
            raise PrefalignError(f"{', '.join(given)} apply only to openai: and anthropic: judges")
        from .reward_model import RewardModelJudge

        return RewardModelJudge(argument)
    raise PrefalignError(f"unknown judge '{spec}' (judges: {JUDGE_SPECS})")


def _http_judge(
    provider: str,
    model: str,
    *,
    base_url: str | None,
    api_key_env: str | None,
    template: str | Path | None,
    cache_path: str | Path | None,
    concurrency: int,
    timeout: float,
    max_retries: int,
    score_template: str | Path | None = None,
    max_tokens: int = 1024,
    temperature: float = 0.0,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
) -> Judge:
    from .cache import JudgeCache
    from .http import AnthropicClient, OpenAIClient, RetryPolicy
    from .llm import LLMJudge

    if timeout <= 0 or max_retries < 0:
        raise PrefalignError(f"judge timeout must be positive and retries non-negative (got {timeout}, {max_retries})")
    client_class = OpenAIClient if provider == "openai" else AnthropicClient
    client = client_class(
        model,
        base_url=base_url,
        api_key_env=api_key_env,
        timeout=timeout,
        retry=RetryPolicy(max_retries, backoff_base, backoff_max),
        max_tokens=max_tokens,
        temperature=temperature,
    )
    judge = LLMJudge(client, template=template, score_template=score_template, concurrency=concurrency)
    # The cache opens last, so that a bad key or template fails before any file is created.
    client.cache = JudgeCache(cache_path if cache_path is not None else default_cache_path())
    return judge
