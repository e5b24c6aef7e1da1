"""Held-out preference accuracy: DPO's implicit reward (by hand, and on the tiny model) and a judge's accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefalign.data.records import PreferenceRecord
from prefalign.data.tokenize import TokenizeConfig
from prefalign.evaluate.implicit_reward import PairLogps, implicit_reward_accuracy, judge_accuracy, pair_logps
from prefalign.evaluate.models import DigestMemo, EvalModel
from prefalign.judges import VerifierJudge


def test_implicit_reward_margins_by_hand():
    policy = PairLogps(chosen=[-10.0, -5.0, -7.0, None], rejected=[-12.0, -5.0, -6.0, None])
    reference = PairLogps(chosen=[-11.0, -5.0, -7.0, None], rejected=[-11.0, -5.0, -7.0, None])
    result = implicit_reward_accuracy("dpo", policy, reference, beta=0.1)
    # pair 1: 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2 > 0; pair 2: 0 (a tie); pair 3: 0.1 * (0 - 1) = -0.1 < 0;
    # pair 4 was dropped by tokenization.
    assert result.margins[:3] == pytest.approx([0.2, 0.0, -0.1])
    assert result.margins[3] is None
    assert result.outcomes == [1.0, 0.5, 0.0, None]
    assert result.accuracy.value == pytest.approx(0.5) and result.accuracy.n == 3
    assert result.margin.value == pytest.approx(0.1 / 3)


RECORDS = [
    PreferenceRecord("What is 2+2?", "4", "5", "pairs:1"),
    PreferenceRecord([{"role": "user", "content": "Say hi."}], "Hello there!", "Go away.", "pairs:2"),
    PreferenceRecord("Name a colour.", "blue", "blue", "pairs:3"),  # identical completions: tokenization drops it
]


def test_a_policy_equal_to_its_reference_scores_exactly_chance(tiny_model_dir: Path, tmp_path: Path):
    """policy == reference: every margin is exactly 0, every pair a tie, accuracy 0.5 with ties counted half."""
    digests = DigestMemo(tmp_path / "digests.json")
    policy = EvalModel("dpo", str(tiny_model_dir), digests)
    reference = EvalModel("sft", str(tiny_model_dir), digests)
    config = TokenizeConfig()
    policy_logps = pair_logps(policy, RECORDS, config, batch_size=2)
    reference_logps = pair_logps(reference, RECORDS, config, batch_size=2)
    assert policy_logps.dropped == 1 and policy_logps.chosen[2] is None
    assert all(c is not None and c < 0 for c in policy_logps.chosen[:2])
    result = implicit_reward_accuracy("dpo", policy_logps, reference_logps, beta=0.1)
    assert result.margins[:2] == [0.0, 0.0]
    assert result.outcomes == [0.5, 0.5, None]
    assert (result.accuracy.value, result.accuracy.low, result.accuracy.high) == (0.5, 0.5, 0.5)


def test_bf16_pair_logps_stay_near_fp32(tiny_model_dir: Path, tmp_path: Path):
    """--dtype bfloat16 scores pairs under bf16 autocast: close to fp32, and really computed in bf16."""
    model = EvalModel("sft", str(tiny_model_dir), DigestMemo(tmp_path / "digests.json"))
    fp32 = pair_logps(model, RECORDS, TokenizeConfig(), batch_size=2)
    bf16 = pair_logps(model, RECORDS, TokenizeConfig(), batch_size=2, bf16=True)
    assert bf16.chosen[2] is None and bf16.dropped == 1
    for a, b in zip(fp32.chosen[:2] + fp32.rejected[:2], bf16.chosen[:2] + bf16.rejected[:2], strict=True):
        assert a != b and abs(a - b) < 0.02 * abs(a)


def test_pair_logps_in_one_padding_free_row_equal_padded_rows(tiny_model_dir: Path, tmp_path: Path):
    """The evaluation scores held-out pairs as DPO trains on them (each prompt once, no padding, pair attention);
    the sums equal those of plain padded rows, and the model still answers as before afterwards."""
    import torch

    from prefalign.data.collate import collate_pairs
    from prefalign.data.tokenize import TokenizedPair, tokenize_pair
    from prefalign.scoring.run import choose_pair_layout, score_completions

    model = EvalModel("sft", str(tiny_model_dir), DigestMemo(tmp_path / "digests.json"))
    records = [*RECORDS[:2], PreferenceRecord("Count to three.", "one two three", "one two", "pairs:4")]
    pairs = [tokenize_pair(record, model.tokenizer, TokenizeConfig()) for record in records]
    prompt = torch.tensor([pairs[0].prompt_ids])
    with torch.no_grad():
        before = model.model(input_ids=prompt).logits
    layout = choose_pair_layout([model.model], 0)
    assert layout.kind == "row" and layout.collate(pairs).input_ids.shape[0] == 1
    fast = pair_logps(model, records, TokenizeConfig(), batch_size=4)  # 2 pairs a batch: two rows
    with torch.no_grad():
        padded = [score_completions(model.model, collate_pairs(pairs[i : i + 1], 0))[1].sum_logps for i in range(3)]
    assert fast.chosen == pytest.approx([float(p[0]) for p in padded], abs=1e-4)
    assert fast.rejected == pytest.approx([float(p[1]) for p in padded], abs=1e-4)
    with torch.no_grad():
        assert torch.allclose(model.model(input_ids=prompt).logits, before, atol=1e-5)  # spans only in a pair row
    # A pair without a prompt has no position to predict its responses' first tokens from: padded rows.
    mixed = layout.collate([*pairs, TokenizedPair([], [5], [6])])
    assert type(mixed).__name__ == "PairBatch" and mixed.input_ids.shape[0] == 8


def test_judge_accuracy_on_pairs_carrying_instructions():
    meta = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    records = [
        PreferenceRecord("List two fruits without commas.", "apples and pears", "apples, pears", "p:1", meta),
        PreferenceRecord("List two colours without commas.", "red, blue", "red and blue", "p:2", meta),
        PreferenceRecord("Say one word without commas.", "yes", "no", "p:3", meta),
        PreferenceRecord("No instructions here.", "a", "b", "p:4"),
    ]
    result = judge_accuracy(VerifierJudge(), records)
    assert result.outcomes == [1.0, 0.0, 0.5, None]
    assert result.accuracy.value == pytest.approx(0.5) and result.failures == 1
    assert "no verifiable instructions" in result.first_error
