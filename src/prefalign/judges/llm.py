"""LLM-as-a-judge: pairwise verdicts asked in both orders, and pointwise 1-5 ratings, from any chat client.

LLM judges favour the answer in one position (Zheng et al. 2023, MT-Bench, arXiv 2306.05685), so `compare` asks about
every pair twice, A/B and B/A, and keeps a verdict only if both orders agree; a flip is a tie with
`details["consistent"] = False`. A failed request or an answer with no recognisable verdict gives
`Verdict(None, error=...)` and is counted, never guessed.

Templates are plain text with placeholders, replaced in a single pass (so braces elsewhere, or a placeholder quoted
inside an answer, are left alone):

* pairwise (`template=`): `{question}`, `{answer_a}`, `{answer_b}`; the judge must end with [[A]], [[B]] or [[C]] (tie);
* pointwise (`score_template=`): `{question}`, `{answer}`; the judge must end with "Rating: [[N]]", N from 1 to 5.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..data.records import Text
from ..errors import PrefalignError
from .base import Judge, JudgeItem, Preference, Score, Verdict
from .http import ChatClient, JudgeRequestError

PAIRWISE_TEMPLATE = """\
Act as an impartial judge of two AI assistants' responses to the user request below. Decide which response serves the \
user better: weigh helpfulness, correctness, relevance and level of detail, and check that every instruction in the \
request is followed. The order of the responses and their length say nothing about their quality; ignore both.

<request>
{question}
</request>

<assistant_a>
{answer_a}
</assistant_a>

<assistant_b>
{answer_b}
</assistant_b>

Explain your comparison in a few sentences. Then, on the last line, write your verdict in exactly this form: \
"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" if they are equally good.
"""

POINTWISE_TEMPLATE = """\
Act as an impartial judge of an AI assistant's response to the user request below. Weigh helpfulness, correctness, \
relevance and level of detail, and check that every instruction in the request is followed.

<request>
{question}
</request>

<response>
{answer}
</response>

Explain your assessment in a few sentences. Then, on the last line, rate the response from 1 (useless) to 5 \
(excellent) in exactly this form: "Rating: [[N]]".
"""

PAIRWISE_PLACEHOLDERS = ("question", "answer_a", "answer_b")
POINTWISE_PLACEHOLDERS = ("question", "answer")

_MARKER = re.compile(r"(?i)\[\[\s*([ABC]|tie)\s*\]\]")
# Letters are matched upper-case only, so "the verdict is a tie" does not read as assistant "a".
_VERDICT_LINE = re.compile(r"(?i:\bverdict)\s*(?i:is)?\s*[:\-]?\s*[\"'*\[(]*\s*(?i:assistant\s+)?(A|B|C|(?i:tie))\b")
_BETTER = re.compile(
    r"(?i:\b(?:assistant|response|answer))\s+(A|B)\s+(?i:(?:is|was)\s+(?:clearly\s+|much\s+|"
    r"slightly\s+|significantly\s+)?(?:better|superior|more helpful|stronger|preferred|the better))"
)
_TIE = re.compile(r"(?i)\b(?:it is|it's|is) a tie\b|\bequally (?:good|helpful|strong|bad|poor)\b")
_RATING_MARKER = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_LINE = re.compile(r"(?i)\brating\s*[:=]?\s*(\d+(?:\.\d+)?)\b")


def load_template(path: str | Path | None, default: str, placeholders: tuple[str, ...]) -> str:
    """The template in `path` (or `default`), checked to contain every placeholder."""
    if path is None:
        return default
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PrefalignError(f"cannot read the judge template {path}: {error}") from None
    missing = [f"{{{name}}}" for name in placeholders if f"{{{name}}}" not in text]
    if missing:
        raise PrefalignError(f"{path}: the judge template lacks the placeholder(s) {', '.join(missing)}")
    return text


def render(template: str, values: dict[str, str]) -> str:
    """`template` with each `{name}` for a name in `values` replaced, in one pass."""
    pattern = re.compile("|".join(re.escape(f"{{{name}}}") for name in values))
    return pattern.sub(lambda match: values[match.group(0)[1:-1]], template)


def question_text(prompt: Text) -> str:
    """A prompt as the judge reads it: a string as is, one user message as its content, a dialogue as a transcript."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{message.get('role', 'user').capitalize()}: {message['content']}" for message in prompt)


def parse_verdict(answer: str) -> str | None:
    """ "A", "B" or "C" (tie) from a judge's answer, or None if it names none.

    The last [[X]] marker wins (a judge may quote the format before giving its verdict); without one, the last
    "verdict: X", then an unambiguous "assistant X is better", then a stated tie.
    """
    for pattern in (_MARKER, _VERDICT_LINE):
        found = pattern.findall(answer)
        if found:
            letter = found[-1].upper()
            return "C" if letter == "TIE" else letter
    better = set(_BETTER.findall(answer))
    if len(better) == 1:
        return better.pop()
    if not better and _TIE.search(answer):
        return "C"
    return None


def parse_rating(answer: str, low: float = 1, high: float = 5) -> float | None:
    """The last [[N]] (or "Rating: N") in a judge's answer if it lies in [low, high], else None."""
    found = _RATING_MARKER.findall(answer) or _RATING_LINE.findall(answer)
    if not found:
        return None
    rating = float(found[-1])
    return rating if low <= rating <= high else None


# A verdict letter in each order, as the preference between the caller's a and b.
_AS_PREFERENCE: dict[str, dict[str, Preference]] = {
    "ab": {"A": "a", "B": "b", "C": "tie"},
    "ba": {"A": "b", "B": "a", "C": "tie"},
}


class LLMJudge(Judge):
    """A judge that asks a chat model: pairwise in both orders (`compare`), or a 1-5 rating (`score`).

    `stats()` counts requests sent (retries included), cache hits, retries, requests that failed for good
    (`failures`), answers with no verdict or rating (`unparseable`) and pairs whose verdict flipped with the order
    (`inconsistent`).
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        template: str | Path | None = None,
        score_template: str | Path | None = None,
        concurrency: int = 4,
    ):
        if concurrency < 1:
            raise PrefalignError(f"judge concurrency must be at least 1, got {concurrency}")
        self.client = client
        self.name = f"{client.provider}:{client.model}"
        self.pairwise_template = load_template(template, PAIRWISE_TEMPLATE, PAIRWISE_PLACEHOLDERS)
        self.pointwise_template = load_template(score_template, POINTWISE_TEMPLATE, POINTWISE_PLACEHOLDERS)
        self.concurrency = concurrency
        self.counters = client.counters

    def stats(self) -> dict[str, int]:
        counts = self.counters.as_dict()
        return {
            name: counts.get(name, 0)
            for name in ("requests", "cache_hits", "retries", "failures", "unparseable", "inconsistent")
        }

    def _ask_all(self, prompts: list[str]) -> list[str | JudgeRequestError]:
        """Each prompt's answer, or the error that ended its request; `concurrency` requests in flight at most."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            futures: list[Future[str]] = [pool.submit(self.client.complete, prompt) for prompt in prompts]
            results: list[str | JudgeRequestError] = []
            try:
                for future in futures:
                    try:
                        results.append(future.result())
                    except JudgeRequestError as error:
                        self.counters.add("failures")
                        results.append(error)
            except BaseException:
                # A fatal error (bad key, unknown model) or an interrupt: do not send what has not started.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results

    def compare(
        self,
        prompts: list[Text],
        responses_a: list[str],
        responses_b: list[str],
        metas: list[dict[str, Any]] | None = None,
    ) -> list[Verdict]:
        questions = [question_text(prompt) for prompt in prompts]
        requests = []
        for question, a, b in zip(questions, responses_a, responses_b):
            requests.append(render(self.pairwise_template, {"question": question, "answer_a": a, "answer_b": b}))
            requests.append(render(self.pairwise_template, {"question": question, "answer_a": b, "answer_b": a}))
        answers = self._ask_all(requests)
        return [self._combine(answers[2 * i], answers[2 * i + 1]) for i in range(len(questions))]

    def _combine(self, answer_ab: str | JudgeRequestError, answer_ba: str | JudgeRequestError) -> Verdict:
        orders: dict[str, Preference | None] = {}
        problems = []
        for order, answer in (("ab", answer_ab), ("ba", answer_ba)):
            orders[order] = None
            if isinstance(answer, JudgeRequestError):
                problems.append(f"judge request failed: {answer}")
            elif (letter := parse_verdict(answer)) is None:
                self.counters.add("unparseable")
                problems.append(f"unparseable judge answer: {_excerpt(answer)}")
            else:
                orders[order] = _AS_PREFERENCE[order][letter]
        details: dict[str, Any] = {
            "orders": orders,
            "answers": [a if isinstance(a, str) else None for a in (answer_ab, answer_ba)],
        }
        if problems:
            return Verdict(None, details=details, error=problems[0])
        consistent = orders["ab"] == orders["ba"]
        if not consistent:
            self.counters.add("inconsistent")
        details["consistent"] = consistent
        return Verdict(orders["ab"] if consistent else "tie", details=details)

    def score(self, items: list[JudgeItem]) -> list[Score]:
        requests = [
            render(self.pointwise_template, {"question": question_text(item.prompt), "answer": item.response})
            for item in items
        ]
        scores = []
        for answer in self._ask_all(requests):
            if isinstance(answer, JudgeRequestError):
                scores.append(Score(None, error=f"judge request failed: {answer}"))
                continue
            rating = parse_rating(answer)
            if rating is None:
                self.counters.add("unparseable")
                scores.append(Score(None, {"answer": answer}, error=f"unparseable rating: {_excerpt(answer)}"))
            else:
                scores.append(Score(rating, {"rating": rating, "answer": answer}))
        return scores

    def close(self) -> None:
        if self.client.cache is not None:
            self.client.cache.close()


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
