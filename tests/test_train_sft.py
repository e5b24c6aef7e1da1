"""SFT: the loss sees response tokens only, the data formats it reads, and a short run that learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prefalign.data.collate import IGNORE_INDEX
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


class ScramblePromptLogits(torch.nn.Module):
    """The wrapped model, with random logits wherever the next token is a prompt token (or padding)."""

    def __init__(self, model: torch.nn.Module, labels: torch.Tensor):
        super().__init__()
        self.model, self.labels = model, labels

    def forward(self, **inputs: torch.Tensor) -> object:
        out = self.model(**inputs)
        not_scored = torch.zeros_like(self.labels, dtype=torch.bool)
        not_scored[:, :-1] = self.labels[:, 1:] == IGNORE_INDEX  # logits[:, t] predicts labels[:, t + 1]
        noise = torch.randn_like(out.logits) * 10
        out.logits = torch.where(not_scored.unsqueeze(-1), out.logits + noise, out.logits)
        return out


def test_sft_loss_ignores_every_prompt_position(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefalign.models.loading import load_model, load_tokenizer

    config = SFTConfig(model=str(tiny_model_dir), data=str(write_sft(tmp_path / "sft.jsonl", 4)), output_dir="x")
    objective = SFTObjective(config)
    items, _ = objective.load(config.data, load_tokenizer(config.model))
    model = load_model(config.model, device="cpu")
    objective.setup(model, {config.data: items}, SINGLE)
    batch = objective.collate(items)
    with torch.no_grad():
        loss, sums = objective.loss(model, batch)
        scrambled, _ = objective.loss(ScramblePromptLogits(model, batch.labels), batch)
        logits = model(input_ids=batch.input_ids).logits
    assert torch.equal(loss, scrambled)
    # And it is the mean NLL of exactly the response tokens.
    response = [(row, t) for row, t in (batch.labels[:, 1:] != IGNORE_INDEX).nonzero().tolist()]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -sum(float(logp[row, t, batch.labels[row, t + 1]]) for row, t in response)
    assert int(sums["completion_tokens"]) == len(response) == sum(len(e.completion_ids) for e in items)
    assert math.isclose(float(loss), nll, rel_tol=1e-5)
    assert math.isclose(
        objective.metrics({k: float(v) for k, v in sums.items()})["loss"], nll / len(response), rel_tol=1e-5
    )


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
