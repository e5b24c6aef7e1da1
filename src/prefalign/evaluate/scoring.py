"""Per-response scores: the heuristics, the verifier's per-instruction results, and each judge's pointwise score.

Judges score every model's responses in one call, so an LLM judge keeps its requests in flight across models. A judge
that gives no pointwise score (its `score` raises NotImplementedError) is left to the pairwise comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..generate import Generation
from ..judges.base import Judge, JudgeItem, Score
from .metrics import is_refusal, repetition, word_count
from .prompt_set import EvalPrompt


@dataclass
class ResponseScores:
    """What is measured on one response. `instructions`: the verifier's [{"id", "strict", "loose"}] for the
    prompt's instructions (None when the prompt has none). `judges`: judge name -> pointwise Score."""

    tokens: int
    words: int
    truncated: bool
    refusal: bool
    repetition: float
    instructions: list[dict[str, Any]] | None = None
    judges: dict[str, Score] = field(default_factory=dict)

    def judge_value(self, name: str) -> float | None:
        score = self.judges.get(name)
        return score.value if score is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "words": self.words,
            "truncated": self.truncated,
            "refusal": self.refusal,
            "repetition": self.repetition,
            "instructions": self.instructions,
            "judges": {name: {"value": s.value, "error": s.error} for name, s in self.judges.items()},
        }


def heuristic_scores(generation: Generation) -> ResponseScores:
    text = generation.text
    return ResponseScores(
        tokens=generation.num_tokens,
        words=word_count(text),
        truncated=generation.finish_reason == "length",
        refusal=is_refusal(text),
        repetition=repetition(text),
    )


def score_all(
    prompts: list[EvalPrompt],
    generations: dict[str, list[Generation]],
    verifier: Judge | None,
    judges: list[Judge],
) -> tuple[dict[str, list[ResponseScores]], list[str]]:
    """Scores of every model's responses (by label, in prompt order), and the names of the judges that gave
    pointwise scores."""
    scores = {label: [heuristic_scores(g) for g in gens] for label, gens in generations.items()}
    labels = list(generations)
    items = [JudgeItem(p.prompt, generations[label][i].text, p.meta) for label in labels for i, p in enumerate(prompts)]

    def spread(results: list[Score]) -> dict[str, list[Score]]:
        n = len(prompts)
        return {label: results[k * n : (k + 1) * n] for k, label in enumerate(labels)}

    if verifier is not None:
        for label, results in spread(verifier.score(items)).items():
            for prompt, response, result in zip(prompts, scores[label], results):
                if prompt.instruction_ids and result.value is not None:
                    response.instructions = result.details["instructions"]
    pointwise = []
    for judge in judges:
        try:
            results = judge.score(items)
        except NotImplementedError:
            continue
        pointwise.append(judge.name)
        for label, label_results in spread(results).items():
            for response, result in zip(scores[label], label_results):
                response.judges[judge.name] = result
    return scores, pointwise
