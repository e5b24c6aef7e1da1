"""`benchmarks/training_stages_vs_commit.py` runs today's trainers with a 2047dc2 demo's recorded settings: the
translation must give configs today's classes accept, with the same meaning."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from prefalign.config import build_config
from prefalign.train.config import DPOConfig, RewardConfig, SFTConfig

ROOT = Path(__file__).resolve().parents[1]

# run.json "config" of the 2047dc2 demo's training stages (a real run's, paths shortened)
COMMON = {
    "data_format": "auto",
    "eval_split": 0.0,
    "max_length": 320,
    "max_prompt_length": 160,
    "prompt_format": "auto",
    "max_steps": None,
    "batch_size": 8,
    "grad_accum": 1,
    "learning_rate": 0.0002,
    "lr_schedule": "linear",
    "warmup_ratio": 0.1,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "seed": 0,
    "gradient_checkpointing": False,
    "release_memory": True,
    "trim_layers": 0,
    "lora": True,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "lora_dropout": 0.05,
    "lora_target_modules": ["all-linear"],
    "logging_steps": 2,
    "save_steps": 10,
    "keep_checkpoints": 1,
    "resume": True,
    "tensorboard": True,
    "progress": True,
    "plots": True,
}
BASELINE = {
    "sft": (SFTConfig, {"epochs": 2, "lora_layers": 15, "merge": True, "eval_data": None, "eval_steps": 1000}),
    "reward": (RewardConfig, {"epochs": 1, "lora_layers": 10, "merge": False, "eval_steps": 10, "lm_weight": 0.0}),
    "dpo": (
        DPOConfig,
        {
            "epochs": 3,
            "lora_layers": 15,
            "merge": True,
            "eval_steps": 10,
            "beta": 0.1,
            "loss_type": "sigmoid",
            "label_smoothing": 0.0,
            "sft_weight": 0.0,
            "ref_model": None,
            "precompute_ref": True,
            "prefix_sharing": True,
        },
    ),
}


def _script():
    spec = importlib.util.spec_from_file_location(
        "stages_vs_commit", ROOT / "benchmarks" / "training_stages_vs_commit.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", sorted(BASELINE))
def test_a_baseline_stage_config_loads_as_today_config(stage: str, tmp_path: Path) -> None:
    cls, own = BASELINE[stage]
    run = tmp_path / "run"
    (run / stage).mkdir(parents=True)
    recorded = {"model": "m", "data": "d.jsonl", "output_dir": "x", **COMMON, **own}
    (run / stage / "run.json").write_text(json.dumps({"config": recorded}))
    script = _script()
    today = build_config(cls, script.stage_config(run, stage, tmp_path / "today", today=True))
    assert today.output_dir == str(tmp_path / "today") and today.resume is False
    assert today.trim_heap_every_layers == 0 and today.report_to == ["tensorboard"] and today.precision == "fp32"
    for key in set(recorded) - {"output_dir", "resume", "trim_layers", "tensorboard", "loss_type", "sft_weight"}:
        assert getattr(today, key) == recorded[key], key
    if stage == "dpo":
        assert today.loss == "sigmoid"
    baseline = script.stage_config(run, stage, tmp_path / "baseline", today=False).read_text()
    assert "trim_layers: 0" in baseline and "tensorboard: true" in baseline  # the baseline's own keys, untranslated


def test_an_sft_weight_becomes_a_loss_mixture() -> None:
    config = _script().baseline_renames({"loss_type": "ipo", "sft_weight": 0.5, "trim_layers": 5})
    assert config["loss"] == "ipo,sft:0.5" and config["trim_heap_every_layers"] == 5 and config["report_to"] == ["none"]
