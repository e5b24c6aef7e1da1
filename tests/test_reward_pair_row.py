"""The reward model on DPO's layout: each pair one sequence [prompt | chosen | rejected] (the prompt computed once),
every pair of a batch in one padding-free row, the head reading the last token of each response, the LM term at the
chosen response's tokens only. It must give what padded chosen and rejected rows give: rewards, the loss (pairwise
and LM terms) and its gradients, in fp32 within 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefalign.data.tokenize import TokenizedPair
from prefalign.models.reward import RewardModel
from prefalign.scoring.run import PairLayout
from prefalign.train.config import RewardConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.objectives.reward import RewardItem, RewardObjective
from test_train_forward import load_tiny, random_pairs
from test_train_support import single_thread  # noqa: F401  (an autouse fixture: importing it applies it here)

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


def objective_for(model: RewardModel, lm_weight: float) -> RewardObjective:
    objective = RewardObjective(RewardConfig(model="unused", data="unused", output_dir="unused", lm_weight=lm_weight))
    objective.setup(model, {}, SINGLE)
    assert objective.layout.kind == "row"  # SDPA models run pair attention
    return objective


def assert_pair_row_equals_padded(model: RewardModel, pairs: list[TokenizedPair], lm_weight: float) -> None:
    objective = objective_for(model, lm_weight)
    items = [RewardItem(pair, margin) for pair, margin in zip(pairs, torch.linspace(-1, 1, len(pairs)).tolist())]
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for pair_rows in (True, False):
        objective.layout = PairLayout("row" if pair_rows else "padded", objective.layout.pad_id)
        batch = objective.collate(items)
        assert (batch.pairs.input_ids.shape[0] == 1) == pair_rows
        inputs = batch.pairs.model_inputs()
        rewards = model(**inputs, reward_positions=batch.pairs.sequence_ends).rewards
        loss, sums = objective.loss(model, batch)
        results[pair_rows] = (rewards, loss, sums, torch.autograd.grad(loss, trainable))
    (row_rewards, row_loss, row_sums, row_grads), (rewards, loss, sums, grads) = results[True], results[False]
    torch.testing.assert_close(row_rewards, rewards, atol=1e-4, rtol=0)
    torch.testing.assert_close(row_loss, loss, atol=1e-4, rtol=0)
    for key in ("rm_loss", "lm_loss", "rewards/chosen", "rewards/rejected"):
        if lm_weight or key != "lm_loss":
            torch.testing.assert_close(row_sums[key], sums[key], atol=1e-4, rtol=0, msg=key)
    sparse_rows = getattr(model.lm.get_input_embeddings(), "sparse", False)
    assert any(grad.is_sparse for grad in row_grads) == sparse_rows == (lm_weight == 0 and not model.is_lora)
    for ours, theirs in zip(row_grads, grads):
        # Without the LM term a full model's embedding gradient is row-sparse (`train.sparse_rows`): the padded rows
        # list their padding's rows too, with zero gradient, so compare values, not sparsity patterns.
        dense = [grad.to_dense() if grad.is_sparse else grad for grad in (ours, theirs)]
        torch.testing.assert_close(*dense, atol=1e-4, rtol=1e-3)


def test_sequence_ends_are_each_responses_last_token() -> None:
    from prefalign.data.collate import collate_pairs
    from prefalign.data.shared_prefix import collate_pair_row, collate_shared_prefix

    pairs = [TokenizedPair([10, 11], [20, 21, 22], [30, 31]), TokenizedPair([12], [23], [32])]
    # [10 11 20 21 22 30 31 | 12 23 32]: chosen ends at 4 and 8, rejected at 6 and 9.
    assert collate_pair_row(pairs).sequence_ends.tolist() == [4, 8, 6, 9]
    # Packed rows of width 7: the second pair is row 1, flat positions 7 + (0, 1, 2).
    assert collate_shared_prefix(pairs, pad_id=0).sequence_ends.tolist() == [4, 8, 6, 9]
    # Padded rows of width 5: chosen rows 0-1, rejected rows 2-3.
    assert collate_pairs(pairs, pad_id=0).sequence_ends.tolist() == [4, 6, 13, 16]


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_pair_row_equals_padded_rows_on_the_tiny_model(tiny_model_dir: Path, lora: bool, lm_weight: float) -> None:
    torch.manual_seed(0)
    model = RewardModel(load_tiny(tiny_model_dir, lora=lora), "tiny").eval()
    pairs = random_pairs(model.lm.get_output_embeddings().weight.shape[0], 6, seed=4)
    assert_pair_row_equals_padded(model, pairs, lm_weight)


@pytest.mark.model
@pytest.mark.shared
def test_pair_row_equals_padded_rows_on_real_hh_pairs_and_smollm2(smollm2_dir: Path, hh_test_path: Path) -> None:
    from prefalign.data.loading import load_preferences
    from prefalign.data.tokenize import TokenizeConfig, tokenize_preferences
    from prefalign.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    records = load_preferences(str(hh_test_path), "hh").records[:4]
    pairs, _ = tokenize_preferences(records, tokenizer, TokenizeConfig(max_length=96, max_prompt_length=64))
    assert len(pairs) == 4 and all(p.chosen_ids != p.rejected_ids for p in pairs)
    torch.manual_seed(0)
    model = RewardModel(load_model(str(smollm2_dir), device="cpu"), "smollm2").eval()
    assert_pair_row_equals_padded(model, pairs, lm_weight=0.5)


def test_prompt_groups_lay_out_each_response_after_its_prompt() -> None:
    from prefalign.data.shared_prefix import collate_prompt_groups

    row = collate_prompt_groups([([10, 11], [[20, 21, 22], [30], [40, 41]]), ([12], [[23]])])
    # [10 11 20 21 22 30 40 41 | 12 23]: every response's positions continue from its prompt's end.
    assert row.input_ids.tolist() == [[10, 11, 20, 21, 22, 30, 40, 41, 12, 23]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 2, 3, 0, 1]]
    assert row.spans == ((0, 2, 3, 1, 2), (8, 1, 1))
    assert row.response_ends.tolist() == [4, 5, 7, 9]
    with pytest.raises(ValueError, match="non-empty"):
        collate_prompt_groups([([10], [[20], []])])


def grouped_rows(vocab: int) -> list[tuple[list[int], list[int]]]:
    """Rows as an evaluation gives a reward-model judge: three models' answers to each prompt (one answer repeated),
    listed model by model, plus a prompt answered once."""
    pairs = random_pairs(vocab, 5, seed=7)
    answers = [[p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs], [p.chosen_ids[::-1] for p in pairs]]
    answers[2][1] = answers[0][1]  # two models gave the same answer to prompt 1
    rows = [(pair.prompt_ids, model[i]) for model in answers for i, pair in enumerate(pairs)]
    return [*rows, ([*pairs[0].prompt_ids, 5], [6, 7])]


@pytest.mark.parametrize("batch_size", [1, 4, 64])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_prompt_group_rewards_equal_padded_rows(tiny_model_dir: Path, lora: bool, batch_size: int) -> None:
    """Each answer scored with its prompt shared by its siblings gets the reward it gets in a padded row of its own."""
    from prefalign.models.reward import _score_padded_rows, score_token_rows
    from prefalign.scoring.run import unwrap

    torch.manual_seed(0)
    model = RewardModel(load_tiny(tiny_model_dir, lora=lora), "tiny").eval()
    rows = grouped_rows(model.lm.get_output_embeddings().weight.shape[0])
    padded = _score_padded_rows(model, rows, pad_id=0, batch_size=3)
    grouped = score_token_rows(model, rows, pad_id=0, batch_size=batch_size)
    assert unwrap(model.lm).config._attn_implementation == "prefalign_pairs"  # the grouped path ran
    torch.testing.assert_close(torch.tensor(grouped), torch.tensor(padded), atol=1e-4, rtol=0)
    assert grouped[1] == grouped[11]  # the repeated answer is scored once
    assert len(set(grouped)) == len(rows) - 1  # and no two other answers share a reward by accident


@pytest.mark.parametrize("padded", [False, True], ids=["grouped", "padded"])
def test_scoring_bar_counts_every_row(tiny_model_dir: Path, padded: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """The bar an evaluation shows while its reward model scores: every row counted once, a repeated answer too."""
    from prefalign.models.reward import score_token_rows

    torch.manual_seed(0)
    model = RewardModel(load_tiny(tiny_model_dir, lora=False), "tiny").eval()
    rows = grouped_rows(model.lm.get_output_embeddings().weight.shape[0])
    if padded:  # an empty prompt sends every row to the padded path
        rows = [([], completion) for _, completion in rows]
    score_token_rows(model, rows, pad_id=0, batch_size=4, progress=True)
    bar = capsys.readouterr().err.split("\r")[-1]
    assert "reward model" in bar and f"{len(rows)}/{len(rows)}" in bar, bar
    score_token_rows(model, rows, pad_id=0, batch_size=4)
    assert capsys.readouterr().err == ""  # no bar unless asked for


@pytest.mark.model
def test_prompt_group_rewards_equal_padded_rows_on_smollm2(smollm2_dir: Path) -> None:
    from prefalign.data.tokenize import TokenizeConfig, tokenize_sft
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.models.reward import _score_padded_rows, score_token_rows
    from prefalign.prompts import builtin_prompts

    tokenizer = load_tokenizer(str(smollm2_dir))
    prompts = [row["prompt"] for row in builtin_prompts(split="heldout")[:3]]
    answers = ["Sure. Here it is, in two sentences. That is all.", "no", '"A quoted answer, with a comma."']
    examples = [tokenize_sft(p, a, tokenizer, TokenizeConfig(max_length=128)) for a in answers for p in prompts]
    rows = [(e.prompt_ids, e.completion_ids) for e in examples]
    torch.manual_seed(0)
    model = RewardModel(load_model(str(smollm2_dir), device="cpu"), "smollm2").eval()
    padded = _score_padded_rows(model, rows, tokenizer.pad_token_id, batch_size=8)
    grouped = score_token_rows(model, rows, tokenizer.pad_token_id, batch_size=8)
    torch.testing.assert_close(torch.tensor(grouped), torch.tensor(padded), atol=1e-4, rtol=0)
