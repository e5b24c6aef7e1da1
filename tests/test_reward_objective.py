"""The reward-model objective: its loss by hand (margins, lm_weight), training that learns, and checkpoint + resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from prefalign.data.collate import collate_pairs
from prefalign.errors import DataError, PrefalignError
from prefalign.models.loading import load_model, load_tokenizer
from prefalign.models.reward import RewardModel, load_reward_model
from prefalign.train.checkpoint import latest_checkpoint
from prefalign.train.config import RewardConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import train
from prefalign.train.objectives.reward import RewardObjective
from test_train_support import (
    assert_same_metrics,
    quiet,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
RM_KEYS = {
    "loss",
    "rm_loss",
    "lm_loss",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/mean",
    "rewards/std",
}


def _with_margins(path: Path, margins: list[object]) -> Path:
    rows = [
        {"prompt": f"Question {i}?", "chosen": "Yes, gladly.", "rejected": "No.", "margin": m}
        for i, m in enumerate(margins)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _objective(model_dir: Path, data: Path, **options: object) -> tuple[RewardObjective, RewardModel, list]:
    # `options` are RewardConfig fields of several types, and config.model is typed optional though set here.
    config = RewardConfig(model=str(model_dir), data=str(data), output_dir="unused", **options)  # type: ignore[arg-type]  # see above
    objective = RewardObjective(config)
    items, _ = objective.load(str(data), load_tokenizer(config.model))  # type: ignore[arg-type]  # see above
    torch.manual_seed(0)
    model = objective.prepare_model(load_model(str(model_dir), device="cpu"))
    objective.setup(model, {str(data): items}, SINGLE)
    return objective, model.eval(), items


def test_loss_subtracts_each_pairs_margin(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _with_margins(tmp_path / "pairs.jsonl", [0.5, None, -1.0])
    objective, model, items = _objective(tiny_model_dir, data, lm_weight=0.0)
    assert [item.margin for item in items] == [0.5, 0.0, -1.0]
    batch = objective.collate(items)
    assert batch.pairs.input_ids.shape[0] == 1  # one padding-free row: the tiny model runs pair attention
    padded = collate_pairs([item.pair for item in items], pad_id=0)
    with torch.no_grad():
        loss, sums = objective.loss(model, batch)
        rewards = model(padded.input_ids, padded.attention_mask).rewards.tolist()  # each sequence in its own row
    chosen, rejected = rewards[:3], rewards[3:]
    by_hand = sum(math.log1p(math.exp(-(c - r - m))) for c, r, m in zip(chosen, rejected, [0.5, 0.0, -1.0]))
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    assert float(sums["rm_loss"]) == pytest.approx(by_hand, rel=1e-5)
    assert float(sums["rewards/accuracies"]) == sum(c > r for c, r in zip(chosen, rejected))


def test_a_margin_that_is_not_a_number_names_the_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _with_margins(tmp_path / "pairs.jsonl", [1.0, "big"])
    with pytest.raises(DataError, match=r"pairs.jsonl:2.*margin"):
        _objective(tiny_model_dir, data)


def test_lm_weight_adds_the_chosen_response_nll_and_zero_leaves_it_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 4)
    off, model, items = _objective(tiny_model_dir, data, lm_weight=0.0)
    on, _, _ = _objective(tiny_model_dir, data, lm_weight=0.5)
    batch = off.collate(items)
    with torch.no_grad():
        loss_off, sums_off = off.loss(model, batch)
        loss_on, sums_on = on.loss(model, batch)
        # lm_loss by hand: each pair's mean NLL over its chosen response tokens, prompt + chosen alone.
        nll = 0.0
        for item in items:
            prompt, chosen = item.pair.prompt_ids, item.pair.chosen_ids
            logp = torch.log_softmax(model.lm(input_ids=torch.tensor([prompt + chosen])).logits[0, :-1], dim=-1)
            nll -= sum(float(logp[len(prompt) + k - 1, token]) for k, token in enumerate(chosen)) / len(chosen)
    assert "lm_loss" not in sums_off and "lm_loss" not in off.metrics({k: float(v) for k, v in sums_off.items()})
    assert float(loss_off) == pytest.approx(float(sums_off["rm_loss"]), rel=1e-6)
    assert float(sums_on["lm_loss"]) == pytest.approx(nll, rel=1e-5)
    assert float(loss_on) == pytest.approx(float(sums_on["rm_loss"]) + 0.5 * nll, rel=1e-5)


def test_a_constant_reward_counts_every_pair_as_half_right(tiny_model_dir: Path, tmp_path: Path) -> None:
    objective, model, items = _objective(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl", 4))
    with torch.no_grad():
        model.reward_head.weight.zero_()
        _, sums = objective.loss(model, objective.collate(items))
    metrics = objective.metrics({key: float(value) for key, value in sums.items()})
    assert metrics["rewards/accuracies"] == 0.5
    assert metrics["rewards/std"] == 0.0 and metrics["rm_loss"] == pytest.approx(math.log(2))


def test_training_raises_validation_accuracy_and_margin(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = RewardConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(write_pairs(tmp_path / "pairs.jsonl", 16)),
            output_dir=str(out),
            max_steps=12,
            batch_size=4,
            learning_rate=3e-3,
            eval_split=0.25,
            eval_steps=12,
            logging_steps=4,
            plots=True,
        )
    )
    result = train(config, RewardObjective(config))
    first, last = records_of(out, "eval")[0], records_of(out, "eval")[-1]
    assert first["step"] == 0 and last["step"] == 12
    assert set(first) - {"step", "split"} == RM_KEYS
    assert last["rewards/margins"] > first["rewards/margins"] + 1.0
    assert last["rewards/accuracies"] == 1.0 and last["rm_loss"] < first["rm_loss"]
    assert isinstance(result.model, RewardModel)
    assert (out / "final" / "reward_model.json").is_file() and (out / "final" / "tokenizer_config.json").is_file()
    from PIL import Image

    with Image.open(out / "plots" / "rewards.png") as image:  # the head's outputs, not DPO's implicit rewards
        assert image.text["Title"] == "Reward-head outputs"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resumed_run_restores_the_head_and_matches_the_uninterrupted_one(
    tiny_model_dir: Path, tmp_path: Path, lora: bool
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    options = quiet(
        model=str(tiny_model_dir),
        data=str(data),
        max_steps=6,
        batch_size=4,
        eval_split=0.25,
        eval_steps=3,
        logging_steps=2,
        save_steps=3,
        learning_rate=1e-2 if lora else 1e-3,
        lora=lora,
        lora_rank=4,
        lora_dropout=0.0,
    )
    whole = tmp_path / "whole"
    config = RewardConfig(**options, output_dir=str(whole))
    train(config, RewardObjective(config))
    checkpoint = latest_checkpoint(whole)
    assert checkpoint is not None and checkpoint.name == "step-3"
    # LoRA: the adapter and the head, never the unchanged base weights; a full fine-tune: every weight.
    assert (checkpoint / "model.safetensors").is_file() != lora
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file() == lora
    assert (checkpoint / "head.safetensors").is_file() == lora

    # The same run stopped after its step-3 checkpoint: its files as they were then, then --resume.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "summary.json").unlink()
    config = RewardConfig(**options, output_dir=str(resumed), resume=True)
    train(config, RewardObjective(config))  # a head not restored from the checkpoint would change every number
    assert_same_metrics(records_of(whole, "train"), records_of(resumed, "train"), tol=1e-5)
    assert_same_metrics(records_of(whole, "eval"), records_of(resumed, "eval"), tol=1e-5)
    a, b = load_reward_model(whole / "final"), load_reward_model(resumed / "final")
    torch.testing.assert_close(a.reward_head.weight, b.reward_head.weight, atol=1e-6, rtol=0)


def test_merge_is_refused_for_a_reward_model() -> None:
    with pytest.raises(PrefalignError, match="--merge does not apply"):
        RewardConfig(model="m", data="d", output_dir="o", lora=True, merge=True)


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The head under DistributedDataParallel (and the LM run without its logits, lm_weight 0) as in one process."""
    import os
    import subprocess
    import sys

    from test_train_support import config_options, read_records

    options = quiet(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "pairs.jsonl", 12)),
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_split=0.25,
        eval_steps=2,
        lm_weight=0.0,
    )
    single = RewardConfig(**options, batch_size=4, output_dir=str(tmp_path / "one"))
    train(single, RewardObjective(single))
    pair = RewardConfig(**options, batch_size=2, output_dir=str(tmp_path / "two"))
    launcher = tmp_path / "prefalign_rm.py"  # `prefalign`, with the rm command whether or not it is registered yet
    launcher.write_text(
        "import sys, prefalign.cli as c\nif 'reward' not in c.COMMAND_MODULES:\n"
        "    c.COMMAND_MODULES += ('reward',)\nsys.exit(c.main())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(launcher),
        "rm",
        "train",
        *config_options(pair),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_metrics(read_records(tmp_path / "two"), read_records(tmp_path / "one"), tol=1e-4)
