"""The built-in prompt set's verifiable instructions: how each draws its IFEval arguments, its phrasings (the last
held out), and which instructions conflict."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
