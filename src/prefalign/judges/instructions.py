"""The IFEval instruction checkers prefalign uses: if-verifiable's, with two replaced so that all of them run offline.

if-verifiable (PyPI) carries Google's IFEval checkers. Two of them call NLTK functions that need the `punkt_tab`
sentence model, which NLTK fetches from the internet on first use and which this project never downloads at run time:

* `length_constraints:number_sentences` counts sentences with `nltk.sent_tokenize`;
* `change_case:capital_word_frequency` splits words with `nltk.word_tokenize`, which sentence-splits with punkt first.

The replacements below keep IFEval's arguments, descriptions and comparison rules and change only the splitting:
sentences come from the rule-based splitter that ships with IFEval itself (`split_into_sentences`, regular expressions
for abbreviations, initials, decimals and ellipses), words from NLTK's Treebank word tokenizer, which needs no data
files. Counts can differ from punkt's on unusual abbreviations; on ordinary prose they agree.
"""

from __future__ import annotations

from typing import Any

import langdetect
from if_verifiable.ifeval import instructions as ifeval_instructions
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
from if_verifiable.ifeval.instructions_util import split_into_sentences
from nltk.tokenize import NLTKWordTokenizer

# langdetect (used by the language and letter-case checkers) samples at random unless seeded; a judge must give the
# same answer for the same text every time, or a resumed run would not reproduce an uninterrupted one.
langdetect.DetectorFactory.seed = 0

_WORD_TOKENIZER = NLTKWordTokenizer()


def count_sentences(text: str) -> int:
    """Number of sentences in `text`, by IFEval's rule-based splitter (no NLTK data needed)."""
    return len([s for s in split_into_sentences(text) if s])


def tokenize_words(text: str) -> list[str]:
    """Word tokens as `nltk.word_tokenize` gives them, with the punkt sentence step replaced by the offline splitter."""
    return [token for sentence in split_into_sentences(text) for token in _WORD_TOKENIZER.tokenize(sentence)]


class OfflineNumberOfSentences(ifeval_instructions.NumberOfSentences):
    """`length_constraints:number_sentences` without punkt."""

    def check_following(self, value: str) -> bool:
        num_sentences = count_sentences(value)
        if self._comparison_relation == "less than":
            return num_sentences < self._num_sentences_threshold
        return num_sentences >= self._num_sentences_threshold


class OfflineCapitalWordFrequency(ifeval_instructions.CapitalWordFrequencyChecker):
    """`change_case:capital_word_frequency` without punkt."""

    def check_following(self, value: str) -> bool:
        capital_words = sum(1 for word in tokenize_words(value) if word.isupper())
        if self._comparison_relation == "less than":
            return capital_words < self._frequency
        return capital_words >= self._frequency


# Instruction id -> checker class. Every entry runs offline.
CHECKERS: dict[str, type[Any]] = {
    **INSTRUCTION_DICT,
    "length_constraints:number_sentences": OfflineNumberOfSentences,
    "change_case:capital_word_frequency": OfflineCapitalWordFrequency,
}
