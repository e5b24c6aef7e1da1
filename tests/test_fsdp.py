"""--fsdp: FSDP2 sharding under `torchrun --nproc-per-node 2` on CPU (gloo) trains like one process, accounts for its
memory, resumes a killed run exactly, and gathers a final model that plain transformers (and peft) load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from prefalign.errors import PrefalignError
from prefalign.train.checkpoint import latest_checkpoint
from prefalign.train.config import DPOConfig, SFTConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import train
from prefalign.train.memory import training_state_bytes
from prefalign.train.objectives import DPOObjective, SFTObjective
from prefalign.train.setup import build_model
from prefalign.train.steps import make_optimizer, my_batches
from test_train_support import (
    assert_same_metrics,
    config_options,
    quiet,
    read_records,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
    write_sft,
)

# Sharded and unsharded runs add the same float32 numbers in another order (the reduce-scatter, each process's own
# padding): about 1e-7 relative per sum, which Adam's normalisation keeps from growing over a few steps.
TOLERANCE = 1e-5
OBJECTIVES = {"dpo": (DPOConfig, DPOObjective), "sft": (SFTConfig, SFTObjective)}


def _torchrun(command: str, config: Any) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "prefalign",
        command,
        *config_options(config),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}


def _run_two(command: str, config: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(_torchrun(command, config), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run_info(output_dir: str) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "run.json").read_text())


def _final_logits(final: Path, tiny_model_dir: Path, lora: bool) -> torch.Tensor:
    """The saved final model's logits on a fixed input, loaded with plain transformers (and peft for an adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir if lora else final, dtype=torch.float32)
    if lora:
        model = PeftModel.from_pretrained(model, final)
    with torch.no_grad():
        return model.eval()(torch.tensor([[1, 5, 9, 14, 3, 7]])).logits


def _kill_all_after_first_checkpoint(process: subprocess.Popen, output_dir: Path) -> Path:
    """SIGKILL the launcher and its workers (its session) as soon as a complete checkpoint appears."""
    deadline = time.monotonic() + 120
    while (checkpoint := latest_checkpoint(output_dir)) is None:
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return checkpoint


@pytest.mark.parametrize(
    ("command", "lora"),
    [("dpo", False), ("dpo", True), ("sft", False), ("sft", True)],
    ids=["dpo-full", "dpo-lora-live-reference", "sft-full", "sft-lora"],
)
def test_sharded_training_takes_the_steps_of_one_process(
    tiny_model_dir: Path, tmp_path: Path, command: str, lora: bool
) -> None:
    # 13 items: 10 train, 3 held out. A global batch of 4 leaves a last batch of 2; the 3 eval items split 2 + 1, so
    # a rank out of items runs a weight-0 batch to keep the all-gathers in step.
    data = (write_pairs if command == "dpo" else write_sft)(tmp_path / "data.jsonl", 13)
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=4,
        learning_rate=1e-2 if lora else 1e-3,
        logging_steps=1,
        eval_split=0.25,
        eval_steps=2,
        grad_accum=2,
        lora=lora,
        lora_rank=4,
        lora_dropout=0.0,
    )
    if command == "dpo":  # full: precomputed reference log-probs (the --fsdp default); LoRA: the live adapter-off one
        options["precompute_ref"] = not lora
    config_class, objective_class = OBJECTIVES[command]
    single = config_class(**options, batch_size=2, output_dir=str(tmp_path / "one"))
    train(single, objective_class(single))
    sharded = config_class(**options, batch_size=1, fsdp=True, output_dir=str(tmp_path / "two"))
    done = _run_two(command, sharded)

    assert done.stderr.count("final model in") == 1
    assert_same_metrics(read_records(tmp_path / "two"), read_records(tmp_path / "one"), tol=TOLERANCE)
    one, two = _run_info(single.output_dir), _run_info(sharded.output_dir)
    assert (one["sharding"], two["sharding"]) == (None, "fsdp")
    for kind in ("parameters", "gradients", "optimizer"):  # each process holds about half (shards of uneven rows)
        ratio = two["state_bytes_per_process"][kind] / one["state_bytes_per_process"][kind]
        assert 0.45 < ratio < 0.55, (kind, ratio)
    expected = _final_logits(tmp_path / "one" / "final", tiny_model_dir, lora)
    torch.testing.assert_close(_final_logits(tmp_path / "two" / "final", tiny_model_dir, lora), expected)


def test_a_killed_sharded_run_resumes_to_the_uninterrupted_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    # LoRA dropout draws random numbers on each rank every step: every rank's RNG state must come back.
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=24,
        learning_rate=1e-2,
        logging_steps=3,
        eval_split=0.25,
        eval_steps=6,
        save_steps=4,
        keep_checkpoints=2,
        batch_size=1,
        fsdp=True,
        lora=True,
        lora_rank=4,
        lora_dropout=0.2,
    )
    _run_two("dpo", DPOConfig(**options, output_dir=str(tmp_path / "uninterrupted")))

    interrupted = DPOConfig(**options, output_dir=str(tmp_path / "interrupted"))
    # Its own session, so that the kill reaches the workers torchrun started, not the launcher alone.
    process = subprocess.Popen(
        _torchrun("dpo", interrupted),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    checkpoint = _kill_all_after_first_checkpoint(process, tmp_path / "interrupted")
    assert not (tmp_path / "interrupted" / "final").exists(), "the run finished before it was killed"
    assert sorted(p.name for p in checkpoint.iterdir())[:3] == ["COMPLETE", "rng-rank1.json", "rng-rank1.pt"]
    assert (checkpoint / "sharded" / ".metadata").is_file()

    done = _run_two("dpo", DPOConfig(**options, output_dir=str(tmp_path / "interrupted"), resume=True))
    assert "resuming from" in done.stderr
    expected = read_records(tmp_path / "uninterrupted")
    assert_same_metrics(read_records(tmp_path / "interrupted"), expected, tol=1e-6)

    # A sharded checkpoint is not resumed by an unsharded run: one line naming it.
    unsharded = DPOConfig(**{**options, "fsdp": False}, output_dir=str(tmp_path / "interrupted"), resume=True)
    with pytest.raises(PrefalignError, match="this checkpoint is sharded .* and this run is not"):
        train(unsharded, DPOObjective(unsharded))


def test_every_rank_runs_as_many_batches_as_rank_0() -> None:
    ranks = [DistInfo(r, 2, r, torch.device("cpu"), r == 0) for r in range(2)]
    assert [my_batches(list("abc"), info, 1) for info in ranks] == [
        [(["a"], 1.0), (["c"], 1.0)],
        [(["b"], 1.0), (["a"], 0.0)],
    ]
    assert [my_batches(["a"], info, 2) for info in ranks] == [[(["a"], 1.0)], [(["a"], 0.0)]]
    assert my_batches([], ranks[0], 2) == []


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_state_bytes_are_what_a_step_allocates(tiny_model_dir: Path, tmp_path: Path, lora: bool) -> None:
    config = SFTConfig(model=str(tiny_model_dir), data="unused", output_dir=str(tmp_path), lora=lora, lora_rank=4)
    info = DistInfo(0, 1, 0, torch.device("cpu"), True)
    model = build_model(config, SFTObjective(config), info)
    accounted = training_state_bytes(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, config, info.device)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()

    def size(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    assert accounted.parameters == size(model.parameters())
    assert accounted.gradients == size(p.grad for p in trainable)
    assert accounted.optimizer == size(v for state in optimizer.state.values() for v in state.values())
    assert accounted.total == accounted.parameters + accounted.gradients + accounted.optimizer
