"""SFT data by rejection sampling: the model's own samples that a judge fully accepts become its training targets.

For each prompt we draw `samples` responses (sample j with seed `seed + j`, so a prompt's samples do not depend on the
batch) and keep the first one that finished on its own (not cut at the token limit) and scored 1.0, i.e. passed every
verifiable instruction of the prompt. One response per prompt at most, so prompts the model finds easy are not
over-represented. This is the "best-of-n then fine-tune" step of e.g. RAFT (Dong et al. 2023) and of Llama 2's
rejection-sampling fine-tuning, with a verifier instead of a reward model.

With `rewrite`, a prompt none of whose samples passed can still give a target: the first finished sample that a
mechanical edit (`prefalign.pairs.rewrite`: letter case, quotes, commas, added text, layout, a cut) makes pass
every check, kept with its `source` ("rewrite:..."). It shows the model instructions it never follows on its own.
Failing that, the first sample cut at the token limit that, trimmed back to its last complete sentence (and edited as
above), passes every check ("rewrite:trim..."): it shows an answer that ends within the budget.

With `max_repetition`, a response that repeats more than that share of its word 4-grams
(`prefalign.text_metrics.repetition`) is never a target, whatever the checks say: the verifier accepts a loop that
happens to have the asked-for shape (four bullets that are one bullet written four times), and SFT would teach it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..generate import GenerationConfig, generate
from ..judges.base import Judge, JudgeItem
from ..text_metrics import repetition

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class SamplingReport:
    prompts: int = 0
    samples: int = 0
    truncated: int = 0  # cut at max_new_tokens: kept only as a trimmed rewrite
    unscored: int = 0  # the judge could not score them (e.g. a prompt without verifiable instructions)
    passed: int = 0  # finished and accepted
    repetitive: int = 0  # finished and accepted, but repeating more than max_repetition: not kept
    kept: int = 0  # prompts with a kept response
    rewritten: int = 0  # of them, kept as a rewrite of a sample that failed
    trimmed: int = 0  # of the rewrites, trimmed back to a complete sentence
    by_instruction: dict[str, list[int]] = field(default_factory=dict)  # id -> [followed, seen] over all samples

    def to_json(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "truncated": self.truncated,
            "unscored": self.unscored,
            "passed": self.passed,
            "repetitive": self.repetitive,
            "kept": self.kept,
            "rewritten": self.rewritten,
            "trimmed": self.trimmed,
            "kept_fraction": self.kept / self.prompts if self.prompts else 0.0,
            "instruction_followed_fraction": {
                key: followed / seen for key, (followed, seen) in sorted(self.by_instruction.items())
            },
        }


def rejection_sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[dict[str, Any]],
    judge: Judge,
    *,
    samples: int,
    generation: GenerationConfig,
    rewrite: bool = False,
    max_repetition: float = 1.0,
) -> tuple[list[dict[str, Any]], SamplingReport]:
    """SFT rows `{"id", "prompt", "completion", "sample"}` (one per prompt at most; a rewrite also has `source`) and
    what happened to every sample."""
    report = SamplingReport(prompts=len(prompts))
    kept: dict[int, dict[str, Any]] = {}
    # prompt index -> (sample, text, whether it was cut at the token limit) of each of its failing samples
    failed: dict[int, list[tuple[int, str, bool]]] = {}
    by_instruction: dict[str, Counter] = {}
    texts = [p["prompt"] for p in prompts]
    metas = [{k: p[k] for k in ("instruction_id_list", "kwargs") if k in p} for p in prompts]
    for j in range(samples):
        setting = replace(generation, seed=generation.seed + j)
        outputs = generate(model, tokenizer, texts, setting)
        scores = judge.score([JudgeItem(t, g.text, m) for t, g, m in zip(texts, outputs, metas)])
        for index, (output, score) in enumerate(zip(outputs, scores)):
            report.samples += 1
            for result in score.details.get("instructions", []):
                counter = by_instruction.setdefault(result["id"], Counter())
                counter["followed"] += bool(result["strict"])
                counter["seen"] += 1
            if output.finish_reason != "eos":
                report.truncated += 1
                if score.value is not None:  # a trimmed rewrite may still pass
                    failed.setdefault(index, []).append((j, output.text, True))
                continue
            if score.value is None:
                report.unscored += 1
                continue
            if score.value < 1.0:
                failed.setdefault(index, []).append((j, output.text, False))
                continue
            if repetition(output.text) > max_repetition:
                report.repetitive += 1
                continue
            report.passed += 1
            if index not in kept and output.text:
                kept[index] = {
                    "id": prompts[index].get("id", f"#{index + 1}"),
                    "prompt": texts[index],
                    "completion": output.text,
                    "sample": j,
                }
    if rewrite:
        rewrites = _rewrite_targets(prompts, {i: f for i, f in failed.items() if i not in kept}, max_repetition)
        report.rewritten = len(rewrites)
        report.trimmed = sum(row["source"].startswith("rewrite:trim") for row in rewrites.values())
        kept.update(rewrites)
    report.kept = len(kept)
    report.by_instruction = {key: [c["followed"], c["seen"]] for key, c in by_instruction.items()}
    return [kept[i] for i in sorted(kept)], report


def _rewrite_targets(
    prompts: list[dict[str, Any]], failed: dict[int, list[tuple[int, str, bool]]], max_repetition: float = 1.0
) -> dict[int, dict[str, Any]]:
    """For each prompt index of `failed`, the first of its failing samples that a rewrite makes pass every check
    (and repeat no more than `max_repetition`), trying the finished samples before those cut at the token limit."""
    from ..judges.verifier import VerifierJudge
    from ..pairs.rewrite import rewrite_response

    verifier = VerifierJudge("strict")
    targets = {}
    for index in sorted(failed):
        prompt = prompts[index]
        for j, text, truncated in sorted(failed[index], key=lambda sample: sample[2]):
            rewrite = rewrite_response(verifier, prompt["prompt"], text, prompt, truncated=truncated)
            if rewrite is not None and rewrite.score.value == 1.0 and repetition(rewrite.text) <= max_repetition:
                targets[index] = {
                    "id": prompt.get("id", f"#{index + 1}"),
                    "prompt": prompt["prompt"],
                    "completion": rewrite.text,
                    "sample": j,
                    "source": rewrite.source,
                }
                break
    return targets
