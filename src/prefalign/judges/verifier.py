"""The `verifier` judge: the fraction of a prompt's verifiable instructions (IFEval, Zhou et al. 2023, arXiv 2311.07911)
that a response follows.

A prompt record names its instructions the way IFEval's data does, and the judge reads them from `JudgeItem.meta`:

    {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"num_words": 50, "relation": "less than"}]}

Each instruction is checked strictly (the response as is) and loosely (IFEval's loose mode: it also passes if the check
holds once the first line, the last line or both are dropped, or markdown `*` are removed, which forgives a chatty
preamble or sign-off). `Score.value` is the strict fraction for the `verifier` judge and the loose fraction for
`verifier:loose`; `Score.details` always holds both, IFEval's prompt-level all-or-nothing results, and one entry per
instruction. A prompt without instructions, an unknown id or bad arguments give `Score(None, error=...)`.
"""

from __future__ import annotations

from typing import Any, Literal

from if_verifiable.common import get_loose_transformations, strip_thinking

from ..errors import PrefalignError
from .base import Judge, JudgeItem, Score
from .instructions import CHECKERS

Mode = Literal["strict", "loose"]

SUPPORTED_INSTRUCTIONS: tuple[str, ...] = tuple(sorted(CHECKERS))


def _build_checker(instruction_id: str, kwargs: dict[str, Any] | None) -> tuple[Any, str]:
    """A configured checker and its description; ValueError naming the problem if the id or arguments are bad.

    IFEval's checkers fill any argument left out with a random value; a judge must not, so every argument a checker
    takes is required here. `None` values are dropped first: IFEval's published data pads each kwargs dict with the
    other instructions' keys set to null.
    """
    checker_class = CHECKERS.get(instruction_id)
    if checker_class is None:
        raise ValueError(f"unknown instruction id '{instruction_id}' (see prefalign.judges.SUPPORTED_INSTRUCTIONS)")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"arguments of '{instruction_id}' must be an object, got {type(kwargs).__name__}")
    arguments = {key: value for key, value in (kwargs or {}).items() if value is not None}
    checker = checker_class(instruction_id)
    try:
        description = checker.build_description(**arguments)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad arguments {arguments} for '{instruction_id}': {error}") from None
    missing = [key for key in checker.get_instruction_args_keys() if key not in arguments]
    if missing:
        raise ValueError(f"instruction '{instruction_id}' needs argument(s) {', '.join(missing)}")
    return checker, description


def describe_instruction(instruction_id: str, kwargs: dict[str, Any] | None = None) -> str:
    """The natural-language instruction IFEval shows the model, e.g. "In your entire response, refrain from the use of
    any commas." Raises PrefalignError for an unknown id or missing or bad arguments."""
    try:
        return _build_checker(instruction_id, kwargs)[1]
    except ValueError as error:
        raise PrefalignError(str(error)) from None


def check_instructions(response: str, checkers: list[Any]) -> list[tuple[bool, bool]]:
    """(strict, loose) for each checker, as IFEval defines them: a reasoning model's <think> block is ignored, an empty
    response fails everything, loose passes if any of IFEval's loose variants of the response passes."""
    response = strip_thinking(response)
    if not response.strip():
        return [(False, False) for _ in checkers]
    variants = [v for v in get_loose_transformations(response) if v.strip()]
    results = []
    for checker in checkers:
        strict = bool(checker.check_following(response))
        loose = strict or any(checker.check_following(v) for v in variants)
        results.append((strict, loose))
    return results


class VerifierJudge(Judge):
    """Scores a response by the fraction of its prompt's verifiable instructions it follows (strict or loose)."""

    def __init__(self, mode: Mode = "strict"):
        if mode not in ("strict", "loose"):
            raise PrefalignError(f"verifier mode must be 'strict' or 'loose', got '{mode}'")
        self.mode = mode
        self.name = "verifier" if mode == "strict" else "verifier:loose"

    def score(self, items: list[JudgeItem]) -> list[Score]:
        return [self._score_one(item) for item in items]

    def _score_one(self, item: JudgeItem) -> Score:
        instruction_ids = item.meta.get("instruction_id_list") or []
        kwargs_list = item.meta.get("kwargs") or [{} for _ in instruction_ids]
        if not instruction_ids:
            return Score(None, error="the prompt has no verifiable instructions (meta 'instruction_id_list' is empty)")
        if len(kwargs_list) != len(instruction_ids):
            return Score(None, error=f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs entries")
        try:
            # One checker per instruction: the same id may appear twice with different arguments.
            checkers = [_build_checker(i, k)[0] for i, k in zip(instruction_ids, kwargs_list)]
        except ValueError as error:
            return Score(None, error=str(error))
        results = check_instructions(item.response, checkers)
        strict = sum(passed for passed, _ in results) / len(results)
        loose = sum(passed for _, passed in results) / len(results)
        details = {
            "strict": strict,
            "loose": loose,
            "all_strict": strict == 1.0,
            "all_loose": loose == 1.0,
            "instructions": [
                {"id": instruction_id, "strict": passed_strict, "loose": passed_loose}
                for instruction_id, (passed_strict, passed_loose) in zip(instruction_ids, results)
            ],
        }
        return Score(strict if self.mode == "strict" else loose, details)
