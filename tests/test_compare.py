"""`prefalign compare` on the tiny model: several methods trained the same way, evaluated in one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefalign.cli import main
from prefalign.errors import PrefalignError
from prefalign.pipeline import compare as compare_module
from prefalign.pipeline.compare import CompareConfig, compare_baselines, method_label, run_compare
from test_train_support import (
    QUESTIONS,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)


def test_compare_trains_every_method_and_evaluates_them_together(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS[:3])))
    config = CompareConfig(
        model=str(tiny_model_dir),
        data=str(write_pairs(tmp_path / "train.jsonl", 8)),
        eval_data=str(write_pairs(tmp_path / "heldout.jsonl", 4)),
        prompts=str(prompts),
        output_dir=str(tmp_path / "out"),
        methods=["sigmoid", "simpo", "kto"],
        max_steps=2,
        learning_rate=1e-3,
        max_new_tokens=6,
        kl_samples=1,
    )
    report = run_compare(config)
    assert report.labels == ["sft", "sigmoid", "simpo", "kto"]
    compared = {(delta.model, delta.baseline) for delta in report.deltas}
    assert compared == {("sigmoid", "sft"), ("simpo", "sft"), ("kto", "sft")} | {
        ("sigmoid", "simpo"),
        ("sigmoid", "kto"),
        ("simpo", "kto"),
    }
    assert {"sigmoid", "simpo", "kto"} <= {accuracy.scorer.split()[0] for accuracy in report.heldout}
    assert set(report.kl) >= {"sigmoid", "simpo", "kto"}
    assert (tmp_path / "out" / "eval" / "report.md").is_file()
    for label in ("sigmoid", "simpo", "kto"):
        run = json.loads((tmp_path / "out" / "train" / label / "run.json").read_text())
        assert run["config"]["max_steps"] == 2 and run["config"]["model"] == str(tiny_model_dir)

    # Run again: the finished runs are reused, not retrained; other settings are refused.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("prefalign.train.loop.train", lambda *args: pytest.fail("retrained a finished run"))
        compare_module.train_method(config, "simpo")
        changed = CompareConfig(**{**config.__dict__, "max_steps": 3})
        with pytest.raises(PrefalignError, match="with other settings"):
            compare_module.train_method(changed, "simpo")


def test_compare_labels_baselines_and_bad_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert method_label("sigmoid:1, sft:0.5") == "sigmoid-1+sft-0.5"
    assert compare_baselines(["a", "b", "c"]) == [
        ("a", "sft"),
        ("b", "sft"),
        ("c", "sft"),
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
    ]
    argv = ["compare", "--model", "m", "--data", "d", "--prompts", "p", "--output-dir", "o"]
    assert main([*argv, "--methods", "sigmoid", "dpo"]) == 2
    assert "unknown term 'dpo'" in capsys.readouterr().err
    assert main([*argv, "--methods", "sigmoid", "sigmoid"]) == 2
    assert "each method must be different" in capsys.readouterr().err


def test_method_beta_sets_one_methods_beta_and_rejects_bad_entries(capsys: pytest.CaptureFixture[str]) -> None:
    options = {"model": "m", "data": "d", "prompts": "p", "output_dir": "o", "methods": ["sigmoid", "simpo"]}
    config = CompareConfig(**options, method_beta=["simpo=2.0"], lora_layers=3, precision="bf16")
    assert config.betas() == {"sigmoid": 0.1, "simpo": 2.0}
    simpo, dpo = config.training_config("simpo"), config.training_config("sigmoid")
    assert (simpo.beta, dpo.beta) == (2.0, 0.1)
    assert simpo.lora_layers == dpo.lora_layers == 3 and simpo.precision == "bf16"
    assert dpo.precompute_ref and not simpo.precompute_ref  # SimPO has no reference to precompute
    argv = ["compare", "--model", "m", "--data", "d", "--prompts", "p", "--output-dir", "o", "--methods", "sigmoid"]
    for entry, reason in [
        ("simpo=2", "METHOD one of --methods"),
        ("sigmoid", "expected METHOD=BETA"),
        ("sigmoid=x", "'x' is not a number"),
        ("sigmoid=-1", "positive number"),
    ]:
        assert main([*argv, "--method-beta", entry]) == 2
        assert reason in capsys.readouterr().err, entry
