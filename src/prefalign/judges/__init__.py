"""Judges: verifiable instructions, reward models, LLM judges over HTTP, behind one interface."""

from importlib import import_module
from typing import Any

from .base import Judge, JudgeItem, Score, Verdict

# Loaded on first use: the verifier pulls in if-verifiable (which imports `datasets`, seconds), and code that only needs
# the interface above, or `prefalign --help`, should not pay for it.
_LAZY = {
    "SUPPORTED_INSTRUCTIONS": ".verifier",
    "VerifierJudge": ".verifier",
    "describe_instruction": ".verifier",
    "LLMJudge": ".llm",
    "JudgeCache": ".cache",
    "load_judge": ".registry",
}

__all__ = ["Judge", "JudgeItem", "Score", "Verdict", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
