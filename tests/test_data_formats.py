"""Parsing the three preference formats (HH-RLHF dialogues, explicit strings, conversational messages) and KTO's
unpaired records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefalign.data import PreferenceRecord, load_preferences
from prefalign.data.formats import (
    detect_format,
    parse_record,
    parse_unpaired,
    split_hh_dialogue,
    to_conversational,
    to_explicit,
)
from prefalign.data.unpaired import load_unpaired
from prefalign.data.validation import Reason, RecordRejected
from prefalign.errors import DataError, PrefalignError

DATA = Path(__file__).parent / "fixtures" / "data"
H, A = "\n\nHuman:", "\n\nAssistant:"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def rejection(row: object, format: str = "auto") -> tuple[Reason, str]:
    with pytest.raises(RecordRejected) as caught:
        parse_record(row, "x.jsonl:1", format)
    return caught.value.reason, caught.value.detail


def test_hh_prompt_becomes_messages_and_responses_lose_their_leading_space():
    records = load_preferences(DATA / "hh.jsonl").records
    first, second = records[0], records[1]
    assert first.prompt == [user("What is the capital of France?")]
    assert (first.chosen, first.rejected) == ("The capital of France is Paris.", "I don't know.")
    assert first.extra == {"id": "hh-1"}
    assert first.location == f"{DATA / 'hh.jsonl'}:1"
    assert second.prompt == [
        user("Can you help me bake bread?"),
        assistant("Sure. Do you have flour and yeast?"),
        user("Yes, both."),
    ]
    assert second.chosen == "Mix them with water and salt, knead, let it rise, then bake."
    assert second.extra == {"id": "hh-2", "margin": 1.5}


def test_hh_splits_only_on_turn_markers_and_keeps_turns_as_written():
    records = load_preferences(DATA / "hh.jsonl").records
    # Paragraph breaks and an inline "Human:" inside a response are text, not turns.
    assert records[2].chosen == "First paragraph.\n\nSecond paragraph, where a Human: appears inline."
    # Two Assistant turns in a row (real HH-RLHF has them) stay two messages; nothing is merged.
    assert records[3].prompt == [
        user("Are you there?"),
        assistant("One moment."),
        assistant("Back now, sorry."),
        user("Good."),
    ]


def test_hh_prompt_is_cut_at_the_last_assistant_marker():
    prompt, response = split_hh_dialogue(f"{H} a{A} b{H} c{A} d")
    assert (prompt, response) == (f"{H} a{A} b{H} c{A}", " d")


def test_hh_without_the_leading_blank_line_still_parses():
    record = parse_record({"chosen": f"Human: Hi{A} Hello", "rejected": f"Human: Hi{A} Go"}, "x:1")
    assert record.prompt == [user("Hi")]


def test_hh_rejections():
    assert rejection({"chosen": f"{H} Hi{A} A", "rejected": f"{H} Hey{A} B"}) == (
        Reason.PROMPT_MISMATCH,
        "the dialogues differ at character 10, before their last Assistant turn",
    )
    # An extra "\n\nAssistant:" inside one response moves its last marker: the prompts no longer match.
    assert rejection({"chosen": f"{H} Hi{A} A{A} more", "rejected": f"{H} Hi{A} B"})[0] is Reason.PROMPT_MISMATCH
    assert rejection({"chosen": f"{H} Hi{A} A{H} Bye", "rejected": f"{H} Hi{A} B"}) == (
        Reason.MISSING_FINAL_TURN,
        "'chosen' ends with a Human turn",
    )
    assert rejection({"chosen": f"{H} Hi{A} A", "rejected": f"{H} Hi"}) == (
        Reason.MISSING_FINAL_TURN,
        "'rejected' has no Assistant turn",
    )
    assert rejection({"chosen": f"{H} Hi{A} ", "rejected": f"{H} Hi{A} B"}) == (
        Reason.EMPTY_COMPLETION,
        "'chosen' has no text",
    )
    assert rejection({"chosen": f"{H} {A} A", "rejected": f"{H} {A} B"})[0] is Reason.EMPTY_PROMPT
    assert rejection({"chosen": f"{H} Hi{A} A", "rejected": f"{H} Hi{A} A"})[0] is Reason.IDENTICAL_COMPLETIONS
    assert rejection({"chosen": f"Intro{H} Hi{A} A", "rejected": f"Intro{H} Hi{A} B"}) == (
        Reason.BAD_MESSAGE,
        "the dialogue has text before its first Human turn",
    )


def test_explicit_strings_are_kept_exactly():
    records = load_preferences(DATA / "explicit.jsonl").records
    assert records[0] == PreferenceRecord(
        prompt="Question: What is two plus three?\nAnswer:",
        chosen=" Five.",
        rejected=" Six.",
        location=f"{DATA / 'explicit.jsonl'}:1",
        extra={"margin": 2.0},
    )
    assert records[1].extra == {"id": 7}
    assert records[2].prompt == [{"role": "system", "content": "Be brief."}, user("Why is the sky blue?")]
    assert records[2].chosen == "Air scatters blue light more than red."


def test_conversational_explicit_prompt_repeated_in_completions_is_cut_off():
    ultrafeedback, explicit, _ = load_preferences(DATA / "conversational.jsonl").records
    assert ultrafeedback.prompt == [user("Why is the sky blue?")]
    assert ultrafeedback.chosen == [assistant("Air scatters blue light more than red light.")]
    assert ultrafeedback.rejected == [assistant("It reflects the sea.")]
    assert ultrafeedback.extra == {"prompt_id": "p1", "score_chosen": 8.0, "score_rejected": 3.0}
    assert explicit.prompt == [{"role": "system", "content": "Be kind."}, user("I feel sad today.")]
    assert explicit.chosen == [assistant("I am sorry to hear that. Do you want to talk?")]


def test_conversational_implicit_prompt_is_the_longest_shared_prefix():
    implicit = load_preferences(DATA / "conversational.jsonl").records[2]
    assert implicit.prompt == [user("Hi"), assistant("Hello! How can I help?"), user("Tell me a joke.")]
    assert implicit.chosen == [assistant("Why did the chicken cross the road?")]
    assert implicit.rejected == [assistant("No.")]
    assert implicit.extra == {}


def test_conversational_implicit_keeps_several_assistant_turns_after_the_prefix():
    record = parse_record(
        {"chosen": [user("q"), assistant("a"), assistant("b")], "rejected": [user("q"), assistant("c")]}, "x:1"
    )
    assert (record.prompt, record.chosen, record.rejected) == (
        [user("q")],
        [assistant("a"), assistant("b")],
        [assistant("c")],
    )


def test_conversational_rejections():
    assert rejection({"chosen": [user("q"), assistant("a")], "rejected": [user("r"), assistant("a")]}) == (
        Reason.PROMPT_MISMATCH,
        "the conversations differ from their first message on",
    )
    # Sharing a first turn but then continuing with different user turns: not one prompt with two answers.
    assert rejection(
        {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a"), user("more"), assistant("b")]}
    ) == (Reason.PROMPT_MISMATCH, "'rejected' has a user turn after the prompt")
    assert rejection({"prompt": "q", "chosen": [user("other"), assistant("a")], "rejected": [assistant("b")]}) == (
        Reason.PROMPT_MISMATCH,
        "'chosen' has a user turn after the prompt",
    )
    assert rejection({"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]})[0] is (
        Reason.IDENTICAL_COMPLETIONS
    )
    assert rejection({"prompt": "q", "chosen": [user("q")], "rejected": [assistant("b")]}) == (
        Reason.EMPTY_COMPLETION,
        "'chosen' has no text",
    )
    assert rejection({"prompt": 5, "chosen": [assistant("a")], "rejected": [assistant("b")]}) == (
        Reason.WRONG_TYPE,
        "'prompt' is a number, expected a string or a list of messages",
    )
    assert rejection({"chosen": [assistant("a")], "rejected": ["b"]}) == (
        Reason.BAD_MESSAGE,
        "message 1 of 'rejected' is a string, expected an object",
    )
    assert rejection({"chosen": [{"role": "user"}], "rejected": [assistant("b")]}) == (
        Reason.BAD_MESSAGE,
        "message 1 of 'chosen' has no content",
    )
    assert rejection({"chosen": [{"role": "assistant", "content": None}], "rejected": [assistant("b")]}) == (
        Reason.BAD_MESSAGE,
        "message 1 of 'chosen' has content that is null, not a string",
    )


def test_auto_detection_by_keys_and_types():
    assert detect_format({"chosen": "a", "rejected": "b"}) == "hh"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "explicit"
    assert detect_format({"prompt": [user("p")], "chosen": "a", "rejected": "b"}) == "explicit"
    assert detect_format({"chosen": [assistant("a")], "rejected": [assistant("b")]}) == "conversational"
    assert detect_format({"prompt": "p", "chosen": [assistant("a")], "rejected": [assistant("b")]}) == "conversational"


def test_a_forced_format_is_applied_to_every_record():
    explicit_row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert rejection(explicit_row, "conversational") == (
        Reason.WRONG_TYPE,
        "'chosen' is a string, expected a list of messages",
    )
    assert rejection(explicit_row, "hh") == (Reason.MISSING_FINAL_TURN, "'chosen' has no Assistant turn")
    assert rejection({"chosen": f"{H} Hi{A} A", "rejected": f"{H} Hi{A} B"}, "explicit") == (
        Reason.MISSING_FIELD,
        "'prompt'",
    )
    assert rejection({"text": "hello"}) == (Reason.MISSING_FIELD, "'chosen', 'rejected'")


def test_to_conversational_and_to_explicit_reshape_without_losing_text():
    record = PreferenceRecord(prompt="Hi", chosen="Hello", rejected="Go", location="x:1", extra={"id": 1})
    conversational = to_conversational(record)
    assert conversational.prompt == [user("Hi")]
    assert conversational.chosen == [assistant("Hello")]
    assert conversational.extra == {"id": 1}
    explicit = to_explicit(conversational)
    assert (explicit.prompt, explicit.chosen, explicit.rejected) == ([user("Hi")], "Hello", "Go")


def test_to_explicit_refuses_a_completion_of_several_messages():
    record = PreferenceRecord(
        prompt=[user("q")], chosen=[assistant("a"), assistant("b")], rejected=[assistant("c")], location="x.jsonl:4"
    )
    with pytest.raises(DataError, match=r"^x\.jsonl:4: 'chosen' holds 2 messages; an explicit completion is one"):
        to_explicit(record)


def unpaired_rejection(row: object) -> tuple[Reason, str]:
    with pytest.raises(RecordRejected) as caught:
        parse_unpaired(row, "x.jsonl:1")
    return caught.value.reason, caught.value.detail


def test_unpaired_records_parse_with_their_label_and_the_same_checks():
    record = parse_unpaired({"prompt": "Hi", "completion": " there", "label": False, "id": 7}, "u.jsonl:2")
    assert (record.prompt, record.completion, record.desirable, record.extra) == ("Hi", " there", False, {"id": 7})
    chat = parse_unpaired({"prompt": [user("Hi")], "completion": [assistant("Hello")], "label": True}, "u.jsonl:3")
    assert chat.completion == [assistant("Hello")] and chat.desirable
    assert unpaired_rejection({"prompt": "Hi", "completion": "x"})[0] is Reason.MISSING_FIELD
    assert unpaired_rejection({"prompt": "Hi", "completion": "x", "label": 1}) == (
        Reason.WRONG_TYPE,
        "'label' is a number, expected true or false",
    )
    assert unpaired_rejection({"prompt": " ", "completion": "x", "label": True})[0] is Reason.EMPTY_PROMPT
    assert unpaired_rejection({"prompt": "Hi", "completion": "", "label": True})[0] is Reason.EMPTY_COMPLETION
    assert unpaired_rejection({"prompt": "Hi", "completion": [user("x")], "label": True})[0] is Reason.BAD_MESSAGE
    assert unpaired_rejection(["not", "an", "object"])[0] is Reason.WRONG_TYPE


def test_load_unpaired_reads_labelled_rows_and_converts_pairs(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "a", "completion": "good", "label": True},
        {"prompt": "b", "chosen": "yes", "rejected": "no"},
        {"prompt": "c", "completion": "bad", "label": "no"},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n{oops\n")
    data = load_unpaired(path, max_bad_fraction=0.5)
    assert [(r.prompt, r.completion, r.desirable) for r in data.records] == [
        ("a", "good", True),
        ("b", "yes", True),
        ("b", "no", False),
    ]
    assert (data.report.read, data.report.kept, data.report.rejected) == (4, 2, 2)
    assert [str(r) for r in data.report.rejections] == [
        f"{path}:3: wrong type: 'label' is a string, expected true or false",
        f"{path}:4: not valid JSON: Expecting property name enclosed in double quotes at column 2",
    ]
    with pytest.raises(PrefalignError, match=r"2 of 4 records are bad"):
        load_unpaired(path)
