"""SFT: the loss sees response tokens only, the data formats it reads, and a short run that learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prefalign.errors import DataError
from prefalign.train.config import SFTConfig
from prefalign.train.distributed import DistInfo
from prefalign.train.loop import train
from prefalign.train.objectives import SFTObjective
from prefalign.train.objectives.sft import read_sft_examples
from test_train_support import (
    quiet,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_sft,
)

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_sft_loss_is_the_nll_of_exactly_the_response_tokens(tiny_model_dir: Path, tmp_path: Path, packed: bool) -> None:
    from prefalign.models.loading import load_model, load_tokenizer

    config = SFTConfig(model=str(tiny_model_dir), data=str(write_sft(tmp_path / "sft.jsonl", 4)), output_dir="x")
    objective = SFTObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu").eval()
    objective.setup(model, {config.data: items}, SINGLE)
    assert objective.packed  # the tiny model runs SDPA: pair attention by default
    objective.packed = packed
    batch = objective.collate(items)
    assert (batch.input_ids.shape[0] == 1) == packed
    with torch.no_grad():
        loss, sums = objective.loss(model, batch)
        nll, response_tokens = 0.0, 0
        for example in items:  # by hand: each example alone, full logits, response tokens only
            ids = torch.tensor([[*example.prompt_ids, *example.completion_ids]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
            for t in range(len(example.prompt_ids), ids.shape[1]):
                nll -= float(logp[t - 1, ids[0, t]])
                response_tokens += 1
    assert int(sums["completion_tokens"]) == response_tokens == sum(len(e.completion_ids) for e in items)
    assert int(sums["items"]) == 4
    assert int(sums["tokens"]) == sum(len(e.prompt_ids) + len(e.completion_ids) for e in items)
    assert math.isclose(float(loss), nll, rel_tol=1e-5)
    metrics = objective.metrics({k: float(v) for k, v in sums.items()})
    assert math.isclose(metrics["loss"], nll / response_tokens, rel_tol=1e-5)


def test_sft_run_learns_and_saves(tiny_model_dir: Path, tmp_path: Path) -> None:
    data, held_out = write_sft(tmp_path / "train.jsonl", 12), write_sft(tmp_path / "eval.jsonl", 3)
    config = SFTConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(data),
            eval_data=str(held_out),
            output_dir=str(tmp_path / "run"),
            max_steps=20,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            logging_steps=10,
            eval_steps=10,
        )
    )
    result = train(config, SFTObjective(config))
    train_records, eval_records = records_of(result.output_dir, "train"), records_of(result.output_dir, "eval")
    assert [r["step"] for r in train_records] == [1, 10, 20] and [r["step"] for r in eval_records] == [0, 10, 20]
    for record in train_records:
        assert {"loss", "grad_norm", "learning_rate", "tokens_per_second", "examples_per_second"} <= record.keys()
    assert train_records[-1]["loss"] < 0.5 * train_records[0]["loss"]
    assert eval_records[-1]["loss"] < 0.5 * eval_records[0]["loss"]
    assert (result.output_dir / "final" / "model.safetensors").is_file()
    assert json.loads((result.output_dir / "run.json").read_text())["command"] == "sft"


def test_sft_reads_conversations_prompt_completion_and_preference_rows(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"prompt": "Say yes.", "response": "Yes."},
        {"prompt": "Pick one.", "chosen": "This one.", "rejected": "That one."},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = read_sft_examples(str(path))
    assert examples[0] == (rows[0]["messages"], None, f"{path}:1")
    assert examples[1] == ("Say yes.", "Yes.", f"{path}:2")
    assert examples[2] == ("Pick one.", "This one.", f"{path}:3")

    path.write_text(json.dumps(rows[1]) + "\n" + json.dumps({"text": "no response here"}) + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: an SFT record needs"):
        read_sft_examples(str(path))
