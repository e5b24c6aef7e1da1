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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import PrefalignError
from .fileio import write_jsonl_atomic

Split = Literal["train", "heldout", "all"]
SPLITS = ("train", "heldout", "all")

# Prompts per topic: 120 train topics x 6 = 720 train prompts; 40 held-out topics x 6 = 240 held-out prompts.
PROMPTS_PER_TOPIC = 6

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
    "washing the car",
    "raking leaves",
    "a rainy afternoon indoors",
    "making a birthday card",
    "learning to cook pasta",
    "visiting a lighthouse",
    "watering the garden",
    "a trip to the bakery",
    "building a sandcastle",
    "learning to draw animals",
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
    "a sleepover at a friend's house",
    "planting a tree",
    "learning to row a boat",
    "a visit to an aquarium",
    "making a kite",
    "a family game night",
    "the first snowfall",
    "caring for a rabbit",
    "a trip to the post office",
    "learning magic tricks",
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
    "Write a few tips about {topic}.",
    "Write a short diary entry about {topic}.",
    "Answer a friend who asks you about {topic}.",
    "Write a short speech for a class about {topic}.",
)

_RELATIONS = ("less than", "at least")
_KEYWORDS = ("simple", "friend", "today", "careful", "together", "enjoy", "easy", "remember", "happy", "time")
# Disjoint from _KEYWORDS and from every end phrase, so no prompt asks for a word and forbids it.
_FORBIDDEN = ("very", "really", "also", "just", "great", "good")
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Have a nice day.", "That is all.")

# The last phrasing of every instruction kind is held-out-only: no train prompt uses it.
HELDOUT_ONLY_PHRASINGS = 1
# The fraction of held-out prompts whose every instruction is phrased in a held-out-only wording.
UNSEEN_PHRASING_FRACTION = 0.5


def _quoted(words: list[str], joiner: str) -> str:
    quoted = [f'"{word}"' for word in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {joiner} {quoted[-1]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


Phrasing = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class InstructionKind:
    """One verifiable instruction: how to draw its IFEval arguments, and the ways to say it to the model. Each
    phrasing says exactly what the checker tests; the last `HELDOUT_ONLY_PHRASINGS` are for held-out prompts only."""

    id: str
    sample: Callable[[random.Random], dict[str, Any]]
    phrasings: tuple[Phrasing, ...]

    def describe(self, kwargs: dict[str, Any], phrasing: int = 0) -> str:
        """The instruction with arguments `kwargs`, in phrasing number `phrasing`."""
        return self.phrasings[phrasing](kwargs)

    @property
    def train_phrasings(self) -> int:
        """How many phrasings train prompts draw from: phrasings 0 .. train_phrasings - 1."""
        return len(self.phrasings) - HELDOUT_ONLY_PHRASINGS

    def is_heldout_only(self, phrasing: int) -> bool:
        return phrasing >= self.train_phrasings


def _words_rule(rng: random.Random) -> dict[str, Any]:
    relation = rng.choice(_RELATIONS)
    limits = (30, 40, 50, 60) if relation == "less than" else (20, 30, 40)
    return {"num_words": rng.choice(limits), "relation": relation}


def _sentences_rule(rng: random.Random) -> dict[str, Any]:
    relation = rng.choice(_RELATIONS)
    return {"num_sentences": rng.choice((3, 4, 5) if relation == "less than" else (2, 3, 4)), "relation": relation}


def _relational(less: str, at_least: str, count_key: str) -> Phrasing:
    """A phrasing of a "less than" / "at least" count rule: `less` or `at_least` with {n} filled in."""
    return lambda kw: (less if kw["relation"] == "less than" else at_least).format(n=kw[count_key])


def _words(kw: dict[str, Any], key: str) -> tuple[str, str]:
    """("word" or "words", the quoted words) for a keyword list argument."""
    return ("word" if len(kw[key]) == 1 else "words"), _quoted(kw[key], "and")


def _forbidden(kw: dict[str, Any]) -> tuple[str, str]:
    return ("word" if len(kw["forbidden_words"]) == 1 else "words"), _quoted(kw["forbidden_words"], "or")


INSTRUCTIONS: dict[str, InstructionKind] = {
    kind.id: kind
    for kind in (
        InstructionKind(
            "change_case:english_lowercase",
            lambda rng: {},
            (
                lambda kw: "Write your entire answer in English using only lowercase letters, with no capital letters.",
                lambda kw: (
                    "Answer in English in lowercase only: no capital letters anywhere, not even to start a sentence."
                ),
                lambda kw: "Do not use any capital letters: write the whole answer in lowercase English.",
                lambda kw: "Your whole reply must be in English and entirely in lowercase letters.",
            ),
        ),
        InstructionKind(
            "change_case:english_capital",
            lambda rng: {},
            (
                lambda kw: "Write your entire answer in English using only capital letters.",
                lambda kw: "Answer in English with every letter in uppercase.",
                lambda kw: "Do not use any lowercase letters: write the whole answer in English capital letters.",
                lambda kw: "Your whole reply must be in English and entirely in capital letters.",
            ),
        ),
        InstructionKind(
            "punctuation:no_comma",
            lambda rng: {},
            (
                lambda kw: "Do not use any commas in your answer.",
                lambda kw: "Your answer must not contain a single comma.",
                lambda kw: "Write without commas: not one comma anywhere in the answer.",
                lambda kw: "Leave the comma out of your reply completely.",
            ),
        ),
        InstructionKind(
            "length_constraints:number_words",
            _words_rule,
            (
                _relational("Use fewer than {n} words.", "Use at least {n} words.", "num_words"),
                _relational("Keep your answer under {n} words.", "Make your answer {n} words or longer.", "num_words"),
                _relational(
                    "Your answer must be shorter than {n} words.",
                    "Your answer must have at least {n} words.",
                    "num_words",
                ),
                _relational(
                    "Write a reply of fewer than {n} words in total.",
                    "Write a reply of {n} words or more in total.",
                    "num_words",
                ),
            ),
        ),
        InstructionKind(
            "length_constraints:number_sentences",
            _sentences_rule,
            (
                _relational("Write fewer than {n} sentences.", "Write at least {n} sentences.", "num_sentences"),
                _relational(
                    "Keep your answer to fewer than {n} sentences.",
                    "Your answer must have at least {n} sentences.",
                    "num_sentences",
                ),
                _relational("Answer in less than {n} sentences.", "Answer in {n} or more sentences.", "num_sentences"),
                _relational(
                    "Your reply should contain fewer than {n} sentences in total.",
                    "Your reply should contain {n} or more sentences in total.",
                    "num_sentences",
                ),
            ),
        ),
        InstructionKind(
            "length_constraints:number_paragraphs",
            lambda rng: {"num_paragraphs": rng.choice((2, 3))},
            (
                lambda kw: f"Write exactly {kw['num_paragraphs']} paragraphs, separated by a line with only *** on it.",
                lambda kw: (
                    f"Split your answer into exactly {kw['num_paragraphs']} paragraphs, with the markdown "
                    "divider *** between them."
                ),
                lambda kw: f"Give exactly {kw['num_paragraphs']} paragraphs and separate each from the next with ***.",
                lambda kw: (
                    f"Your reply must have {kw['num_paragraphs']} paragraphs, no more and no fewer, divided "
                    "from each other by ***."
                ),
            ),
        ),
        InstructionKind(
            "detectable_format:number_bullet_lists",
            lambda rng: {"num_bullets": rng.choice((2, 3, 4))},
            (
                lambda kw: f'Give exactly {kw["num_bullets"]} bullet points, each on its own line starting with "* ".',
                lambda kw: (
                    f'Use exactly {kw["num_bullets"]} markdown bullet points, such as "* first point", and '
                    "no other bullets."
                ),
                lambda kw: (
                    f'Include {kw["num_bullets"]} bullet points, no more and no fewer, each a line beginning with "* ".'
                ),
                lambda kw: (
                    f"Your reply must list exactly {kw['num_bullets']} points as markdown bullets, each line "
                    'starting with "* ".'
                ),
            ),
        ),
        InstructionKind(
            "detectable_format:title",
            lambda rng: {},
            (
                lambda kw: "Give your answer a title wrapped in double angular brackets, such as <<a day out>>.",
                lambda kw: "Include a title in double angular brackets, for example <<a sunny day>>.",
                lambda kw: "Put a title in your answer, written as <<title>> with double angular brackets.",
                lambda kw: "Your reply needs a title enclosed in double angular brackets, as in <<my story>>.",
            ),
        ),
        InstructionKind(
            "detectable_format:number_highlighted_sections",
            lambda rng: {"num_highlights": rng.choice((1, 2))},
            (
                lambda kw: (
                    f"Highlight at least {_plural(kw['num_highlights'], 'part')} of your answer with markdown, "
                    "like *this part*."
                ),
                lambda kw: (
                    f"Use markdown to highlight at least {_plural(kw['num_highlights'], 'section')}, for "
                    "example *an important idea*."
                ),
                lambda kw: (
                    f"Mark at least {_plural(kw['num_highlights'], 'phrase')} of your answer as highlighted "
                    "by wrapping it in asterisks, like *this*."
                ),
                lambda kw: (
                    f"Emphasise at least {_plural(kw['num_highlights'], 'part')} of your reply with markdown "
                    "asterisks, as in *highlighted text*."
                ),
            ),
        ),
        InstructionKind(
            "detectable_content:postscript",
            lambda rng: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
            (
                lambda kw: f"At the end of your answer, add a postscript starting with {kw['postscript_marker']}",
                lambda kw: f"Finish with a postscript that begins with {kw['postscript_marker']}",
                lambda kw: f"After the main answer, add a short note starting with {kw['postscript_marker']}",
                lambda kw: f"Close your reply with a postscript introduced by {kw['postscript_marker']}",
            ),
        ),
        InstructionKind(
            "detectable_content:number_placeholders",
            lambda rng: {"num_placeholders": rng.choice((1, 2))},
            (
                lambda kw: (
                    f"Include at least {_plural(kw['num_placeholders'], 'placeholder')} in square brackets, "
                    "such as [name]."
                ),
                lambda kw: (
                    f"Leave at least {_plural(kw['num_placeholders'], 'blank')} for the reader to fill in, "
                    "written in square brackets like [address]."
                ),
                lambda kw: (
                    f"Use at least {_plural(kw['num_placeholders'], 'placeholder')} such as [date], in square brackets."
                ),
                lambda kw: (
                    f"Your reply must contain {kw['num_placeholders']} or more bracketed placeholders, for "
                    "example [city]."
                ),
            ),
        ),
        InstructionKind(
            "startend:end_checker",
            lambda rng: {"end_phrase": rng.choice(_END_PHRASES)},
            (
                lambda kw: f'End your answer with the exact phrase "{kw["end_phrase"]}" and nothing after it.',
                lambda kw: f'Finish your answer with the words "{kw["end_phrase"]}", with nothing following them.',
                lambda kw: f'Make "{kw["end_phrase"]}" the final words of your answer.',
                lambda kw: (
                    f'Your reply must close with the exact phrase "{kw["end_phrase"]}", and nothing may come after it.'
                ),
            ),
        ),
        InstructionKind(
            "startend:quotation",
            lambda rng: {},
            (
                lambda kw: "Wrap your entire answer in double quotation marks.",
                lambda kw: 'Put your whole answer inside double quotes, starting and ending with ".',
                lambda kw: "Enclose the complete answer in double quotation marks.",
                lambda kw: "Your entire reply must begin and end with a double quotation mark.",
            ),
        ),
        InstructionKind(
            "keywords:existence",
            lambda rng: {"keywords": sorted(rng.sample(_KEYWORDS, rng.choice((1, 2))))},
            (
                lambda kw: "Use the {} {} in your answer.".format(*_words(kw, "keywords")),
                lambda kw: "Include the {} {} somewhere in your answer.".format(*_words(kw, "keywords")),
                lambda kw: "Make sure your answer contains the {} {}.".format(*_words(kw, "keywords")),
                lambda kw: "Your reply must mention the {} {}.".format(*_words(kw, "keywords")),
            ),
        ),
        InstructionKind(
            "keywords:frequency",
            lambda rng: {"keyword": rng.choice(_KEYWORDS), "frequency": rng.choice((2, 3)), "relation": "at least"},
            (
                lambda kw: f'Use the word "{kw["keyword"]}" at least {kw["frequency"]} times.',
                lambda kw: f'Include the word "{kw["keyword"]}" {kw["frequency"]} or more times.',
                lambda kw: f'The word "{kw["keyword"]}" must appear at least {kw["frequency"]} times in your answer.',
                lambda kw: f'Repeat the word "{kw["keyword"]}" in your reply, at least {kw["frequency"]} times in all.',
            ),
        ),
        InstructionKind(
            "keywords:forbidden_words",
            lambda rng: {"forbidden_words": sorted(rng.sample(_FORBIDDEN, rng.choice((1, 2))))},
            (
                lambda kw: "Do not use the {} {}.".format(*_forbidden(kw)),
                lambda kw: "Never write the {} {} in your answer.".format(*_forbidden(kw)),
                lambda kw: "Avoid the {} {} completely.".format(*_forbidden(kw)),
                lambda kw: "Your reply must not contain the {} {}.".format(*_forbidden(kw)),
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
