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
* Every prompt draws from its own generator, seeded from (seed, split, topic, slot), so a prompt does not change when
  topics are added elsewhere in the lists.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import PrefalignError
from .fileio import write_jsonl_atomic

Split = Literal["train", "heldout", "all"]
SPLITS = ("train", "heldout", "all")

# Prompts per topic: 110 train topics x 4 = 440 train prompts; 30 held-out topics x 4 = 120 held-out prompts.
PROMPTS_PER_TOPIC = 4

TRAIN_TOPICS: tuple[str, ...] = (
    "recycling plastic bottles",
    "the water cycle",
    "saving money for a bicycle",
    "keeping houseplants alive",
    "packing for a beach trip",
    "making friends at a new school",
    "brushing your teeth",
    "learning to ride a bike",
    "baking bread at home",
    "walking a dog",
    "planting tomatoes",
    "rainy days",
    "the first day of spring",
    "visiting a library",
    "a good night's sleep",
    "drinking enough water",
    "making a sandwich",
    "cleaning your room",
    "riding the bus",
    "camping in the woods",
    "learning to swim",
    "writing a thank-you letter",
    "flying a kite",
    "building a snowman",
    "feeding birds in winter",
    "a trip to the zoo",
    "making pancakes",
    "sharing toys",
    "washing your hands",
    "shopping for groceries",
    "cooking rice",
    "growing sunflowers",
    "picking apples",
    "a picnic in the park",
    "learning to tie shoelaces",
    "recycling paper",
    "saving electricity",
    "turning off taps",
    "taking care of a cat",
    "a visit to the dentist",
    "making lemonade",
    "playing chess",
    "learning a new language",
    "reading before bed",
    "keeping a diary",
    "going for a morning run",
    "stretching after exercise",
    "eating more vegetables",
    "packing a school lunch",
    "doing homework on time",
    "birthday parties",
    "writing a shopping list",
    "watching the stars",
    "the phases of the moon",
    "how rainbows form",
    "thunderstorms",
    "autumn leaves",
    "the ocean tides",
    "how bees make honey",
    "why leaves are green",
    "caring for a goldfish",
    "fixing a flat bicycle tire",
    "painting a fence",
    "setting the table",
    "folding laundry",
    "sewing on a button",
    "learning to whistle",
    "singing in a choir",
    "playing the guitar",
    "drawing with crayons",
    "making paper planes",
    "solving a jigsaw puzzle",
    "visiting grandparents",
    "moving to a new house",
    "being kind to neighbors",
    "saying sorry",
    "waiting in line",
    "crossing the street safely",
    "wearing a bike helmet",
    "sunscreen at the beach",
    "staying warm in winter",
    "a snow day",
    "the school bus driver",
    "firefighters",
    "mail carriers",
    "the weekly farmers market",
    "composting food scraps",
    "turning off lights",
    "riding a train",
    "airport security",
    "sending a postcard",
    "learning to juggle",
    "making a budget",
    "saving for a rainy day",
    "lending a book",
    "borrowing a tool",
    "a lost umbrella",
    "finding a lost pet",
    "adopting a puppy",
    "a quiet Sunday morning",
    "planning a weekend trip",
    "a school science fair",
    "a spelling test",
    "practicing the piano",
    "making soup",
    "a snack after school",
    "a hike up a hill",
    "collecting seashells",
    "cooking eggs for breakfast",
    "a school field trip",
)

HELDOUT_TOPICS: tuple[str, ...] = (
    "visiting a museum",
    "baking cookies",
    "growing herbs on a windowsill",
    "learning to skate",
    "the night sky",
    "a trip to the mountains",
    "volcanoes",
    "how plants drink water",
    "keeping a fish tank clean",
    "making a smoothie",
    "writing a poem",
    "a day at the fair",
    "taking photos",
    "repairing a toy",
    "learning to knit",
    "riding a ferry",
    "a winter holiday",
    "helping a friend move",
    "brewing tea",
    "a school play",
    "learning to type",
    "the life of a butterfly",
    "a lemonade stand",
    "visiting a farm",
    "cleaning up a beach",
    "a long car ride",
    "choosing a good book",
    "teaching a dog a trick",
    "a bake sale",
    "making a scrapbook",
)

# Short tasks, so answers stay short: the demo generates about a hundred tokens per answer on a laptop CPU.
TASKS: tuple[str, ...] = (
    "Write a short note about {topic}.",
    "Explain {topic} to a child.",
    "Give a friend some advice about {topic}.",
    "Describe {topic} in a few sentences.",
    "Write a short blog post about {topic}.",
    "Write a short story about {topic}.",
    "Write a short message to a neighbor about {topic}.",
    "Share a few thoughts on {topic}.",
)

_RELATIONS = ("less than", "at least")
_KEYWORDS = ("simple", "friend", "today", "careful", "together", "enjoy", "easy", "remember", "happy", "time")
# Disjoint from _KEYWORDS and from every end phrase, so no prompt asks for a word and forbids it.
_FORBIDDEN = ("very", "really", "also", "just", "great", "good")
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Have a nice day.", "That is all.")


def _quoted(words: list[str], joiner: str) -> str:
    quoted = [f'"{word}"' for word in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {joiner} {quoted[-1]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True)
class InstructionKind:
    """One verifiable instruction: how to draw its IFEval arguments, and how to say it to the model."""

    id: str
    sample: Callable[[random.Random], dict[str, Any]]
    describe: Callable[[dict[str, Any]], str]


def _words_rule(rng: random.Random) -> dict[str, Any]:
    relation = rng.choice(_RELATIONS)
    limits = (30, 40, 50, 60) if relation == "less than" else (20, 30, 40)
    return {"num_words": rng.choice(limits), "relation": relation}


def _sentences_rule(rng: random.Random) -> dict[str, Any]:
    relation = rng.choice(_RELATIONS)
    return {"num_sentences": rng.choice((3, 4, 5) if relation == "less than" else (2, 3, 4)), "relation": relation}


INSTRUCTIONS: dict[str, InstructionKind] = {
    kind.id: kind
    for kind in (
        InstructionKind(
            "change_case:english_lowercase",
            lambda rng: {},
            lambda kw: "Write your entire answer in English using only lowercase letters, with no capital letters.",
        ),
        InstructionKind(
            "change_case:english_capital",
            lambda rng: {},
            lambda kw: "Write your entire answer in English using only capital letters.",
        ),
        InstructionKind("punctuation:no_comma", lambda rng: {}, lambda kw: "Do not use any commas in your answer."),
        InstructionKind(
            "length_constraints:number_words",
            _words_rule,
            lambda kw: f"Use {'fewer than' if kw['relation'] == 'less than' else 'at least'} {kw['num_words']} words.",
        ),
        InstructionKind(
            "length_constraints:number_sentences",
            _sentences_rule,
            lambda kw: (
                f"Write {'fewer than' if kw['relation'] == 'less than' else 'at least'} "
                f"{kw['num_sentences']} sentences."
            ),
        ),
        InstructionKind(
            "length_constraints:number_paragraphs",
            lambda rng: {"num_paragraphs": rng.choice((2, 3))},
            lambda kw: f"Write exactly {kw['num_paragraphs']} paragraphs, separated by a line with only *** on it.",
        ),
        InstructionKind(
            "detectable_format:number_bullet_lists",
            lambda rng: {"num_bullets": rng.choice((2, 3, 4))},
            lambda kw: f'Give exactly {kw["num_bullets"]} bullet points, each on its own line starting with "* ".',
        ),
        InstructionKind(
            "detectable_format:title",
            lambda rng: {},
            lambda kw: "Give your answer a title wrapped in double angular brackets, such as <<a day out>>.",
        ),
        InstructionKind(
            "detectable_format:number_highlighted_sections",
            lambda rng: {"num_highlights": rng.choice((1, 2))},
            lambda kw: (
                f"Highlight at least {_plural(kw['num_highlights'], 'part')} of your answer with markdown, "
                "like *this part*."
            ),
        ),
        InstructionKind(
            "detectable_content:postscript",
            lambda rng: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
            lambda kw: f"At the end of your answer, add a postscript starting with {kw['postscript_marker']}",
        ),
        InstructionKind(
            "detectable_content:number_placeholders",
            lambda rng: {"num_placeholders": rng.choice((1, 2))},
            lambda kw: (
                f"Include at least {_plural(kw['num_placeholders'], 'placeholder')} in square brackets, such as [name]."
            ),
        ),
        InstructionKind(
            "startend:end_checker",
            lambda rng: {"end_phrase": rng.choice(_END_PHRASES)},
            lambda kw: f'End your answer with the exact phrase "{kw["end_phrase"]}" and nothing after it.',
        ),
        InstructionKind(
            "startend:quotation",
            lambda rng: {},
            lambda kw: "Wrap your entire answer in double quotation marks.",
        ),
        InstructionKind(
            "keywords:existence",
            lambda rng: {"keywords": sorted(rng.sample(_KEYWORDS, rng.choice((1, 2))))},
            lambda kw: (
                f"Use the {'word' if len(kw['keywords']) == 1 else 'words'} {_quoted(kw['keywords'], 'and')} "
                "in your answer."
            ),
        ),
        InstructionKind(
            "keywords:frequency",
            lambda rng: {"keyword": rng.choice(_KEYWORDS), "frequency": rng.choice((2, 3)), "relation": "at least"},
            lambda kw: f'Use the word "{kw["keyword"]}" at least {kw["frequency"]} times.',
        ),
        InstructionKind(
            "keywords:forbidden_words",
            lambda rng: {"forbidden_words": sorted(rng.sample(_FORBIDDEN, rng.choice((1, 2))))},
            lambda kw: (
                f"Do not use the {'word' if len(kw['forbidden_words']) == 1 else 'words'} "
                f"{_quoted(kw['forbidden_words'], 'or')}."
            ),
        ),
    )
}

# Pairs that cannot be asked together: they contradict each other (lowercase vs capitals), one checker miscounts the
# other's output (a highlighted *phrase* at the start of a line counts as a bullet), or they fight over the layout
# (paragraphs vs bullets vs sentence counts). Each instruction also conflicts with itself.
_CONFLICTING_PAIRS = (
    ("change_case:english_lowercase", "change_case:english_capital"),
    # The end phrase and postscript marker are written in mixed case; asking for one case besides reads as a trap.
    ("change_case:english_lowercase", "startend:end_checker"),
    ("change_case:english_capital", "startend:end_checker"),
    ("change_case:english_lowercase", "detectable_content:postscript"),
    ("length_constraints:number_paragraphs", "detectable_format:number_bullet_lists"),
    ("length_constraints:number_paragraphs", "length_constraints:number_sentences"),
    ("length_constraints:number_paragraphs", "detectable_format:number_highlighted_sections"),
    ("detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections"),
    ("detectable_format:number_bullet_lists", "length_constraints:number_sentences"),
    ("detectable_format:number_bullet_lists", "startend:quotation"),  # an opening quote hides the first bullet
    ("detectable_format:title", "startend:quotation"),
    ("startend:end_checker", "detectable_content:postscript"),  # both claim the end of the answer
    ("startend:end_checker", "startend:quotation"),
    ("keywords:existence", "keywords:frequency"),
    ("length_constraints:number_words", "length_constraints:number_sentences"),
)


def conflicts(first: str, second: str) -> bool:
    """True when instructions `first` and `second` may not appear in the same prompt."""
    return first == second or (first, second) in _CONFLICTING_PAIRS or (second, first) in _CONFLICTING_PAIRS


def _pick_instructions(rng: random.Random) -> tuple[list[str], list[dict[str, Any]]]:
    # One instruction for 40% of prompts, two for 40%, three for 20%: single ones teach each rule, combinations are
    # where a small model starts to fail.
    count = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    chosen: list[str] = []
    while len(chosen) < count:
        allowed = [i for i in INSTRUCTIONS if not any(conflicts(i, c) for c in chosen)]
        chosen.append(rng.choice(allowed))
    return chosen, [INSTRUCTIONS[i].sample(rng) for i in chosen]


def _topic_prompts(split: str, topic: str, seed: int) -> list[dict[str, Any]]:
    tasks = random.Random(f"prefalign-tasks/{seed}/{split}/{topic}").sample(TASKS, PROMPTS_PER_TOPIC)
    records = []
    for slot, task in enumerate(tasks):
        rng = random.Random(f"prefalign-prompt/{seed}/{split}/{topic}/{slot}")
        instruction_ids, kwargs = _pick_instructions(rng)
        sentences = [task.format(topic=topic)] + [INSTRUCTIONS[i].describe(k) for i, k in zip(instruction_ids, kwargs)]
        records.append(
            {
                "split": split,
                "topic": topic,
                "prompt": " ".join(sentences),
                "instruction_id_list": instruction_ids,
                "kwargs": kwargs,
            }
        )
    return records


def builtin_prompts(seed: int = 0, split: Split = "all") -> list[dict[str, Any]]:
    """The built-in prompts of `split` ("train", "heldout" or "all": train then held-out), deterministic in `seed`.

    Each record: `id` ("train-0000", "heldout-0000", ...), `split`, `topic`, `prompt` (a string), and the verifier's
    `instruction_id_list` and `kwargs` (IFEval's field names).
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
