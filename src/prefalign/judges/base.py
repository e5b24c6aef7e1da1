"""One judge interface, shared by preference-pair building and evaluation.

A judge answers two questions about responses to a prompt:

* `score`: how good is each response on its own (a verifier's fraction of instructions followed, a reward model's
  scalar, an LLM judge's 1-5 rating)? `None` when the judge failed on that item (the reason is in `Score.error`).
* `compare`: which of two responses is better? Judges with a pointwise score compare scores; LLM judges ask for a
  pairwise verdict in both orders and keep only a consistent one (position-bias control, Zheng et al. 2023, MT-Bench,
  arXiv 2306.05685).

Failures and ties are first-class results, never guesses: pair building skips them and reports how many, evaluation
counts ties as half a win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..data.records import Text

Preference = Literal["a", "b", "tie"]


@dataclass(frozen=True)
class JudgeItem:
    """A prompt and one response. `meta` carries what a judge may need beyond the text, e.g. the verifier's
    `instruction_id_list` and `kwargs` for the prompt."""

    prompt: Text
    response: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    value: float | None  # None: the judge could not score this item
    details: dict[str, Any] = field(default_factory=dict)  # e.g. strict/loose fractions, per-instruction results
    error: str | None = None  # why value is None (timeout, unparseable answer, ...)


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing response a with response b for one prompt.

    `preferred` is None when the judge failed (error says why); "tie" covers equal scores and, for LLM judges, verdicts
    that flip when the order is swapped (`details["consistent"] = False`).
    """

    preferred: Preference | None
    score_a: float | None = None
    score_b: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Judge:
    """Base class. Subclasses implement `score`; pairwise judges also override `compare`."""

    name: str = "judge"

    def score(self, items: list[JudgeItem]) -> list[Score]:
        raise NotImplementedError(f"{type(self).__name__} gives no pointwise score")

    def compare(
        self,
        prompts: list[Text],
        responses_a: list[str],
        responses_b: list[str],
        metas: list[dict[str, Any]] | None = None,
    ) -> list[Verdict]:
        """Pairwise verdicts from pointwise scores: the higher score wins, equal scores tie."""
        metas = metas or [{} for _ in prompts]
        scores = self.score(
            [JudgeItem(p, r, m) for p, r, m in zip(prompts, responses_a, metas)]
            + [JudgeItem(p, r, m) for p, r, m in zip(prompts, responses_b, metas)]
        )
        n = len(prompts)
        verdicts = []
        for a, b in zip(scores[:n], scores[n:]):
            if a.value is None or b.value is None:
                verdicts.append(Verdict(None, a.value, b.value, error=a.error or b.error))
            else:
                preferred: Preference = "a" if a.value > b.value else "b" if b.value > a.value else "tie"
                verdicts.append(Verdict(preferred, a.value, b.value, {"a": a.details, "b": b.details}))
        return verdicts

    def stats(self) -> dict[str, int]:
        """Counters a caller can report after a run (an LLM judge's requests, cache hits, retries, unparseable
        answers, ...); empty for judges that keep none."""
        return {}

    def close(self) -> None:
        """Release resources (HTTP sessions, caches, models)."""
