"""The verifier judge: IFEval checkers from if-verifiable plus our two offline replacements, strict and loose."""

from __future__ import annotations

import socket

import pytest

from prefalign.errors import PrefalignError
from prefalign.judges import SUPPORTED_INSTRUCTIONS, JudgeItem, VerifierJudge, describe_instruction
from prefalign.judges.instructions import count_sentences, tokenize_words

# Arguments for every supported instruction, as a prompt record would carry them.
ARGUMENTS = {
    "keywords:existence": {"keywords": ["apple", "river"]},
    "keywords:frequency": {"keyword": "apple", "frequency": 2, "relation": "at least"},
    "keywords:forbidden_words": {"forbidden_words": ["banana"]},
    "keywords:letter_frequency": {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
    "language:response_language": {"language": "en"},
    "length_constraints:number_sentences": {"num_sentences": 3, "relation": "at least"},
    "length_constraints:number_paragraphs": {"num_paragraphs": 2},
    "length_constraints:number_words": {"num_words": 10, "relation": "less than"},
    "length_constraints:nth_paragraph_first_word": {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "rivers"},
    "detectable_content:number_placeholders": {"num_placeholders": 2},
    "detectable_content:postscript": {"postscript_marker": "P.S."},
    "detectable_format:number_bullet_lists": {"num_bullets": 2},
    "detectable_format:constrained_response": {},
    "detectable_format:number_highlighted_sections": {"num_highlights": 1},
    "detectable_format:multiple_sections": {"section_spliter": "Section", "num_sections": 2},
    "detectable_format:json_format": {},
    "detectable_format:title": {},
    "combination:two_responses": {},
    "combination:repeat_prompt": {"prompt_to_repeat": "Write about apples."},
    "startend:end_checker": {"end_phrase": "Any other questions?"},
    "change_case:capital_word_frequency": {"capital_frequency": 2, "capital_relation": "at least"},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "punctuation:no_comma": {},
    "startend:quotation": {},
}

# (instruction id, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", "An apple fell into the river.", "An apple fell down."),
    ("keywords:frequency", "apple pie and apple juice", "one apple only"),
    ("keywords:forbidden_words", "I like apples.", "I like a banana."),
    ("keywords:letter_frequency", "A zebra.", "Zany zebras zigzag."),
    (
        "language:response_language",
        "The weather is lovely today and we will walk to the park.",
        "Il fait très beau aujourd'hui et nous allons marcher jusqu'au parc.",
    ),
    ("length_constraints:number_sentences", "One. Two! Three?", "Dr. Smith came home. He slept."),
    ("length_constraints:number_paragraphs", "First part.\n\n***\n\nSecond part.", "Only one part."),
    ("length_constraints:number_words", "Short and sweet.", "This answer has far more than ten words in it, clearly."),
    ("length_constraints:nth_paragraph_first_word", "Apples grow.\n\nRivers flow.", "Apples grow.\n\nLakes sit."),
    ("detectable_content:number_placeholders", "Meet at [place] on [date].", "Meet at the park."),
    ("detectable_content:postscript", "Hello.\nP.S. Bye.", "Hello. Bye."),
    ("detectable_format:number_bullet_lists", "* one\n* two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", "This is *important* text.", "Nothing highlighted."),
    ("detectable_format:multiple_sections", "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", '```json\n{"a": 1}\n```', "a: 1"),
    ("detectable_format:title", "<<Ode to Apples>>\nApples.", "Ode to Apples\nApples."),
    ("combination:two_responses", "First answer.\n******\nSecond answer.", "Only one answer."),
    ("combination:repeat_prompt", "Write about apples. Apples are red.", "Apples are red."),
    ("startend:end_checker", "Apples are red. Any other questions?", "Any other questions? Apples are red."),
    ("change_case:capital_word_frequency", "APPLES are VERY red.", "Apples are VERY red."),
    ("change_case:english_capital", "APPLES ARE RED AND TASTY FRUIT.", "Apples are red and tasty fruit."),
    ("change_case:english_lowercase", "apples are red and tasty fruit.", "Apples are red and tasty fruit."),
    ("punctuation:no_comma", "Apples are red and sweet.", "Apples are red, and sweet."),
    ("startend:quotation", '"Apples are red."', "Apples are red."),
]


def _item(response: str, ids: list[str], kwargs: list[dict] | None = None) -> JudgeItem:
    return JudgeItem("prompt", response, {"instruction_id_list": ids, "kwargs": kwargs or [ARGUMENTS[i] for i in ids]})


def test_every_supported_instruction_has_a_case():
    assert set(SUPPORTED_INSTRUCTIONS) == set(ARGUMENTS) == {case[0] for case in CASES}
    assert len(SUPPORTED_INSTRUCTIONS) == 25


@pytest.mark.parametrize("instruction_id,good,bad", CASES, ids=[case[0] for case in CASES])
def test_checker_passes_good_and_fails_bad(instruction_id: str, good: str, bad: str):
    judge = VerifierJudge()
    good_score, bad_score = judge.score([_item(good, [instruction_id]), _item(bad, [instruction_id])])
    assert good_score.value == 1.0, good_score
    assert bad_score.value == 0.0, bad_score
    assert good_score.details["instructions"] == [{"id": instruction_id, "strict": True, "loose": True}]


def test_nothing_reaches_the_network(monkeypatch: pytest.MonkeyPatch):
    """Every checker runs with NLTK downloads, NLTK data loading and sockets all forbidden."""
    import nltk

    def forbidden(*args, **kwargs):
        raise AssertionError("a checker tried to download or load data")

    monkeypatch.setattr(nltk, "download", forbidden)
    monkeypatch.setattr(nltk.data, "load", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    text = "Apples are red. Rivers run.\n\nRivers are LONG AND WIDE. P.S. Any other questions?"
    scores = VerifierJudge().score([_item(text, [i]) for i in SUPPORTED_INSTRUCTIONS])
    assert all(score.value in (0.0, 1.0) for score in scores), [s.error for s in scores if s.value is None]


def test_value_is_the_strict_fraction_and_details_hold_both():
    # The chatty first line breaks "no commas" strictly; loose mode drops the first line and forgives it.
    response = "Sure, here it is:\napples are red and sweet"
    ids = ["punctuation:no_comma", "change_case:english_lowercase", "keywords:existence"]
    strict = VerifierJudge().score([_item(response, ids)])[0]
    assert strict.value == pytest.approx(0.0)
    assert strict.details["strict"] == pytest.approx(0.0)
    assert strict.details["loose"] == pytest.approx(2 / 3)
    assert strict.details["all_strict"] is False and strict.details["all_loose"] is False
    assert [entry["loose"] for entry in strict.details["instructions"]] == [True, True, False]
    loose = VerifierJudge("loose").score([_item(response, ids)])[0]
    assert loose.value == pytest.approx(2 / 3)
    assert VerifierJudge("loose").name == "verifier:loose"


def test_ifeval_null_padding_and_repeated_ids():
    # IFEval's data pads every kwargs dict with the other instructions' keys set to null.
    padded = [{"num_words": None, "keywords": ["apple"]}, {"keywords": ["pear"], "relation": None}]
    score = VerifierJudge().score([_item("an apple a day", ["keywords:existence"] * 2, padded)])[0]
    assert score.value == pytest.approx(0.5)
    assert [entry["strict"] for entry in score.details["instructions"]] == [True, False]


def test_thinking_block_is_ignored_and_empty_response_fails_all():
    ids = ["punctuation:no_comma"]
    think, empty = VerifierJudge().score([_item("<think>a, b, c</think>no commas here", ids), _item("  ", ids)])
    assert think.value == 1.0
    assert empty.value == 0.0 and empty.details["instructions"] == [{"id": ids[0], "strict": False, "loose": False}]


@pytest.mark.parametrize(
    "meta,message",
    [
        ({}, "no verifiable instructions"),
        ({"instruction_id_list": ["no:such"], "kwargs": [{}]}, "unknown instruction id 'no:such'"),
        ({"instruction_id_list": ["keywords:existence"], "kwargs": [{}]}, "needs argument(s) keywords"),
        (
            {
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": 5, "relation": "about"}],
            },
            "bad arguments",
        ),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "1 instruction ids but 2 kwargs"),
    ],
)
def test_unscorable_prompts_give_none_with_a_reason(meta: dict, message: str):
    score = VerifierJudge().score([JudgeItem("prompt", "response", meta)])[0]
    assert score.value is None
    assert message in score.error


def test_compare_prefers_the_response_following_more_instructions():
    judge = VerifierJudge()
    meta = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}
    follows_both = "there are no commas in this plain english sentence"
    verdicts = judge.compare(
        ["p", "p", "p"],
        [follows_both, "Yes, Sir", "same text"],
        ["Has, a comma", "still, bad", "same text"],
        [meta, meta, meta],
    )
    assert [v.preferred for v in verdicts] == ["a", "tie", "tie"]
    assert (verdicts[0].score_a, verdicts[0].score_b) == (1.0, 0.0)


def test_language_detection_is_deterministic():
    # langdetect samples at random unless seeded; a short, ambiguous text shows any wobble across repeats.
    item = _item("ok fine sure", ["change_case:english_lowercase"])
    values = {VerifierJudge().score([item])[0].value for _ in range(8)}
    assert len(values) == 1


def test_offline_sentence_and_word_splitting():
    assert count_sentences("Dr. Smith came home at 5.30 p.m. today. He slept! Did he? Yes...") == 4
    assert count_sentences("") == 0
    assert tokenize_words("HELLO, World. Isn't it GREAT?") == [
        "HELLO",
        ",",
        "World",
        ".",
        "Is",
        "n't",
        "it",
        "GREAT",
        "?",
    ]


def test_describe_instruction():
    no_comma = "In your entire response, refrain from the use of any commas."
    assert describe_instruction("punctuation:no_comma") == no_comma
    assert "at least 3 sentences" in describe_instruction(
        "length_constraints:number_sentences", ARGUMENTS["length_constraints:number_sentences"]
    )
    ending = describe_instruction("startend:end_checker", {"end_phrase": "Any other questions?"})
    assert ending == (
        "Finish your response with this exact phrase Any other questions?. No other words should follow this phrase."
    )
    with pytest.raises(PrefalignError, match="unknown instruction id"):
        describe_instruction("nope")
    with pytest.raises(PrefalignError, match="needs argument"):
        describe_instruction("keywords:forbidden_words", {})
