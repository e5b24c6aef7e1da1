"""The loop's pure parts: data order, learning-rate schedule, eval split, per-rank shares."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.errors import PrefalignError
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import DataOrder, lr_factor, my_share, split_eval


def test_each_epoch_is_a_seeded_permutation_in_global_batches() -> None:
    order = DataOrder(num_items=10, per_step=4, seed=3)
    assert order.steps_per_epoch == 3  # 4 + 4 + 2
    epoch0 = [order.indices(s) for s in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(i for b in epoch0 for i in b) == list(range(10))
    epoch1 = [i for s in range(3, 6) for i in order.indices(s)]
    assert sorted(epoch1) == list(range(10)) and epoch1 != [i for b in epoch0 for i in b]
    # A function of (seed, step) alone: a fresh object (a resumed run) asked for step 4 first agrees.
    assert DataOrder(10, 4, seed=3).indices(4) == order.indices(4)
    assert DataOrder(10, 4, seed=4).indices(0) != order.indices(0)


def test_learning_rate_warms_up_then_decays() -> None:
    assert [lr_factor(s, 10, 4, "linear") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "linear") == 1.0 and math.isclose(lr_factor(9, 10, 4, "linear"), 1 / 6)
    assert math.isclose(lr_factor(7, 10, 4, "cosine"), 0.5)
    assert lr_factor(9, 10, 0, "constant") == 1.0
    assert lr_factor(0, 10, 0, "linear") == 1.0


def test_eval_split_is_seeded_disjoint_and_never_empty() -> None:
    items = list(range(40))
    train, held = split_eval(items, 0.1, seed=1)
    assert len(held) == 4 and sorted(train + held) == items
    assert split_eval(items, 0.1, seed=1) == (train, held) and split_eval(items, 0.1, seed=2)[1] != held
    assert len(split_eval(items[:5], 0.05, seed=1)[1]) == 1
    assert split_eval(items, 0.0, seed=1) == (items, [])
    with pytest.raises(PrefalignError, match="nothing to train on"):
        split_eval(items[:1], 0.5, seed=1)


def test_a_rank_without_items_gets_a_weightless_stand_in() -> None:
    ranks = [DistInfo(rank, 2, rank, torch.device("cpu"), rank == 0) for rank in (0, 1)]
    assert [my_share(["a", "b", "c"], info) for info in ranks] == [(["a", "c"], 1.0), (["b"], 1.0)]
    assert [my_share(["a"], info) for info in ranks] == [(["a"], 1.0), (["a"], 0.0)]
