"""Judge-free heuristics: refusal phrases, repeated n-grams, word counts, and the table built from them."""

from __future__ import annotations

import pytest

from prefalign.evaluate.metrics import REFUSAL_WINDOW, is_refusal, repetition, word_count
from prefalign.evaluate.scoring import ResponseScores
from prefalign.evaluate.table import Metric, build_rows, format_delta, format_estimate, response_values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m unable to share that information.", True),  # a curly apostrophe
        ("AS AN AI, I do not have opinions.", True),
        ("Sure! Here are three tips for studying.", False),
        ("I can't wait to try this recipe: mix flour and water.", False),
        ("", False),
    ],
)
def test_refusal_phrases(text: str, expected: bool):
    assert is_refusal(text) is expected


def test_refusal_is_looked_for_in_the_opening_only():
    late = "x" * REFUSAL_WINDOW + " I cannot help with that."
    assert not is_refusal(late)
    assert is_refusal(late[REFUSAL_WINDOW:])


def test_repetition_fraction_of_repeated_4grams():
    assert repetition("the cat sat on the mat") == 0.0
    # 8 words -> 5 four-grams, of which "a b c d" appears twice: 1 - 4/5.
    assert repetition("a b c d a b c d") == pytest.approx(0.2)
    assert repetition("go " * 50) == pytest.approx(1 - 1 / 47)  # a degenerate loop
    assert repetition("too short") == 0.0
    assert word_count("  two\nwords ") == 2


def test_table_rows_from_scores_and_every_cell_formatted_with_its_interval():
    def response(tokens: int, strict: list[bool], refusal: bool = False) -> ResponseScores:
        checks = [{"id": f"i{k}", "strict": s, "loose": s} for k, s in enumerate(strict)]
        return ResponseScores(tokens, tokens, False, refusal, 0.0, checks)

    scores = {
        "sft": [response(10, [True, False]), response(20, [False]), response(30, [True])],
        "dpo": [response(12, [True, True]), response(22, [True]), response(30, [True], refusal=True)],
    }
    values = response_values(scores, [])
    assert values["ifeval/instruction_strict"]["sft"] == [(1.0, 2.0), (0.0, 1.0), (1.0, 1.0)]
    metrics = [
        Metric("ifeval/prompt_strict", "prompt strict", "proportion", True),
        Metric("ifeval/instruction_strict", "instruction strict", "ratio", True),
        Metric("length/tokens", "tokens", "mean", None, 1),
        Metric("judge/absent", "no such judge", "mean", True),
    ]
    rows = build_rows(metrics, values, ["sft", "dpo"], ("dpo", "sft"))
    assert [row.metric.key for row in rows] == ["ifeval/prompt_strict", "ifeval/instruction_strict", "length/tokens"]
    prompt_strict, instruction_strict, tokens = rows
    assert prompt_strict.cells["sft"].value == pytest.approx(1 / 3) and prompt_strict.cells["dpo"].value == 1.0
    assert instruction_strict.cells["sft"].value == pytest.approx(2 / 4)
    assert instruction_strict.delta.value == pytest.approx(1.0 - 2 / 4)
    assert tokens.delta.value == pytest.approx(4 / 3) and tokens.delta.method == "paired bootstrap"
    assert format_estimate(tokens.cells["sft"], 1) == "20.0 [10.0, 30.0]"
    assert format_delta(tokens.delta, 1).startswith("+1.3 [+")
    assert format_estimate(None) == "–"
