"""Rewrite pairs: a response edited to follow the instructions it failed, chosen over itself as it was.

Some verifiable instructions can be satisfied by editing a response: change its letter case, wrap it in double
quotes, drop its commas, append the required end phrase or a postscript, put a title on top, take out the words it
must not use; cut it after the sentence that keeps it under a sentence or word limit; stop a list that has too many
items after the asked number (its label-only items, "* *First point*", dropped), or lay the sentences out as the
asked number of bullets or of ***-separated paragraphs; highlight its first sentences in *markdown*. A layout edit
needs enough sentences to lay out, and a cut needs a sentence to keep: where a response has too few, that edit is
not made. A small model that never follows one of them never produces a sampled pair that shows it; the pair
(rewritten response, original response) differs in exactly that instruction, so it teaches exactly that. This is
data synthesis, not sampling: every pair and SFT target made this way says so in its provenance
(`source: "rewrite:english_lowercase+quotation"`).

A response cut at the token limit can be rewritten too, when asked (`truncated=True`): it is first trimmed back to its
last complete sentence or line (`trim_to_boundary`), and "trim" leads its provenance tag. An answer cut mid-sentence
fails most checks on its ending (end phrase, postscript, closing quote, sentence counts); its trimmed version is an
answer the model could have ended there, which is what a model that overruns its budget needs to see.

A rewrite is kept only when the verifier confirms it: the rewritten response follows every instruction it was
edited for, and every instruction the original followed (a rewrite that breaks another
rule, e.g. a postscript that pushes the answer past a sentence limit, is dropped). So the rewritten side never fails a
check the original passes, and passes at least one the original fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..data.records import Text
from ..judges.base import JudgeItem, Score
from ..judges.verifier import VerifierJudge

# An edit returns the edited text, or None when it cannot be made on this text (too few sentences to lay out or keep).
Edit = Callable[[str, dict[str, Any], dict[str, Any]], str | None]


# A sentence ends at . ! or ? (with any closing quotes or brackets) before whitespace or the end of the text.
_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")

_LIST_MARKER = re.compile(r"\s*\d+\.")  # "3." opening a numbered item ends no sentence
# A line's own list marker ("* ", "- ", "3. "), and lines that are only markers or dividers ("***", "* * *", "---").
_ITEM_MARKER = re.compile(r"^\s*(?:[*\-\u2022]|\d+[.)])\s+")
_DIVIDER = re.compile(r"^[\s*\-_=#\u2022]*$")


def _line_before(text: str, end: int) -> str:
    return text[text.rfind("\n", 0, end) + 1 : end]


def _sentence_ends(text: str) -> list[int]:
    """Where each complete sentence of `text` ends (a numbered item's "3." is not an end)."""
    return [m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_MARKER.fullmatch(_line_before(text, m.end()))]


def trim_to_boundary(text: str, keep_at_least: float = 0.5) -> str | None:
    """`text` cut after its last complete sentence or before its last line break, whichever comes later; None when
    that keeps less than `keep_at_least` of it (a trim that drops most of an answer is a different answer)."""
    ends = _sentence_ends(text)
    cut = max(ends[-1] if ends else 0, text.rstrip().rfind("\n"))
    trimmed = text[:cut].rstrip()
    return trimmed if trimmed and len(trimmed) >= keep_at_least * len(text.rstrip()) else None


def _sentences(text: str) -> list[str]:
    """The sentences of `text` as running prose: list markers and divider lines dropped, a line without an end mark
    counted as one sentence."""
    units = []
    for line in text.splitlines():
        if _DIVIDER.fullmatch(line):
            continue
        line = _ITEM_MARKER.sub("", line).strip()
        start = 0
        for end in _sentence_ends(line):
            units.append(line[start:end].strip())
            start = end
        units.append(line[start:].strip())
    return [unit for unit in units if unit]


def _groups(units: list[str], count: int) -> list[str] | None:
    """`units` in `count` consecutive groups as even as can be (earlier groups take the extra); None when too few."""
    if len(units) < count:
        return None
    size, extra = divmod(len(units), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [" ".join(units[bounds[i] : bounds[i + 1]]) for i in range(count)]


_TITLE_LINE = re.compile(r"\s*<<[^\n]+>>[ \t]*\n")


def _laid_out(text: str, count: int, item: str, separator: str) -> str | None:
    """The sentences of `text` in `count` items, each `item` with the group filled in, joined by `separator`; a title
    line on top stays on top, out of the items."""
    title = _TITLE_LINE.match(text)
    head, body = (title.group().strip() + "\n\n", text[title.end() :]) if title else ("", text)
    groups = _groups(_sentences(body), count)
    return None if groups is None else head + separator.join(item.format(group) for group in groups)


# A line the bullet checker counts (IFEval's: "*" and one more character that is not "*", or "-").
_COUNTED_BULLET = re.compile(r"\s*\*[^*].*|\s*-.*")


# An item that only echoes the instructions' example ("* *First point*", "* Second point:") and says nothing.
_LABEL_ONLY = re.compile(r"(?:(?:first|second|third|fourth|fifth|next|last|another)\s+point|point\s*\d*)\W*", re.I)


def _label_only(line: str) -> bool:
    return _LABEL_ONLY.fullmatch(_ITEM_MARKER.sub("", line).replace("*", "").strip()) is not None


def _bullets(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """A list with more items than asked stops after the asked number: its label-only items go ("* *First point*"),
    the lines from the asked number's item to the last item go, and whatever follows the list stays (a closing line,
    a postscript); too few items with content left: no edit. Merging the extra items into the last ones would teach
    run-on bullets. Any other answer (prose, too few items, marker-only lines the checker counts) has its sentences
    laid out as the asked number of bullets."""
    count = kwargs["num_bullets"]
    lines = text.split("\n")
    counted = [i for i, line in enumerate(lines) if _COUNTED_BULLET.fullmatch(line)]
    real_items = all(_ITEM_MARKER.sub("", lines[i]).strip() and not _DIVIDER.fullmatch(lines[i]) for i in counted)
    if len(counted) > count and real_items:
        labels = {i for i in counted if _label_only(lines[i])}
        lines = [line for i, line in enumerate(lines) if i not in labels]
        counted = [i for i, line in enumerate(lines) if _COUNTED_BULLET.fullmatch(line)]
        if len(counted) < count:
            return None
        kept = "\n".join(lines[: counted[count - 1] + 1]).rstrip()
        after = "\n".join(lines[counted[-1] + 1 :]).rstrip()
        return kept + ("\n" + after if after.strip() else "")
    return _laid_out(text, count, "* {}", "\n")


def _paragraphs(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str | None:
    return _laid_out(text, kwargs["num_paragraphs"], "{}", "\n\n***\n\n")


def _highlights(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """The first `num_highlights` sentences without an asterisk or line break wrapped in *...*."""
    spans, start = [], 0
    for end in _sentence_ends(text):
        sentence = text[start:end]
        lead = len(sentence) - len(sentence.lstrip())
        if sentence.strip() and "*" not in sentence and "\n" not in sentence.strip():
            spans.append((start + lead, end))
        start = end
    if len(spans) < kwargs["num_highlights"]:
        return None
    for begin, end in reversed(spans[: kwargs["num_highlights"]]):
        text = f"{text[:begin]}*{text[begin:end]}*{text[end:]}"
    return text


def _fewer_sentences(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Cut after the last sentence that keeps the answer under its sentence limit ("less than" only)."""
    ends = _sentence_ends(text)
    keep = kwargs["num_sentences"] - 1
    if kwargs["relation"] != "less than" or keep < 1 or len(ends) <= keep:
        return None
    return text[: ends[keep - 1]].rstrip()


def _fewer_words(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Cut after the last sentence that keeps the answer under its word limit ("less than" only)."""
    if kwargs["relation"] != "less than":
        return None
    fits = [end for end in _sentence_ends(text) if len(re.findall(r"\w+", text[:end])) < kwargs["num_words"]]
    return text[: fits[-1]].rstrip() if fits and fits[-1] < len(text.rstrip()) else None


def _title(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    topic = meta.get("topic")
    title = topic[:1].upper() + topic[1:] if isinstance(topic, str) and topic.strip() else "My answer"
    return f"<<{title}>>\n\n{text.lstrip()}"


def _postscript(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return f"{text.rstrip()}\n\n{kwargs['postscript_marker']} I hope this helps."


def _end_phrase(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return f"{text.rstrip()}\n\n{kwargs['end_phrase']}"


# Forbidden words whose deletion would leave a sentence without its adjective ("a good idea" -> "a idea") are replaced
# by one of the same kind instead; any other forbidden word (an adverb: "very", "also", "just") is deleted.
_WORD_REPLACEMENTS = {"good": "nice", "great": "wonderful"}


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _sentence_start(text: str, index: int) -> bool:
    return re.search(r"(?:^|[.!?][\"')\]]*\s+|\n\s*)$", text[:index]) is not None


def _without_words(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    """Every forbidden word (whole word, any case, as the checker matches it) replaced or deleted. A deleted word
    takes its comma and following space along ("Also, it rains" -> "It rains"; "it rains, really." -> "it rains.");
    the word after one that opened a sentence is capitalised."""
    for word in kwargs["forbidden_words"]:
        word_pattern = rf"\b{re.escape(word)}\b"
        replacement = _WORD_REPLACEMENTS.get(word.lower())
        if replacement is not None:
            text = re.sub(word_pattern, lambda m, r=replacement: _same_case(r, m.group()), text, flags=re.IGNORECASE)
            continue
        text = re.sub(rf"[ \t]*,?[ \t]*{word_pattern}(?=[.!?;:])", "", text, flags=re.IGNORECASE)

        def delete(match: re.Match[str], text: str = text) -> str:
            after = match.group(1)
            return after.upper() if _sentence_start(text, match.start()) else after

        text = re.sub(rf"{word_pattern},?[ \t]*(\w?)", delete, text, flags=re.IGNORECASE)
    return text


def _no_comma(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return re.sub(r",(?=\s)", "", text).replace(",", " ")  # "a, b" -> "a b"; "a,b" -> "a b"


def _quotation(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    text = text.strip()
    return ("" if text.startswith('"') else '"') + text + ("" if text.endswith('"') and len(text) > 1 else '"')


# Instruction id -> (short name for the provenance, the edit), in the order the edits are applied: cuts first, then
# the layout of what is left, then added text (so commas, letter case and forbidden words are fixed in it too), the
# quotes around everything last.
REWRITES: dict[str, tuple[str, Edit]] = {
    "length_constraints:number_sentences": ("number_sentences", _fewer_sentences),
    "length_constraints:number_words": ("number_words", _fewer_words),
    "detectable_format:number_bullet_lists": ("number_bullet_lists", _bullets),
    "length_constraints:number_paragraphs": ("number_paragraphs", _paragraphs),
    "detectable_format:number_highlighted_sections": ("number_highlighted_sections", _highlights),
    "detectable_format:title": ("title", _title),
    "detectable_content:postscript": ("postscript", _postscript),
    "startend:end_checker": ("end_checker", _end_phrase),
    "keywords:forbidden_words": ("forbidden_words", _without_words),
    "punctuation:no_comma": ("no_comma", _no_comma),
    "change_case:english_lowercase": ("english_lowercase", lambda text, kwargs, meta: text.lower()),
    "change_case:english_capital": ("english_capital", lambda text, kwargs, meta: text.upper()),
    "startend:quotation": ("quotation", _quotation),
}


# The edits that take no argument and change a whole answer. Made to an answer whose prompt did not ask for them,
# they make it worse: an answer in capitals, in quotes or without commas that nobody asked for (contrast pairs,
# `prefalign.pairs.lines.contrast_lines`).
WHOLE_ANSWER_EDITS = (
    "punctuation:no_comma",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "startend:quotation",
)


def apply_edits(text: str, instruction_ids: list[str]) -> str:
    """`text` with the whole-answer edits of `instruction_ids` made, in `REWRITES`' order."""
    for instruction_id in REWRITES:
        if instruction_id in instruction_ids:
            if instruction_id not in WHOLE_ANSWER_EDITS:
                raise ValueError(f"{instruction_id} is not a whole-answer edit")
            edited = REWRITES[instruction_id][1](text, {}, {})
            assert edited is not None  # whole-answer edits always apply
            text = edited
    return text


@dataclass(frozen=True)
class Rewrite:
    """A verified rewrite of one response: the new text, which instructions it was edited for, and the verifier's
    scores of both sides."""

    text: str
    instructions: tuple[str, ...]  # the instruction ids the edits made it follow
    score: Score  # the rewritten text's
    original: Score  # the original's
    trimmed: bool = False  # cut back to a complete sentence first (the original hit the token limit)

    @property
    def source(self) -> str:
        """The provenance tag: "rewrite:" and the short names of the edits, e.g. "rewrite:english_lowercase" or
        "rewrite:trim+quotation"."""
        return "rewrite:" + "+".join(
            [*(["trim"] if self.trimmed else []), *(REWRITES[i][0] for i in self.instructions)]
        )


def rewritable(meta: dict[str, Any]) -> bool:
    """True when the prompt has at least one instruction a rewrite can satisfy."""
    return any(i in REWRITES for i in meta.get("instruction_id_list") or [])


def rewrite_response(
    verifier: VerifierJudge, prompt: Text, response: str, meta: dict[str, Any], truncated: bool = False
) -> Rewrite | None:
    """`response` edited to follow the instructions of `meta` (the verifier's `instruction_id_list` and `kwargs`) that
    it fails and `REWRITES` can satisfy; None when there are none, or the verifier does not confirm the result (see
    the module's docstring). With `truncated` (the response was cut at the token limit), it is trimmed back to a
    complete sentence first, and the trim alone counts as an edit: it need not fail a rewritable instruction."""
    if not response.strip() or not (truncated or rewritable(meta)):
        return None
    original = verifier.score([JudgeItem(prompt, response, meta)])[0]
    if original.value is None:
        return None
    text = trim_to_boundary(response) if truncated else response
    if text is None:
        return None
    ids = list(meta["instruction_id_list"])
    kwargs = meta.get("kwargs") or [{} for _ in ids]
    followed = [result["strict"] for result in original.details["instructions"]]
    start = verifier.score([JudgeItem(prompt, text, meta)])[0] if truncated else original
    failing = [
        (i, k) for i, k, r in zip(ids, kwargs, start.details["instructions"]) if not r["strict"] and i in REWRITES
    ]
    if not (failing or truncated):
        return None
    edited: list[str] = []
    for instruction_id, (_, edit) in REWRITES.items():
        for failed_id, arguments in failing:
            if failed_id == instruction_id and (result := edit(text, arguments or {}, meta)) is not None:
                text = result
                edited.append(instruction_id)
    if not (edited or truncated):
        return None
    score = verifier.score([JudgeItem(prompt, text, meta)])[0] if edited else start
    if score.value is None:
        return None
    now = [result["strict"] for result in score.details["instructions"]]
    all_edited_pass = all(ok for i, ok in zip(ids, now) if i in edited)
    kept_the_rest = all(ok or not before for ok, before in zip(now, followed))
    if not (all_edited_pass and kept_the_rest):
        return None
    return Rewrite(text, tuple(dict.fromkeys(edited)), score, original, trimmed=truncated)
