"""Pairwise win rates: the verifier (pointwise, compared by score) and an LLM judge over real HTTP (both orders)."""

from __future__ import annotations

import pytest

from helpers.fake_llm_server import FakeLLMServer, Reply
from prefalign.evaluate.pairwise import compare, uses_pointwise_compare, verdicts_from_scores
from prefalign.evaluate.prompt_set import EvalPrompt
from prefalign.judges import JudgeItem, VerifierJudge, load_judge

NO_COMMA = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
PROMPTS = [EvalPrompt(f"p{i}", f"Describe item {i}. Do not use any commas.", NO_COMMA) for i in range(4)]
RESPONSES = {
    "dpo": ["No commas here", "Also none", "Red, green", "Plain text"],
    "sft": ["One, two", "None at all", "Blue, yellow", "A, b"],
}


def test_verifier_win_rate_and_symmetry():
    judge = VerifierJudge()
    forward = compare(judge, PROMPTS, "dpo", "sft", RESPONSES)
    assert forward.outcomes == [1.0, 0.5, 0.5, 1.0]  # wins where only dpo avoids commas; ties where both pass/fail
    assert forward.counts == {"wins": 2, "ties": 2, "losses": 0, "failures": 0, "inconsistent": 0}
    assert forward.win_rate.value == pytest.approx(0.75)
    backward = compare(judge, PROMPTS, "sft", "dpo", RESPONSES)
    assert backward.outcomes == [1.0 - o for o in forward.outcomes]
    assert backward.win_rate.value == pytest.approx(1 - forward.win_rate.value)
    assert backward.win_rate.low == pytest.approx(1 - forward.win_rate.high)
    assert backward.win_rate.high == pytest.approx(1 - forward.win_rate.low)


def test_comparing_from_pointwise_scores_gives_the_judges_own_verdicts():
    judge = VerifierJudge()
    assert uses_pointwise_compare(judge)
    scores = {
        label: judge.score([JudgeItem(p.prompt, r, p.meta) for p, r in zip(PROMPTS, texts)])
        for label, texts in RESPONSES.items()
    }
    from_scores = verdicts_from_scores(scores["dpo"], scores["sft"])
    direct = judge.compare([p.prompt for p in PROMPTS], RESPONSES["dpo"], RESPONSES["sft"], [p.meta for p in PROMPTS])
    assert [v.preferred for v in from_scores] == [v.preferred for v in direct]
    with_scores = compare(judge, PROMPTS, "dpo", "sft", RESPONSES, pointwise=scores)
    assert with_scores.outcomes == compare(judge, PROMPTS, "dpo", "sft", RESPONSES).outcomes


def test_prompts_the_judge_cannot_score_are_left_out_and_counted():
    prompts = [*PROMPTS[:2], EvalPrompt("bare", "No instructions here.")]
    responses = {label: texts[:3] for label, texts in RESPONSES.items()}
    result = compare(VerifierJudge(), prompts, "dpo", "sft", responses)
    assert result.outcomes == [1.0, 0.5, None]
    assert result.failures == 1 and "no verifiable instructions" in result.errors[0]
    assert result.win_rate.n == 2


def test_llm_judge_both_orders_inconsistent_is_a_tie(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer(api_key="sk-test") as server:
        server.answer_with(lambda prompt: Reply(text="The first is better. [[A]]"))  # position bias only
        judge = load_judge("openai:judge", base_url=server.base_url + "/v1", cache_path=tmp_path / "cache.sqlite")
        assert not uses_pointwise_compare(judge)
        result = compare(judge, PROMPTS, "dpo", "sft", RESPONSES, words={"dpo": [3, 2, 2, 2], "sft": [2, 3, 2, 2]})
        assert len(server.requests) == 2 * len(PROMPTS)  # each pair asked in both orders
        judge.close()
    assert result.outcomes == [0.5] * 4 and result.inconsistent == 4
    assert (result.win_rate.value, result.win_rate.low, result.win_rate.high) == (0.5, 0.5, 0.5)
    assert result.lc_win_rate.value == pytest.approx(0.5)
