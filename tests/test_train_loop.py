"""The loop's pure parts: data order, learning-rate schedule, eval split, per-rank shares."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import pytest
import torch

from prefalign.errors import PrefalignError
from prefalign.train.config import SFTConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import process_settings
from prefalign.train.memory import release_free_memory
from prefalign.train.setup import split_eval
from prefalign.train.steps import DataOrder, lr_factor, make_optimizer, my_share


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


def test_eval_split_errors_name_the_option() -> None:
    with pytest.raises(PrefalignError, match=r"^--eval-split 0.5: .*nothing to train on") as error:
        split_eval([1], 0.5, seed=1, unit="pairs")
    assert "pairs" in str(error.value) and "\n" not in str(error.value)


def test_process_settings_flush_denormals_on_cpu_and_restore_them() -> None:
    def flushing() -> bool:
        return float(torch.tensor(1e-39) * 1.0) == 0.0

    assert not flushing()
    with process_settings(torch.device("cpu")):
        assert flushing()
    assert not flushing()
    torch.set_flush_denormal(True)
    try:
        with process_settings(torch.device("cpu")):
            assert flushing()
        assert flushing()  # the previous setting, whatever it was
    finally:
        torch.set_flush_denormal(False)


def test_a_rank_without_items_gets_a_weightless_stand_in() -> None:
    ranks = [DistInfo(rank, 2, rank, torch.device("cpu"), rank == 0) for rank in (0, 1)]
    assert [my_share(["a", "b", "c"], info) for info in ranks] == [(["a", "c"], 1.0), (["b"], 1.0)]
    assert [my_share(["a"], info) for info in ranks] == [(["a"], 1.0), (["a"], 0.0)]


def test_the_optimizer_is_fused_adamw_with_the_same_arithmetic(tmp_path: Path) -> None:
    config = SFTConfig(model="m", data="d", output_dir=str(tmp_path), learning_rate=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    start, grad = torch.randn(64, 32), torch.randn(64, 32)
    results = []
    for fused in (True, False):
        weight = torch.nn.Parameter(start.clone())
        optimizer = make_optimizer([weight], config, torch.device("cpu"))
        if not fused:
            optimizer = torch.optim.AdamW([weight], lr=1e-2, weight_decay=0.1, fused=False)
        assert optimizer.defaults["fused"] is fused
        for _ in range(3):
            weight.grad = grad.clone()
            optimizer.step()
        results.append(weight.detach())
    assert not torch.equal(results[0], start)
    assert torch.allclose(results[0], results[1], atol=1e-6)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


GLIBC = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


@GLIBC
def test_freed_memory_goes_back_to_the_system() -> None:
    # 64 KiB blocks sit in glibc's heap, below its mmap threshold; the last one still alive pins the heap's top, so
    # freeing the others returns nothing to the system until the heap is trimmed.
    blocks = [torch.ones(16 * 1024) for _ in range(3000)]  # ~190 MiB, every page touched
    keep = blocks[-1]
    del blocks
    before = _rss_mib()
    release_free_memory()
    assert _rss_mib() < before - 100
    assert keep.sum() == 16 * 1024


def test_trim_in_backward_trims_at_every_nth_layer_and_leaves_gradients_alone(tiny_model_dir, monkeypatch):
    from prefalign.models.loading import load_model
    from prefalign.train import memory

    model = load_model(str(tiny_model_dir), device="cpu").train()
    layers = memory.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers >= 2
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1))
    handles = memory.trim_in_backward(model, 2)
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == len(handles) == len(layers) // 2  # layers 2, 4, ...: one trim each, during backward
    for before, param in zip(plain, model.parameters()):
        torch.testing.assert_close(param.grad, before, atol=0, rtol=0)
    with torch.no_grad():
        model(input_ids=ids)  # no gradient, no hook
    assert len(calls) == len(layers) // 2
    assert memory.trim_in_backward(model, len(layers) + 1) == []  # nothing to hook: the loop says so
