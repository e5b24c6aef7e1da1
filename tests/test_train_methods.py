"""The preference methods beyond DPO on the tiny model: reference-free ones build no reference, KTO trains from an
unpaired file and from pairs, mixtures log each term."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefalign.train.config import DPOConfig
from prefalign.train.loop import train
from prefalign.train.objectives import DPOObjective
from prefalign.train.objectives import dpo as dpo_module
from test_train_support import (
    CHOSEN,
    QUESTIONS,
    REJECTED,
    assert_same_metrics,
    config_options,
    quiet,
    read_records,
    records_of,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)


def _config(tiny_model_dir: Path, data: Path, out: Path, **options: object) -> DPOConfig:
    return DPOConfig(
        **quiet(
            model=str(tiny_model_dir),
            data=str(data),
            output_dir=str(out),
            max_steps=4,
            batch_size=4,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            logging_steps=1,
            eval_steps=4,
            eval_split=0.25,
            **options,
        )
    )


def _write_unpaired(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            prompt = f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"
            good = i % 3 != 0  # unbalanced on purpose: unpaired data need not come in pairs
            out.write(json.dumps({"prompt": prompt, "completion": CHOSEN if good else REJECTED, "label": good}) + "\n")
    return path


@pytest.mark.parametrize("loss", ["simpo", "orpo", "simpo:1,sft:0.5"])
def test_reference_free_methods_build_no_reference_and_score_none(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reference-free method built or scored a reference")

    monkeypatch.setattr(dpo_module, "build_reference", forbidden)
    monkeypatch.setattr(dpo_module, "cached_reference_logps", forbidden)
    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    config = _config(tiny_model_dir, write_pairs(tmp_path / "p.jsonl", 16), tmp_path / "run", loss=loss, beta=2.0)
    assert config.reference_free and not config.precompute_ref
    result = train(config, DPOObjective(config))
    assert result.objective.reference is None
    assert not (tmp_path / "home" / "cache" / "ref-logps").exists()
    first, last = records_of(result.output_dir, "train")[0], records_of(result.output_dir, "train")[-1]
    assert "kl" not in first and "logratio" not in first  # nothing to compare with
    for name in config.loss_terms:
        assert f"loss/{name}" in first
    assert ("rewards/margins" in first) == ("simpo" in loss) and ("log_odds_ratio" in first) == (loss == "orpo")
    if loss == "simpo":  # SimPO's reward margin (per-token log-probs) grows as it learns the preference
        assert last["rewards/margins"] > first["rewards/margins"]
    assert last["loss"] < first["loss"]


@pytest.mark.parametrize("source", ["unpaired", "pairs"])
def test_kto_trains_from_an_unpaired_file_and_from_pairs(tiny_model_dir: Path, tmp_path: Path, source: str) -> None:
    data = _write_unpaired(tmp_path / "u.jsonl", 16) if source == "unpaired" else write_pairs(tmp_path / "p.jsonl", 8)
    config = _config(tiny_model_dir, data, tmp_path / "run", loss="kto")
    objective = DPOObjective(config)
    result = train(config, objective)
    assert objective.unit == "completions"
    assert len(result.objective.reference.model.state_dict()) > 0  # KTO keeps DPO's frozen reference
    records = records_of(result.output_dir, "train")
    first = records[0]
    # Policy == reference at step 1: every log-ratio and z_0 are 0, so each loss is 1 - sigma(0) = 1/2.
    assert abs(first["loss"] - 0.5) < 1e-6 and first["kto/reference_point"] == 0.0
    assert {"rewards/desirable", "rewards/undesirable", "logps/desirable", "loss/kto"} <= first.keys()
    assert records[-1]["loss"] < first["loss"]
    assert records[-1]["rewards/desirable"] > records[-1]["rewards/undesirable"]


def test_kto_pairs_each_completion_with_another_prompts_completion(tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefalign.models.loading import load_tokenizer

    config = _config(tiny_model_dir, write_pairs(tmp_path / "p.jsonl", 3), tmp_path / "run", loss="kto")
    items, report = DPOObjective(config).load(config.data, load_tokenizer(config.model))
    assert report.records == 6 and [item.desirable for item in items] == [True, False] * 3
    for i, item in enumerate(items):  # a pair's two completions share a prompt; the KL one comes from the next pair
        other = items[(i // 2 * 2 + 2) % 6]
        assert item.pair.rejected_ids == other.pair.chosen_ids and item.pair.prompt_ids != other.pair.prompt_ids


def test_kto_with_precomputed_reference_matches_the_live_one(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.train.distributed import DistInfo

    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    data = _write_unpaired(tmp_path / "u.jsonl", 6)
    losses = []
    for precompute in (False, True):
        config = _config(tiny_model_dir, data, tmp_path / "run", loss="kto", precompute_ref=precompute)
        objective = DPOObjective(config)
        items, _ = objective.load(config.data, load_tokenizer(config.model))
        model = load_model(config.model, device="cpu")
        objective.setup(model, {config.data: items}, single)
        with torch.no_grad():  # move the policy off the reference, so z_0 and the log-ratios are not all 0
            model.get_output_embeddings().weight.mul_(1.5)
        loss, _ = objective.loss(model, objective.collate(items))
        losses.append(float(loss.detach()))
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5) and abs(losses[0] - 6 * 0.5) > 1e-3  # 6 completions


@pytest.mark.parametrize("loss", ["simpo:1,sft:0.1", "kto"])
def test_methods_run_under_torchrun(tiny_model_dir: Path, tmp_path: Path, loss: str) -> None:
    """Two processes with the same global batch: a reference-free mixture trains like one process (see
    test_train_distributed for the tolerance); KTO runs (its z_0 is each micro-batch's, so its numbers differ)."""
    options = quiet(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "pairs.jsonl", 13)),
        loss=loss,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_split=0.25,
        eval_steps=2,
        grad_accum=2,
    )
    pair = DPOConfig(**options, batch_size=1, output_dir=str(tmp_path / "two"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, "-m", "prefalign", "dpo", *config_options(pair)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if loss == "kto":
        assert read_records(tmp_path / "two")[-1]["step"] == 4
        return
    single = DPOConfig(**options, batch_size=2, output_dir=str(tmp_path / "one"))
    train(single, DPOObjective(single))
    assert_same_metrics(read_records(tmp_path / "two"), read_records(tmp_path / "one"), tol=1e-4)
