"""Collation: right padding, labels only on completion tokens, chosen rows before rejected rows."""

from __future__ import annotations

import pytest
import torch

from prefalign.data.collate import IGNORE_INDEX, collate_pairs, collate_sft, pad_sequences
from prefalign.data.tokenize import SFTExample, TokenizedPair

PAD = 0
M = IGNORE_INDEX


def test_pad_sequences_masks_prompt_and_padding() -> None:
    batch = pad_sequences([[5, 6], [7]], [[8, 9, 2], [3, 2]], PAD)
    assert batch.input_ids.tolist() == [[5, 6, 8, 9, 2], [7, 3, 2, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.labels.tolist() == [[M, M, 8, 9, 2], [M, 3, 2, M, M]]
    assert batch.num_completion_tokens == 5
    assert batch.num_tokens == 8


def test_pad_sequences_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError):
        pad_sequences([[1]], [[2], [3]], PAD)
    with pytest.raises(ValueError):
        pad_sequences([], [], PAD)


def test_collate_pairs_puts_chosen_rows_first_and_splits_back() -> None:
    pairs = [
        TokenizedPair(prompt_ids=[10, 11], chosen_ids=[20, 2], rejected_ids=[30, 31, 2]),
        TokenizedPair(prompt_ids=[12], chosen_ids=[21, 22, 23, 2], rejected_ids=[32, 2]),
    ]
    batch = collate_pairs(pairs, PAD)
    assert batch.num_pairs == 2
    assert batch.input_ids.shape == (4, 5)
    assert batch.input_ids[0, :4].tolist() == [10, 11, 20, 2]
    assert batch.input_ids[1].tolist() == [12, 21, 22, 23, 2]
    assert batch.input_ids[2].tolist() == [10, 11, 30, 31, 2]
    assert batch.labels[3].tolist() == [M, 32, 2, M, M]
    chosen, rejected = batch.split(torch.arange(4))
    assert chosen.tolist() == [0, 1] and rejected.tolist() == [2, 3]
    moved = batch.to("cpu")
    assert moved.num_pairs == 2 and torch.equal(moved.labels, batch.labels)


def test_collate_sft_labels_the_response_only() -> None:
    examples = [SFTExample(prompt_ids=[4, 5, 6], completion_ids=[7, 2]), SFTExample(prompt_ids=[9], completion_ids=[2])]
    batch = collate_sft(examples, PAD)
    assert batch.labels.tolist() == [[M, M, M, 7, 2], [M, 2, M, M, M]]
    assert batch.input_ids[1].tolist() == [9, 2, PAD, PAD, PAD]
