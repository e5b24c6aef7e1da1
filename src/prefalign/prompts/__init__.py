"""The built-in prompt set: everyday topics x verifiable instructions, for the embedded demo.

Each prompt is a short task about a topic ("Explain the water cycle to a child.") followed by one to three IFEval
instructions with their arguments ("Use fewer than 40 words. Do not use any commas."). The verifier judge checks the
instructions, so preference pairs can be built and a policy evaluated with no human or LLM in the loop.

Choices, and why:

* Instructions are ones a 135M instruct model follows sometimes but not always (letter case, commas, length, title,
  bullets, postscript, keywords...): a judge that always or never passes gives only ties, which make no pairs.
* Train and held-out prompts use disjoint topic lists, so a held-out score measures instruction following on topics
  the policy never trained on. The topic lists are fixed; the seed picks tasks, instructions and arguments.
* Instruction texts are our own plain phrasings rather than IFEval's (which read, e.g., "Include keywords ['a', 'b'] in
  the response."): a small model follows plain English better. Each says exactly what its checker tests.
* Every instruction has several phrasings, and the last of each is used by held-out prompts only: half the held-out
  prompts are worded entirely in such unseen phrasings (`unseen_phrasing: true`), so an evaluation can tell a model
  that learned the instruction from one that learned a wording of it.
* Every prompt draws from its own generator, seeded from (seed, split, topic, slot), so a prompt does not change when
  topics are added elsewhere in the lists.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from ..errors import PrefalignError
from ..fileio import write_jsonl_atomic
from .instructions import INSTRUCTIONS, UNSEEN_PHRASING_FRACTION, InstructionKind, conflicts
from .topics import HELDOUT_TOPICS, TASKS, TRAIN_TOPICS

__all__ = [
    "HELDOUT_TOPICS",
    "INSTRUCTIONS",
    "SPLITS",
    "TRAIN_TOPICS",
    "InstructionKind",
    "builtin_prompts",
    "conflicts",
    "write_prompts",
]

Split = Literal["train", "heldout", "all"]
SPLITS = ("train", "heldout", "all")

# Prompts per topic: 120 train topics x 6 = 720 train prompts; 40 held-out topics x 6 = 240 held-out prompts.
PROMPTS_PER_TOPIC = 6


def _pick_instructions(rng: random.Random) -> tuple[list[str], list[dict[str, Any]]]:
    # One instruction for 40% of prompts, two for 40%, three for 20%: single ones teach each rule, combinations are
    # where a small model starts to fail.
    count = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    chosen: list[str] = []
    while len(chosen) < count:
        allowed = [i for i in INSTRUCTIONS if not any(conflicts(i, c) for c in chosen)]
        chosen.append(rng.choice(allowed))
    return chosen, [INSTRUCTIONS[i].sample(rng) for i in chosen]


def _pick_phrasings(rng: random.Random, split: str, instruction_ids: list[str]) -> tuple[list[int], bool]:
    """The phrasing of each instruction, and whether they are all held-out-only ones: a held-out prompt is phrased
    entirely in unseen wordings with probability `UNSEEN_PHRASING_FRACTION`, otherwise (and always for train) every
    instruction takes one of its train phrasings."""
    unseen = split == "heldout" and rng.random() < UNSEEN_PHRASING_FRACTION
    kinds = [INSTRUCTIONS[i] for i in instruction_ids]
    if unseen:
        return [rng.randrange(k.train_phrasings, len(k.phrasings)) for k in kinds], True
    return [rng.randrange(k.train_phrasings) for k in kinds], False


def _topic_prompts(split: str, topic: str, seed: int) -> list[dict[str, Any]]:
    tasks = random.Random(f"prefalign-tasks/{seed}/{split}/{topic}").sample(TASKS, PROMPTS_PER_TOPIC)
    records = []
    for slot, task in enumerate(tasks):
        rng = random.Random(f"prefalign-prompt/{seed}/{split}/{topic}/{slot}")
        instruction_ids, kwargs = _pick_instructions(rng)
        phrasings, unseen = _pick_phrasings(rng, split, instruction_ids)
        described = [INSTRUCTIONS[i].describe(k, n) for i, k, n in zip(instruction_ids, kwargs, phrasings)]
        records.append(
            {
                "split": split,
                "topic": topic,
                "prompt": " ".join([task.format(topic=topic), *described]),
                "instruction_id_list": instruction_ids,
                "kwargs": kwargs,
                "phrasings": phrasings,
                "unseen_phrasing": unseen,
            }
        )
    return records


def builtin_prompts(seed: int = 0, split: Split = "all") -> list[dict[str, Any]]:
    """The built-in prompts of `split` ("train", "heldout" or "all": train then held-out), deterministic in `seed`.

    Each record: `id` ("train-0000", "heldout-0000", ...), `split`, `topic`, `prompt` (a string), the verifier's
    `instruction_id_list` and `kwargs` (IFEval's field names), `phrasings` (the phrasing number of each instruction,
    see `InstructionKind.phrasings`) and `unseen_phrasing` (true when every instruction is worded in a held-out-only
    phrasing, which no train prompt uses).
    """
    if split not in SPLITS:
        raise PrefalignError(f"unknown prompt split {split!r}; expected one of {', '.join(SPLITS)}")
    records = []
    for name, topics in (("train", TRAIN_TOPICS), ("heldout", HELDOUT_TOPICS)):
        if split not in (name, "all"):
            continue
        split_records = [record for topic in topics for record in _topic_prompts(name, topic, seed)]
        records += [{"id": f"{name}-{number:04d}", **record} for number, record in enumerate(split_records)]
    return records


def write_prompts(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write prompt records as JSON Lines (through a temporary file renamed into place); return how many."""
    path = Path(path)
    if not path.parent.is_dir():
        raise PrefalignError(f"{path}: no such directory {path.parent}")
    return write_jsonl_atomic(path, records)
