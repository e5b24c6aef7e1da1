"""The lines `build_pairs` writes for one batch of prompts: a judged pair or a skip record per prompt
(`judged_lines`), the rewrite pairs (`rewrite_lines`), their contrast pairs (`contrast_lines`) and the contrast pairs'
mirrors (`mirror_lines`). Each line carries its provenance: the prompt's fields, the model, judge and sampling
settings, each side's sample and the judge's details."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data.records import Text
from ..errors import PrefalignError
from ..generate import Generation, GenerationConfig
from ..judges.base import Judge, JudgeItem, Score, Verdict
from ..text_metrics import repetition

if TYPE_CHECKING:
    from ..judges.verifier import VerifierJudge
    from .build import PromptRecord
    from .rewrite import Rewrite


@dataclass
class _Outcome:
    """The judge's answer for one prompt; `chosen` and `rejected` index its candidates."""

    status: str  # "pair" or one of SKIP_STATUSES
    scores: list[float | None]  # one per candidate (None: no pointwise score)
    details: Any = None
    chosen: int = 0
    rejected: int = 0
    error: str | None = None


def judged_lines(
    judge: Judge,
    batch: list[PromptRecord],
    samples: list[list[Generation]],
    settings: list[GenerationConfig],
    provenance: dict[str, Any],
    min_score_gap: float = 0.0,
    max_chosen_repetition: float = 1.0,
) -> list[dict[str, Any]]:
    """One output line per prompt of the batch: a pair, or a skip record with its status."""
    candidates = [_distinct_candidates([generations[i] for generations in samples]) for i in range(len(batch))]
    pairwise = [i for i, c in enumerate(candidates) if len(c) == 2]
    pointwise = [i for i, c in enumerate(candidates) if len(c) > 2]
    outcomes = {i: _Outcome("no_distinct_responses", [None] * len(c)) for i, c in enumerate(candidates) if len(c) < 2}
    if pairwise:
        verdicts = judge.compare(
            [batch[i].prompt for i in pairwise],
            [candidates[i][0][1].text for i in pairwise],
            [candidates[i][1][1].text for i in pairwise],
            [batch[i].fields for i in pairwise],
        )
        outcomes.update((i, _pairwise_outcome(v)) for i, v in zip(pairwise, verdicts))
    if pointwise:
        items = [JudgeItem(batch[i].prompt, g.text, batch[i].fields) for i in pointwise for _, g in candidates[i]]
        scores = iter(judge.score(items))
        outcomes.update((i, _pointwise_outcome([next(scores) for _ in candidates[i]])) for i in pointwise)
    if min_score_gap > 0:
        outcomes = {i: _check_gap(outcome, min_score_gap, judge.name) for i, outcome in outcomes.items()}
    for i, outcome in outcomes.items():
        if outcome.status == "pair" and repetition(candidates[i][outcome.chosen][1].text) > max_chosen_repetition:
            outcomes[i] = dataclasses.replace(outcome, status="repetitive")
    lines = []
    for i, prompt in enumerate(batch):
        outcome = outcomes[i]
        described = [_describe_sample(j, g, settings[j]) for j, g in candidates[i]]
        record = {"prompt": prompt.prompt}
        if outcome.status == "pair":
            record["chosen"] = candidates[i][outcome.chosen][1].text
            record["rejected"] = candidates[i][outcome.rejected][1].text
        record.update(id=prompt.id, **prompt.fields, **provenance)
        if outcome.status == "pair":
            record.update(
                source="judge",
                chosen_score=outcome.scores[outcome.chosen],
                rejected_score=outcome.scores[outcome.rejected],
                chosen_sample=described[outcome.chosen],
                rejected_sample=described[outcome.rejected],
                judge_details=_sides(outcome.details, outcome.chosen, outcome.rejected),
            )
        else:
            # Every sample, empty and repeated ones included, so a skip can be looked into.
            scored = {j: score for (j, _), score in zip(candidates[i], outcome.scores)}
            everything = [
                {**_describe_sample(j, g[i], settings[j]), "text": g[i].text, "score": scored.get(j)}
                for j, g in enumerate(samples)
            ]
            record.update(status=outcome.status, error=outcome.error, samples=everything, judge_details=outcome.details)
        lines.append(record)
    return lines


def _check_gap(outcome: _Outcome, min_score_gap: float, judge_name: str) -> _Outcome:
    """A pair whose scores differ by less than `min_score_gap` becomes a "small_gap" skip; other outcomes stay."""
    if outcome.status != "pair":
        return outcome
    chosen, rejected = outcome.scores[outcome.chosen], outcome.scores[outcome.rejected]
    if chosen is None or rejected is None:
        raise PrefalignError(
            f"--min-score-gap needs a judge that scores each answer; {judge_name} only says which one it prefers"
        )
    if chosen - rejected < min_score_gap - 1e-9:  # 1.0 - 2/3 is a gap of 1/3 whatever the rounding
        return dataclasses.replace(outcome, status="small_gap")
    return outcome


def rewriter() -> VerifierJudge:
    from ..judges.verifier import VerifierJudge  # if-verifiable loads only when rewrites are asked for

    return VerifierJudge("strict")


def rewrite_lines(
    verifier: VerifierJudge,
    batch: list[PromptRecord],
    samples: list[list[Generation]],
    settings: list[GenerationConfig],
    provenance: dict[str, Any],
    max_chosen_repetition: float = 1.0,
) -> list[dict[str, Any]]:
    """A rewrite pair for each prompt of the batch where one of its samples can be rewritten
    (`prefalign.pairs.rewrite`): the rewrite with the highest verifier score, the first sample of equal ones. Samples
    that ended on their own come first; only when none can be rewritten, a sample cut at the token limit, trimmed
    back to a complete sentence and edited, if the verifier then scores it higher than the cut answer (the pair
    teaches an answer that ends, over one that runs out). A rewrite that repeats more than `max_chosen_repetition` of
    its word 4-grams is not a candidate. The scores are the verifier's, whatever the judge."""
    from .rewrite import rewritable

    lines = []
    for i, prompt in enumerate(batch):
        if not rewritable(prompt.fields):
            continue
        best = _best_rewrite(verifier, prompt, _distinct_candidates([s[i] for s in samples]), max_chosen_repetition)
        if best is None:
            continue
        j, generation, rewrite = best
        described = _describe_sample(j, generation, settings[j])
        lines.append(
            {
                "prompt": prompt.prompt,
                "chosen": rewrite.text,
                "rejected": generation.text,
                "id": prompt.id,
                **prompt.fields,
                **provenance,
                "source": rewrite.source,
                "chosen_score": rewrite.score.value,
                "rejected_score": rewrite.original.value,
                "chosen_sample": {**described, "rewritten": list(rewrite.instructions)},
                "rejected_sample": described,
                "judge_details": {"chosen": rewrite.score.details, "rejected": rewrite.original.details},
            }
        )
    return lines


def contrast_lines(
    verifier: VerifierJudge,
    batch: list[PromptRecord],
    samples: list[list[Generation]],
    settings: list[GenerationConfig],
    provenance: dict[str, Any],
    rewrites: list[dict[str, Any]],
    seed: int,
    max_chosen_repetition: float = 1.0,
) -> list[dict[str, Any]]:
    """A contrast pair for each of the batch's `rewrites` that made a whole-answer edit (letter case, quotes, commas:
    `WHOLE_ANSWER_EDITS`): a finished sample of another prompt of the batch, one that asks for none of those edits,
    chosen as it was over the same sample with the edits made.

    Why: a rewrite pair shows an edit winning wherever it appears, so a model trained on rewrite pairs alone learns the
    edit, not the instruction, and wraps answers nobody asked to quote in quotes. The contrast pair shows the same
    edit losing where it was not asked for. Donor prompts are drawn in an order seeded by `seed` and the batch, each
    at most once, and give their first finished sample that repeats at most `max_chosen_repetition` of its word
    4-grams and that the edits change; the verifier must score the edited sample no higher than the original."""
    import random

    from .rewrite import REWRITES, WHOLE_ANSWER_EDITS

    donors = list(range(len(batch)))
    random.Random(f"contrast:{seed}:{batch[0].id if batch else ''}").shuffle(donors)
    used: set[int] = set()  # each prompt gives one contrast pair at most
    lines = []
    for rewrite in rewrites:
        edits = [i for i in rewrite["chosen_sample"]["rewritten"] if i in WHOLE_ANSWER_EDITS]
        if not edits:
            continue
        for d in donors:
            donor = batch[d]
            if d in used or set(edits) & set(donor.fields.get("instruction_id_list") or []):
                continue
            found = _contrast(verifier, donor, [s[d] for s in samples], edits, max_chosen_repetition)
            if found is None:
                continue
            j, generation, edited, original, worse = found
            used.add(d)
            described = _describe_sample(j, generation, settings[j])
            lines.append(
                {
                    "prompt": donor.prompt,
                    "chosen": generation.text,
                    "rejected": edited,
                    "id": donor.id,
                    **donor.fields,
                    **provenance,
                    "source": "contrast:" + "+".join(REWRITES[i][0] for i in REWRITES if i in edits),
                    "chosen_score": original.value,
                    "rejected_score": worse.value,
                    "chosen_sample": described,
                    "rejected_sample": {**described, "edited": [i for i in REWRITES if i in edits]},
                    "judge_details": {"chosen": original.details, "rejected": worse.details},
                }
            )
            break
    return lines


def _contrast(
    verifier: VerifierJudge,
    donor: PromptRecord,
    generations: list[Generation],
    edits: list[str],
    max_repetition: float,
) -> tuple[int, Generation, str, Score, Score] | None:
    """(sample index, sample, edited text, the verifier's scores of both) for the donor's first finished sample that
    the edits change and do not improve; None when it has none."""
    from .rewrite import apply_edits

    for j, generation in _distinct_candidates(generations):
        if generation.finish_reason != "eos" or repetition(generation.text) > max_repetition:
            continue
        edited = apply_edits(generation.text, edits)
        if edited == generation.text:
            continue
        original, worse = verifier.score(
            [JudgeItem(donor.prompt, generation.text, donor.fields), JudgeItem(donor.prompt, edited, donor.fields)]
        )
        if original.value is None or worse.value is None or worse.value > original.value:
            continue
        return j, generation, edited, original, worse
    return None


def _best_rewrite(
    verifier: VerifierJudge,
    prompt: PromptRecord,
    candidates: list[tuple[int, Generation]],
    max_repetition: float = 1.0,
) -> tuple[int, Generation, Rewrite] | None:
    """(sample index, sample, rewrite) of the highest-scoring rewrite among the finished samples, else among those cut
    at the token limit (trimmed first); only rewrites the verifier scores above their original."""
    from .rewrite import rewrite_response

    for truncated in (False, True):
        rewrites = [
            (j, g, r)
            for j, g in candidates
            if (g.finish_reason != "eos") == truncated
            and (r := rewrite_response(verifier, prompt.prompt, g.text, prompt.fields, truncated=truncated))
            and (r.score.value or 0.0) > (r.original.value or 0.0)
            and repetition(r.text) <= max_repetition
        ]
        if rewrites:
            return max(rewrites, key=lambda item: item[2].score.value or 0.0)
    return None


def _pairwise_outcome(verdict: Verdict) -> _Outcome:
    scores = [verdict.score_a, verdict.score_b]
    if verdict.preferred is None:
        return _Outcome("judge_failure", scores, verdict.details, error=verdict.error or "the judge gave no verdict")
    if verdict.preferred == "tie":
        return _Outcome("tie", scores, verdict.details)
    chosen, rejected = (0, 1) if verdict.preferred == "a" else (1, 0)
    return _Outcome("pair", scores, verdict.details, chosen, rejected)


def _pointwise_outcome(scores: list[Score]) -> _Outcome:
    values = [s.value for s in scores]
    details = [s.details for s in scores]
    failed = next((s for s in scores if s.value is None), None)
    if failed is not None:
        return _Outcome("judge_failure", values, details, error=failed.error or "the judge gave no score")
    best = max(range(len(values)), key=lambda k: values[k])  # the first of equal scores: the lowest sample index
    worst = min(range(len(values)), key=lambda k: values[k])
    if values[best] == values[worst]:
        return _Outcome("tie", values, details)
    return _Outcome("pair", values, details, best, worst)


def _distinct_candidates(generations: list[Generation]) -> list[tuple[int, Generation]]:
    """(sample index, generation) of the non-empty answers, the first of each distinct text: a pair needs two
    different answers, and an empty one is not a completion the data loader accepts."""
    seen: set[str] = set()
    kept = []
    for index, generation in enumerate(generations):
        if generation.text.strip() and generation.text not in seen:
            seen.add(generation.text)
            kept.append((index, generation))
    return kept


def _describe_sample(index: int, generation: Generation, setting: GenerationConfig) -> dict[str, Any]:
    return {
        "index": index,
        "temperature": setting.temperature,
        "top_p": setting.top_p,
        "seed": setting.seed,
        "finish_reason": generation.finish_reason,
        "num_tokens": generation.num_tokens,
    }


def _sides(details: Any, chosen: int, rejected: int) -> Any:
    """Per-side judge details relabelled chosen/rejected; pairwise details (an LLM judge's verdicts) as they are."""
    if isinstance(details, list):
        return {"chosen": details[chosen], "rejected": details[rejected]}
    if isinstance(details, dict) and "a" in details and "b" in details:
        sides = (details["a"], details["b"])
        return {"chosen": sides[chosen], "rejected": sides[rejected]}
    return details


def mirror_lines(verifier: VerifierJudge, contrasts: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A mirror pair for each contrast pair: the same two answers under the contrast pair's prompt with the edit's
    instruction added (a train phrasing, drawn with `seed` and the prompt's id), the edited answer now chosen.

    Why: a contrast pair alone says the edit loses where nobody asked for it, and a rewrite pair says it wins where
    asked, but on other prompts and answers, so a small model can learn a cue of the topic or the answer instead of
    the instruction. A contrast pair and its mirror differ in the instruction alone: the one thing that decides.
    None for a prompt whose instructions conflict with the edit's (`prefalign.prompts.instructions.conflicts`), nor
    where the verifier does not score the edited answer strictly higher under the new prompt."""
    import random

    from ..prompts.instructions import INSTRUCTIONS, conflicts

    lines = []
    for contrast in contrasts:
        edits = list(contrast["rejected_sample"]["edited"])
        asked = list(contrast.get("instruction_id_list") or [])
        if any(conflicts(edit, other) for edit in edits for other in asked):
            continue
        draw = random.Random(f"mirror:{seed}:{contrast['id']}")
        phrasings = [draw.randrange(INSTRUCTIONS[edit].train_phrasings) for edit in edits]
        added = " ".join(INSTRUCTIONS[edit].describe({}, p) for edit, p in zip(edits, phrasings))
        fields = {
            "instruction_id_list": asked + edits,
            "kwargs": list(contrast.get("kwargs") or [{}] * len(asked)) + [{} for _ in edits],
        }
        if "phrasings" in contrast:
            fields["phrasings"] = list(contrast["phrasings"]) + phrasings
        prompt = _with_instruction(contrast["prompt"], added)
        edited, original = verifier.score(
            [JudgeItem(prompt, contrast["rejected"], fields), JudgeItem(prompt, contrast["chosen"], fields)]
        )
        if edited.value is None or original.value is None or edited.value <= original.value:
            continue
        lines.append(
            {
                **contrast,
                "prompt": prompt,
                "chosen": contrast["rejected"],
                "rejected": contrast["chosen"],
                **fields,
                "source": "mirror:" + contrast["source"].split(":", 1)[1],
                "chosen_score": edited.value,
                "rejected_score": original.value,
                "chosen_sample": contrast["rejected_sample"],
                "rejected_sample": contrast["chosen_sample"],
                "judge_details": {"chosen": edited.details, "rejected": original.details},
            }
        )
    return lines


def _with_instruction(prompt: Text, instruction: str) -> Text:
    """`prompt` with `instruction` appended to its text (to the last user turn of chat messages, or the last message
    where none is the user's)."""
    if isinstance(prompt, str):
        return f"{prompt} {instruction}"
    messages = [dict(message) for message in prompt]
    users = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    last = users[-1] if users else len(messages) - 1
    messages[last]["content"] = f"{messages[last]['content']} {instruction}"
    return messages
