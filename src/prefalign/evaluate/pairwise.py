"""Pairwise preference of a model over a baseline, per prompt, by any judge; win rates with intervals.

Each prompt's outcome for the model is 1 (its answer preferred), 0.5 (a tie) or 0 (the baseline's preferred); a
judge failure leaves the prompt out (and is counted). LLM judges ask in both orders and turn a verdict that flips with
the order into a tie (`LLMJudge.compare`); pointwise judges (the verifier, a reward model) prefer the higher score.
The win rate is the mean outcome, so ties count half, with a bootstrap interval over prompts; the length-controlled
win rate (`stats.length_controlled_win_rate`) regresses the outcome on the difference in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..judges.base import Judge, Score, Verdict
from .prompt_set import EvalPrompt
from .stats import Estimate, length_controlled_win_rate, mean_ci

_OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass
class PairwiseResult:
    model: str
    baseline: str
    judge: str
    outcomes: list[float | None]  # per prompt, for the model: 1 win, 0.5 tie, 0 loss, None judge failure
    inconsistent: int  # LLM verdicts that flipped with the order (counted as ties)
    errors: list[str]  # the first few judge failures
    failures: int
    win_rate: Estimate | None
    lc_win_rate: Estimate | None

    @property
    def counts(self) -> dict[str, int]:
        return {
            "wins": sum(o == 1.0 for o in self.outcomes),
            "ties": sum(o == 0.5 for o in self.outcomes),
            "losses": sum(o == 0.0 for o in self.outcomes),
            "failures": self.failures,
            "inconsistent": self.inconsistent,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "judge": self.judge,
            **self.counts,
            "win_rate": self.win_rate.to_json() if self.win_rate else None,
            "lc_win_rate": self.lc_win_rate.to_json() if self.lc_win_rate else None,
            "errors": self.errors,
        }


def verdicts_from_scores(scores_a: list[Score], scores_b: list[Score]) -> list[Verdict]:
    """What `Judge.compare` would return for a pointwise judge, from scores already computed.

    A reward model scores each response once for the pointwise table; comparing from those scores spares a second
    pass over every pair. The rule is `Judge.compare`'s: the higher score wins, equal scores tie.
    """
    verdicts = []
    for a, b in zip(scores_a, scores_b):
        if a.value is None or b.value is None:
            verdicts.append(Verdict(None, a.value, b.value, error=a.error or b.error))
        else:
            preferred = "a" if a.value > b.value else "b" if b.value > a.value else "tie"
            verdicts.append(Verdict(preferred, a.value, b.value))
    return verdicts


def uses_pointwise_compare(judge: Judge) -> bool:
    """True when the judge's pairwise verdicts are derived from its pointwise scores (it keeps `Judge.compare`)."""
    return type(judge).compare is Judge.compare


def compare(
    judge: Judge,
    prompts: list[EvalPrompt],
    model: str,
    baseline: str,
    responses: dict[str, list[str]],
    pointwise: dict[str, list[Score]] | None = None,
    words: dict[str, list[int]] | None = None,
) -> PairwiseResult:
    """`model` against `baseline` on every prompt by `judge`.

    `pointwise` (label -> the judge's scores, when it gave them) lets a pointwise judge compare without rescoring;
    `words` (label -> response lengths in words) enables the length-controlled win rate.
    """
    if pointwise is not None and uses_pointwise_compare(judge):
        verdicts = verdicts_from_scores(pointwise[model], pointwise[baseline])
    else:
        verdicts = judge.compare(
            [p.prompt for p in prompts], responses[model], responses[baseline], [p.meta for p in prompts]
        )
    outcomes = [_OUTCOME[v.preferred] if v.preferred is not None else None for v in verdicts]
    errors = [v.error for v in verdicts if v.preferred is None and v.error]
    lc = None
    if words is not None:
        differences = [float(a - b) for a, b in zip(words[model], words[baseline])]
        lc = length_controlled_win_rate(outcomes, differences)
    return PairwiseResult(
        model=model,
        baseline=baseline,
        judge=judge.name,
        outcomes=outcomes,
        inconsistent=sum(v.details.get("consistent") is False for v in verdicts),
        errors=errors[:3],
        failures=sum(o is None for o in outcomes),
        win_rate=mean_ci(outcomes),
        lc_win_rate=lc,
    )
