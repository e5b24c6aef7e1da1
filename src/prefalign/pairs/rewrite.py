"""Rewrite pairs: a response edited to follow the instructions it failed, chosen over itself as it was.

Some verifiable instructions can be satisfied by editing any response: change its letter case, wrap it in double
quotes, drop its commas, append the required end phrase or a postscript, put a title on top. A small model that never
follows one of them never produces a sampled pair that shows it; the pair (rewritten response, original response)
differs in exactly that instruction, so it teaches exactly that. This is data synthesis, not sampling: every pair and
SFT target made this way says so in its provenance (`source: "rewrite:english_lowercase+quotation"`).

A response cut at the token limit can be rewritten too, when asked (`truncated=True`): it is first trimmed back to its
last complete sentence or line (`trim_to_boundary`), and "trim" leads its provenance tag. An answer cut mid-sentence
fails most checks on its ending (end phrase, postscript, closing quote, sentence counts); its trimmed version is an
answer the model could have ended there, which is what a model that overruns its budget needs to see.

A rewrite is kept only when the verifier confirms it: the rewritten response follows every one of the prompt's
instructions that `REWRITES` can satisfy, and every instruction the original followed (a rewrite that breaks another
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

Edit = Callable[[str, dict[str, Any], dict[str, Any]], str]


def _title(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    topic = meta.get("topic")
    title = topic[:1].upper() + topic[1:] if isinstance(topic, str) and topic.strip() else "My answer"
    return f"<<{title}>>\n\n{text.lstrip()}"


def _postscript(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return f"{text.rstrip()}\n\n{kwargs['postscript_marker']} I hope this helps."


def _end_phrase(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return f"{text.rstrip()}\n\n{kwargs['end_phrase']}"


def _no_comma(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    return re.sub(r",(?=\s)", "", text).replace(",", " ")  # "a, b" -> "a b"; "a,b" -> "a b"


def _quotation(text: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    text = text.strip()
    return ("" if text.startswith('"') else '"') + text + ("" if text.endswith('"') and len(text) > 1 else '"')


# Instruction id -> (short name for the provenance, the edit), in the order the edits are applied: text is added
# first (so commas and letter case are fixed in it too), the quotes go around everything last.
REWRITES: dict[str, tuple[str, Edit]] = {
    "detectable_format:title": ("title", _title),
    "detectable_content:postscript": ("postscript", _postscript),
    "startend:end_checker": ("end_checker", _end_phrase),
    "punctuation:no_comma": ("no_comma", _no_comma),
    "change_case:english_lowercase": ("english_lowercase", lambda text, kwargs, meta: text.lower()),
    "change_case:english_capital": ("english_capital", lambda text, kwargs, meta: text.upper()),
    "startend:quotation": ("quotation", _quotation),
}


# A sentence ends at . ! or ? (with any closing quotes or brackets) before whitespace or the end of the text.
_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")

_LIST_MARKER = re.compile(r"\s*\d+\.")  # "3." opening a numbered item ends no sentence


def _line_before(text: str, end: int) -> str:
    return text[text.rfind("\n", 0, end) + 1 : end]


def trim_to_boundary(text: str, keep_at_least: float = 0.5) -> str | None:
    """`text` cut after its last complete sentence or before its last line break, whichever comes later; None when
    that keeps less than `keep_at_least` of it (a trim that drops most of an answer is a different answer)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_MARKER.fullmatch(_line_before(text, m.end()))]
    cut = max(ends[-1] if ends else 0, text.rstrip().rfind("\n"))
    trimmed = text[:cut].rstrip()
    return trimmed if trimmed and len(trimmed) >= keep_at_least * len(text.rstrip()) else None


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
    for instruction_id, (_, edit) in REWRITES.items():
        for failed_id, arguments in failing:
            if failed_id == instruction_id:
                text = edit(text, arguments or {}, meta)
    score = verifier.score([JudgeItem(prompt, text, meta)])[0] if failing else start
    if score.value is None:
        return None
    now = [result["strict"] for result in score.details["instructions"]]
    all_rewritable = all(ok for i, ok in zip(ids, now) if i in REWRITES)
    kept_the_rest = all(ok or not before for ok, before in zip(now, followed))
    if not (all_rewritable and kept_the_rest):
        return None
    edited = tuple(dict.fromkeys(i for i in REWRITES for failed_id, _ in failing if failed_id == i))
    return Rewrite(text, edited, score, original, trimmed=truncated)
