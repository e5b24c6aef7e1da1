"""Checkpoints: a save/load round trip restores weights, optimizer, scheduler and RNG exactly, atomically and pruned."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist

from prefalign.errors import PrefalignError
from prefalign.train.checkpoint import (
    DamagedCheckpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    resumable_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def _load_tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def _lora(model, dropout: float = 0.1):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, config)


def _optimizer_and_scheduler(model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    return optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> None:
    # Random ids drawn from torch's RNG: a restored RNG reproduces the batch, and LoRA dropout draws from it too.
    ids = torch.randint(3, 500, (2, 12))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _draws() -> tuple[float, list[float], list[float]]:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), (index, key)


def _round_trip(tmp_path, model, optimizer, scheduler):
    """Save after two steps, perturb everything, load, check; return the checkpoint and the parameters it holds."""
    _train_step(model, optimizer, scheduler)
    _train_step(model, optimizer, scheduler)
    path = save_checkpoint(
        tmp_path,
        2,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainer_state={"epoch": 0, "batches_seen": 2},
        keep_last=3,
    )
    saved = (_params(model), copy.deepcopy(optimizer.state_dict()), scheduler.state_dict(), scheduler.get_last_lr())
    expected_draws = _draws()
    _train_step(model, optimizer, scheduler)  # what an uninterrupted run does next
    expected_next = _params(model)

    _train_step(model, optimizer, scheduler)  # perturb: weights, optimizer, scheduler, RNG all move on
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    perturbed = _params(model)
    assert any(not torch.equal(perturbed[name], saved[0][name]) for name in perturbed)  # the load has work to do

    state = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert state == {"epoch": 0, "batches_seen": 2, "step": 2}
    _assert_same_params(_params(model), saved[0])
    _assert_same_optimizer_state(optimizer.state_dict(), saved[1])
    assert scheduler.state_dict() == saved[2]
    assert scheduler.get_last_lr() == saved[3]
    assert _draws() == expected_draws
    _train_step(model, optimizer, scheduler)
    _assert_same_params(_params(model), expected_next)  # resuming continues exactly where the run was
    return path, saved[0]


def test_full_model_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    model = _load_tiny(tiny_model_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: safetensors must cope with sharing
    optimizer, scheduler = _optimizer_and_scheduler(model)
    path, saved = _round_trip(tmp_path, model, optimizer, scheduler)

    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE",
        "model.safetensors",
        "optimizer.pt",
        "rng.json",
        "rng.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    # A freshly loaded model gets the trained weights, and its embeddings stay tied.
    fresh = _load_tiny(tiny_model_dir)
    fresh_optimizer, fresh_scheduler = _optimizer_and_scheduler(fresh)
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    _assert_same_params(_params(fresh), saved)
    assert not torch.equal(fresh.model.embed_tokens.weight, _load_tiny(tiny_model_dir).model.embed_tokens.weight)


def test_lora_round_trip_saves_only_the_adapter(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    model = _lora(_load_tiny(tiny_model_dir))
    optimizer, scheduler = _optimizer_and_scheduler(model)
    path, _saved = _round_trip(tmp_path, model, optimizer, scheduler)

    assert not (path / "model.safetensors").exists()
    from safetensors.torch import load_file

    adapter = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)
    assert any(t.abs().sum() > 0 for key, t in adapter.items() if "lora_B" in key)  # trained, not the zero init

    # The adapter directory is a regular peft adapter, and a fresh peft model resumes from it.
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(_load_tiny(tiny_model_dir), str(path / "adapter"))
    fresh = _lora(_load_tiny(tiny_model_dir))
    fresh_optimizer, fresh_scheduler = _optimizer_and_scheduler(fresh)
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    lora_params = {name: p for name, p in fresh.named_parameters() if "lora_" in name}
    for name, p in reloaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(p, lora_params[name]), name


def test_ddp_wrapped_model_is_saved_unwrapped(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        inner = torch.nn.Linear(4, 3)
        ddp = torch.nn.parallel.DistributedDataParallel(inner)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        path = save_checkpoint(
            tmp_path, 1, model=ddp, optimizer=optimizer, scheduler=None, trainer_state={}, keep_last=1
        )
    finally:
        dist.destroy_process_group()
    from safetensors.torch import load_file

    assert set(load_file(str(path / "model.safetensors"))) == {"weight", "bias"}  # no "module." prefix
    other = torch.nn.Linear(4, 3)
    load_checkpoint(path, model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), scheduler=None)
    assert torch.equal(other.weight, inner.weight) and torch.equal(other.bias, inner.bias)


def _save_linear(tmp_path, step: int, keep_last: int = 2, optimizer=None):
    model = torch.nn.Linear(2, 2)
    return save_checkpoint(
        tmp_path,
        step,
        model=model,
        optimizer=optimizer or torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler=None,
        trainer_state={"step": -1},
        keep_last=keep_last,
    )


def test_prunes_to_the_last_k_and_finds_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 10, 15, 20, 100):
        _save_linear(tmp_path, step, keep_last=3)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-100", "step-15", "step-20"]
    assert latest_checkpoint(tmp_path) == root / "step-100"  # numeric order, not string order
    assert json.loads((root / "step-100" / "trainer_state.json").read_text())["step"] == 100

    _save_linear(tmp_path, 101, keep_last=0)  # 0 keeps everything
    assert len(list(root.iterdir())) == 4


def test_half_written_checkpoints_are_ignored_then_cleaned(tmp_path):
    good = _save_linear(tmp_path, 4)
    root = tmp_path / "checkpoints"
    torn = root / "step-8.tmp-99999"  # a save killed before its rename
    torn.mkdir()
    (torn / "optimizer.pt").write_bytes(b"\x00" * 10)
    (torn / "COMPLETE").write_text("8\n")
    unmarked = root / "step-9"  # a step directory without its marker (e.g. copied partially by hand)
    unmarked.mkdir()
    assert latest_checkpoint(tmp_path) == good

    class Exploding(torch.optim.SGD):
        def state_dict(self):
            raise RuntimeError("disk full")

    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="disk full"):
        _save_linear(tmp_path, 12, optimizer=Exploding(model.parameters(), lr=0.1))
    assert latest_checkpoint(tmp_path) == good  # the failed save published nothing
    assert not (root / "step-12").exists()
    with pytest.raises(PrefalignError, match="not a complete checkpoint"):
        load_checkpoint(unmarked, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None)

    _save_linear(tmp_path, 16, keep_last=5)
    assert sorted(p.name for p in root.iterdir()) == ["step-16", "step-4", "step-9"]  # leftovers removed


def test_saving_an_existing_step_replaces_it(tmp_path):
    _save_linear(tmp_path, 3)
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(
        tmp_path,
        3,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler=None,
        trainer_state={"epoch": 1},
        keep_last=2,
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]
    assert json.loads((path / "trainer_state.json").read_text()) == {"epoch": 1, "step": 3}


def test_per_rank_rng_states(tmp_path):
    torch.manual_seed(1)
    rank0 = capture_rng_state()
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    rank1 = capture_rng_state()
    expected_rank1 = _draws()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(
        tmp_path,
        1,
        model=model,
        optimizer=optimizer,
        scheduler=None,
        trainer_state={},
        keep_last=1,
        rng_states=[rank0, rank1],
    )
    load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None, rank=1)
    assert _draws() == expected_rank1
    restore_rng_state(rank0)
    expected_rank0 = _draws()
    load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None, rank=0)
    assert _draws() == expected_rank0


def test_weights_that_do_not_fit_the_model_are_a_clear_error(tmp_path, tiny_model_dir):
    model = _load_tiny(tiny_model_dir)
    optimizer, scheduler = _optimizer_and_scheduler(model)
    path = save_checkpoint(
        tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={}, keep_last=1
    )
    lora = _lora(_load_tiny(tiny_model_dir))
    lora_optimizer, lora_scheduler = _optimizer_and_scheduler(lora)
    with pytest.raises(PrefalignError, match="holds full model weights, but this run trains a LoRA adapter"):
        load_checkpoint(path, model=lora, optimizer=lora_optimizer, scheduler=lora_scheduler)
    small = torch.nn.Linear(2, 2)
    with pytest.raises(PrefalignError, match="weights do not fit this model"):
        load_checkpoint(path, model=small, optimizer=torch.optim.SGD(small.parameters(), lr=0.1), scheduler=None)
    narrow = _save_linear(tmp_path / "linear", 1)  # same names, other shapes
    wide = torch.nn.Linear(2, 5)
    with pytest.raises(PrefalignError, match="weights do not fit this model.*size mismatch for weight"):
        load_checkpoint(narrow, model=wide, optimizer=torch.optim.SGD(wide.parameters(), lr=0.1), scheduler=None)


def _lora_reward_model(tiny_model_dir):
    from prefalign.models.reward import RewardModel

    return RewardModel(_lora(_load_tiny(tiny_model_dir), dropout=0.0), str(tiny_model_dir))


def _reward_step(model, optimizer) -> None:
    ids = torch.randint(3, 500, (4, 12))
    rewards = model(ids, torch.ones_like(ids)).rewards  # without an lm_index: rewards only, no LM head
    (-torch.nn.functional.logsigmoid(rewards[:2] - rewards[2:])).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_lora_reward_model_checkpoint_holds_the_adapter_and_head_only(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    model = _lora_reward_model(tiny_model_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _reward_step(model, optimizer)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, trainer_state={}, keep_last=1)
    saved = _params(model)
    _reward_step(model, optimizer)
    expected_next = _params(model)

    assert not (path / "model.safetensors").exists()  # not the base weights: they never change
    assert (path / "adapter" / "adapter_config.json").is_file()
    from safetensors.torch import load_file

    assert set(load_file(str(path / "head.safetensors"))) == {"reward_head.weight"}
    weights = sum(p.stat().st_size for p in path.rglob("*.safetensors"))
    assert weights < (tiny_model_dir / "model.safetensors").stat().st_size / 4

    # A fresh reward model (new random head, zero adapter) resumes exactly: the head is restored with the adapter.
    torch.manual_seed(5)
    fresh = _lora_reward_model(tiny_model_dir)
    assert not torch.equal(fresh.reward_head.weight, saved["reward_head.weight"])
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=None)
    _assert_same_params(_params(fresh), saved)
    _reward_step(fresh, fresh_optimizer)
    _assert_same_params(_params(fresh), expected_next)


def test_a_plain_lora_checkpoint_does_not_resume_a_reward_model_or_back(tmp_path, tiny_model_dir):
    rm = _lora_reward_model(tiny_model_dir)
    plain = _lora(_load_tiny(tiny_model_dir))
    rm_path = save_checkpoint(
        tmp_path / "rm",
        1,
        model=rm,
        optimizer=torch.optim.SGD(rm.parameters(), lr=0.1),
        scheduler=None,
        trainer_state={},
        keep_last=1,
    )
    plain_path = save_checkpoint(
        tmp_path / "plain",
        1,
        model=plain,
        scheduler=None,
        trainer_state={},
        keep_last=1,
        optimizer=torch.optim.SGD(plain.parameters(), lr=0.1),
    )
    with pytest.raises(PrefalignError, match=r"weights around the adapter do not fit .*reward_head.weight"):
        load_checkpoint(plain_path, model=rm, optimizer=torch.optim.SGD(rm.parameters(), lr=0.1), scheduler=None)
    with pytest.raises(PrefalignError, match=r"weights around the adapter do not fit .*reward_head.weight"):
        load_checkpoint(rm_path, model=plain, optimizer=torch.optim.SGD(plain.parameters(), lr=0.1), scheduler=None)


def _linear_and_optimizer():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_the_marker_records_each_file_and_loading_checks_them(tmp_path):
    checkpoint = _save_linear(tmp_path, 4)
    marker = json.loads((checkpoint / "COMPLETE").read_text())
    assert marker["step"] == 4
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()} - {"COMPLETE"}
    assert set(marker["files"]) == on_disk
    assert marker["files"]["optimizer.pt"]["size"] == (checkpoint / "optimizer.pt").stat().st_size

    # One byte changed in place, same size: the digest says so, and nothing is loaded.
    optimizer_file = checkpoint / "optimizer.pt"
    data = bytearray(optimizer_file.read_bytes())
    data[-30] ^= 0xFF
    optimizer_file.write_bytes(bytes(data))
    model, optimizer = _linear_and_optimizer()
    with pytest.raises(DamagedCheckpoint, match=r"step-4: damaged: optimizer.pt does not have the sha256 written"):
        load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=None)

    optimizer_file.write_bytes(bytes(data[:-30] + bytes([data[-30] ^ 0xFF]) + data[-29:]))  # repaired
    verify_checkpoint(checkpoint)
    (checkpoint / "rng.pt").unlink()
    with pytest.raises(DamagedCheckpoint, match="rng.pt is missing"):
        verify_checkpoint(checkpoint)


def test_resumable_checkpoint_skips_damaged_ones_newest_first(tmp_path, capsys):
    for step in (2, 4, 6):
        _save_linear(tmp_path, step, keep_last=0)
    root = tmp_path / "checkpoints"
    assert resumable_checkpoint(tmp_path) == root / "step-6"
    for step in (4, 6):
        (root / f"step-{step}" / "optimizer.pt").write_bytes(b"PK\x03\x04")  # truncated
    capsys.readouterr()
    assert resumable_checkpoint(tmp_path) == root / "step-2"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert err[0].startswith(f"prefalign: warning: {root / 'step-6'}: damaged: optimizer.pt is 4 bytes, ")
    assert err[2] == f"prefalign: warning: resuming from the newest intact checkpoint instead: {root / 'step-2'}"

    (root / "step-2" / "COMPLETE").write_text("{not json")
    with pytest.raises(PrefalignError, match=r"^--resume: every checkpoint in .* is damaged \(3, newest: .*step-6"):
        resumable_checkpoint(tmp_path)
    assert resumable_checkpoint(tmp_path / "elsewhere") is None


def test_a_checkpoint_of_the_previous_version_still_loads_or_is_named_damaged(tmp_path):
    """Its marker is the step number alone: no digests, so every file must load instead."""
    saved_model, saved_optimizer = _linear_and_optimizer()
    checkpoint = save_checkpoint(
        tmp_path, 3, model=saved_model, optimizer=saved_optimizer, scheduler=None, trainer_state={}, keep_last=0
    )
    (checkpoint / "COMPLETE").write_text("3\n")
    model, optimizer = _linear_and_optimizer()
    assert load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=None)["step"] == 3
    assert torch.equal(model.weight, saved_model.weight)
    assert resumable_checkpoint(tmp_path) == checkpoint

    data = (checkpoint / "optimizer.pt").read_bytes()
    (checkpoint / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpoint, match=r"step-3: damaged: optimizer.pt does not load \(.+\)$"):
        load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=None)
