"""Rewrite pairs: a response edited to follow the instructions it failed, chosen over itself as it was.

Some verifiable instructions can be satisfied by editing any response: change its letter case, wrap it in double
quotes, drop its commas, append the required end phrase or a postscript, put a title on top. A small model that never
follows one of them never produces a sampled pair that shows it; the pair (rewritten response, original response)
differs in exactly that instruction, so it teaches exactly that. This is data synthesis, not sampling: every pair and
SFT target made this way says so in its provenance (`source: "rewrite:english_lowercase+quotation"`).

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


@dataclass(frozen=True)
class Rewrite:
    """A verified rewrite of one response: the new text, which instructions it was edited for, and the verifier's
    scores of both sides."""

    text: str
    instructions: tuple[str, ...]  # the instruction ids the edits made it follow
    score: Score  # the rewritten text's
    original: Score  # the original's

    @property
    def source(self) -> str:
        """The provenance tag: "rewrite:" and the short names of the edits, e.g. "rewrite:english_lowercase"."""
        return "rewrite:" + "+".join(REWRITES[i][0] for i in self.instructions)


def rewritable(meta: dict[str, Any]) -> bool:
    """True when the prompt has at least one instruction a rewrite can satisfy."""
    return any(i in REWRITES for i in meta.get("instruction_id_list") or [])


def rewrite_response(verifier: VerifierJudge, prompt: Text, response: str, meta: dict[str, Any]) -> Rewrite | None:
    """`response` edited to follow the instructions of `meta` (the verifier's `instruction_id_list` and `kwargs`) that
    it fails and `REWRITES` can satisfy; None when there are none, or the verifier does not confirm the result (see
    the module's docstring)."""
    if not rewritable(meta) or not response.strip():
        return None
    original = verifier.score([JudgeItem(prompt, response, meta)])[0]
    if original.value is None:
        return None
    ids = list(meta["instruction_id_list"])
    kwargs = meta.get("kwargs") or [{} for _ in ids]
    followed = [result["strict"] for result in original.details["instructions"]]
    failing = [(i, k) for i, k, ok in zip(ids, kwargs, followed) if not ok and i in REWRITES]
    if not failing:
        return None
    text = response
    for instruction_id, (_, edit) in REWRITES.items():
        for failed_id, arguments in failing:
            if failed_id == instruction_id:
                text = edit(text, arguments or {}, meta)
    score = verifier.score([JudgeItem(prompt, text, meta)])[0]
    if score.value is None:
        return None
    now = [result["strict"] for result in score.details["instructions"]]
    all_rewritable = all(ok for i, ok in zip(ids, now) if i in REWRITES)
    kept_the_rest = all(ok or not before for ok, before in zip(now, followed))
    if not (all_rewritable and kept_the_rest):
        return None
    edited = tuple(dict.fromkeys(i for i in REWRITES for failed_id, _ in failing if failed_id == i))
    return Rewrite(text, edited, score, original)
