"""The built-in prompt set: sizes, determinism, disjoint topics, instructions the verifier checks, no contradictions."""

from __future__ import annotations

import json
import random
import re
from itertools import combinations

import pytest
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

from prefalign.cli import main
from prefalign.errors import PrefalignError
from prefalign.judges import SUPPORTED_INSTRUCTIONS, JudgeItem, VerifierJudge, describe_instruction
from prefalign.prompts import HELDOUT_TOPICS, INSTRUCTIONS, TRAIN_TOPICS, builtin_prompts, conflicts
from prefalign.prompts.instructions import _FORBIDDEN


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return builtin_prompts(seed=0)


def test_sizes_and_splits(prompts: list[dict]):
    train = [p for p in prompts if p["split"] == "train"]
    heldout = [p for p in prompts if p["split"] == "heldout"]
    assert (len(train), len(heldout)) == (720, 240)
    assert [p["split"] for p in prompts] == ["train"] * 720 + ["heldout"] * 240
    assert builtin_prompts(0, "train") == train and builtin_prompts(0, "heldout") == heldout
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert (train[0]["id"], heldout[-1]["id"]) == ("train-0000", "heldout-0239")
    assert set(prompts[0]) == {
        "id",
        "split",
        "topic",
        "prompt",
        "instruction_id_list",
        "kwargs",
        "phrasings",
        "unseen_phrasing",
    }


def test_train_and_heldout_topics_are_disjoint(prompts: list[dict]):
    assert not set(TRAIN_TOPICS) & set(HELDOUT_TOPICS)
    assert len(set(TRAIN_TOPICS) | set(HELDOUT_TOPICS)) == len(TRAIN_TOPICS) + len(HELDOUT_TOPICS) >= 160
    assert {p["topic"] for p in prompts if p["split"] == "train"} == set(TRAIN_TOPICS)
    assert {p["topic"] for p in prompts if p["split"] == "heldout"} == set(HELDOUT_TOPICS)


def test_same_seed_same_prompts_other_seed_other_prompts(prompts: list[dict]):
    assert builtin_prompts(seed=0) == prompts
    other = builtin_prompts(seed=1)
    assert [p["topic"] for p in other] == [p["topic"] for p in prompts]  # topics are fixed, the rest is drawn
    changed = sum(a["prompt"] != b["prompt"] for a, b in zip(prompts, other))
    assert changed > len(prompts) * 0.8


def test_every_instruction_is_supported_with_valid_arguments(prompts: list[dict]):
    used = set()
    for prompt in prompts:
        assert 1 <= len(prompt["instruction_id_list"]) <= 3
        assert len(prompt["kwargs"]) == len(prompt["instruction_id_list"])
        for instruction, kwargs in zip(prompt["instruction_id_list"], prompt["kwargs"]):
            assert instruction in SUPPORTED_INSTRUCTIONS
            describe_instruction(instruction, kwargs)  # raises on missing or bad arguments
            used.add(instruction)
    assert used == set(INSTRUCTIONS)  # every kind of the catalogue shows up
    counts = {n: sum(len(p["instruction_id_list"]) == n for p in prompts) for n in (1, 2, 3)}
    assert all(count > 50 for count in counts.values()), counts


def test_no_contradictory_combinations(prompts: list[dict]):
    ifeval_conflicts = conflict_make({k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()})
    assert conflicts("change_case:english_lowercase", "change_case:english_capital")
    for prompt in prompts:
        ids = prompt["instruction_id_list"]
        for first, second in combinations(ids, 2):
            assert not conflicts(first, second), prompt
            assert second not in ifeval_conflicts[first], prompt  # IFEval's own list agrees
        asked = [w for k in prompt["kwargs"] for w in k.get("keywords", [k.get("keyword")]) if w]
        forbidden = [w for k in prompt["kwargs"] for w in k.get("forbidden_words", [])]
        assert not set(asked) & set(forbidden), prompt


def test_prompt_text_is_the_task_then_each_instruction(prompts: list[dict]):
    for prompt in [p for p in prompts if len(p["instruction_id_list"]) == 3][:20]:
        instructions = zip(prompt["instruction_id_list"], prompt["kwargs"], prompt["phrasings"])
        texts = [INSTRUCTIONS[i].describe(k, n) for i, k, n in instructions]
        assert prompt["prompt"].endswith(" ".join(texts))
        assert prompt["topic"] in prompt["prompt"].removesuffix(" ".join(texts))


def test_every_kind_has_several_phrasings_and_some_are_heldout_only():
    for kind in INSTRUCTIONS.values():
        assert len(kind.phrasings) >= 4 and kind.train_phrasings >= 3
        assert not kind.is_heldout_only(kind.train_phrasings - 1) and kind.is_heldout_only(len(kind.phrasings) - 1)
        kwargs = kind.sample(random.Random(0))
        texts = [kind.describe(kwargs, n) for n in range(len(kind.phrasings))]
        assert len(set(texts)) == len(texts), kind.id


def test_train_prompts_never_use_a_heldout_only_phrasing(prompts: list[dict]):
    def heldout_only(prompt: dict) -> list[bool]:
        return [INSTRUCTIONS[i].is_heldout_only(n) for i, n in zip(prompt["instruction_id_list"], prompt["phrasings"])]

    train_texts = set()
    for prompt in prompts:
        flags = heldout_only(prompt)
        assert len(flags) == len(prompt["instruction_id_list"])
        if prompt["split"] == "train":
            assert not any(flags) and prompt["unseen_phrasing"] is False
            instructions = zip(prompt["instruction_id_list"], prompt["kwargs"], prompt["phrasings"])
            train_texts |= {INSTRUCTIONS[i].describe(k, n) for i, k, n in instructions}
        else:
            assert all(flags) if prompt["unseen_phrasing"] else not any(flags)
    unseen = [p for p in prompts if p["unseen_phrasing"]]
    assert 80 <= len(unseen) <= 160  # about half of the 240 held-out prompts
    for prompt in unseen:  # an unseen wording never appears in a train prompt, whatever its arguments
        instructions = zip(prompt["instruction_id_list"], prompt["kwargs"], prompt["phrasings"])
        assert not {INSTRUCTIONS[i].describe(k, n) for i, k, n in instructions} & train_texts
    # Every phrasing is used somewhere: each train phrasing by train prompts, each held-out-only one by held-out ones.
    used = {(i, n) for p in prompts for i, n in zip(p["instruction_id_list"], p["phrasings"])}
    assert used == {(i, n) for i, kind in INSTRUCTIONS.items() for n in range(len(kind.phrasings))}


def test_every_phrasing_states_every_argument():
    for kind in INSTRUCTIONS.values():
        for seed in range(6):
            kwargs = kind.sample(random.Random(seed))
            values = [v for key, value in kwargs.items() if key != "relation" for v in _as_list(value)]
            for n in range(len(kind.phrasings)):
                text = kind.describe(kwargs, n)
                assert all(str(value) in text for value in values), (kind.id, n, text)
                if "relation" in kwargs:  # "less than" is said as fewer/under/shorter/less, "at least" otherwise
                    strict = any(w in text for w in ("fewer than", "under", "shorter", "less than"))
                    assert strict == (kwargs["relation"] == "less than"), (kind.id, n, text)


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def test_no_phrasing_uses_a_forbidden_word():
    # A phrasing that says "very" would contradict a prompt that forbids it.
    for kind in INSTRUCTIONS.values():
        if kind.id == "keywords:forbidden_words":
            continue
        for n in range(len(kind.phrasings)):
            text = kind.describe(kind.sample(random.Random(n)), n).lower()
            assert not set(re.findall(r"[a-z]+", text)) & set(_FORBIDDEN), (kind.id, n, text)


@pytest.mark.parametrize(
    "instruction, kwargs, text, follows, breaks",
    [
        (
            "length_constraints:number_words",
            {"num_words": 5, "relation": "less than"},
            "Use fewer than 5 words.",
            "Two words.",
            "This answer has six words.",
        ),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, None, "* one\n* two", "* one"),
        (
            "startend:end_checker",
            {"end_phrase": "That is all."},
            'End your answer with the exact phrase "That is all." and nothing after it.',
            "Done. That is all.",
            "That is all. Bye.",
        ),
        (
            "keywords:existence",
            {"keywords": ["easy", "friend"]},
            'Use the words "easy" and "friend" in your answer.',
            "An easy friend.",
            "An easy day.",
        ),
        (
            "keywords:forbidden_words",
            {"forbidden_words": ["also", "very"]},
            'Do not use the words "also" or "very".',
            "Fine.",
            "Very fine.",
        ),
        (
            "detectable_content:number_placeholders",
            {"num_placeholders": 1},
            "Include at least 1 placeholder in square brackets, such as [name].",
            "Dear [name],",
            "Dear Ann,",
        ),
    ],
)
def test_our_phrasing_says_what_the_checker_checks(instruction, kwargs, text, follows, breaks):
    if text is not None:
        assert INSTRUCTIONS[instruction].describe(kwargs) == text
    judge = VerifierJudge()
    meta = {"instruction_id_list": [instruction], "kwargs": [kwargs]}
    scores = judge.score([JudgeItem("p", follows, meta), JudgeItem("p", breaks, meta)])
    assert [s.value for s in scores] == [1.0, 0.0]


def test_unknown_split_is_an_error():
    with pytest.raises(PrefalignError, match="unknown prompt split 'test'"):
        builtin_prompts(0, "test")  # type: ignore[arg-type]  # a split that does not exist, on purpose


def test_cli_writes_the_set(tmp_path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "prompts.jsonl"
    assert main(["prompts", "builtin", "-o", str(out), "--seed", "3", "--split", "heldout"]) == 0
    assert capsys.readouterr().out == f"wrote 240 prompts (240 heldout) to {out}\n"
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == builtin_prompts(3, "heldout")


def test_cli_missing_directory_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]):
    assert main(["prompts", "builtin", "-o", str(tmp_path / "nope" / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefalign: error: ") and "no such directory" in err and err.count("\n") == 1
