"""`prefalign rm score` and `rm train` on the command line, and the reward model as a judge."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from prefalign.cli import reward as reward_cli
from prefalign.errors import PrefalignError
from prefalign.evaluate.stats import wilson_interval
from prefalign.judges import JudgeItem, load_judge
from prefalign.models.loading import load_model, load_tokenizer
from prefalign.models.reward import RewardModel, load_reward_model, score_token_rows
from test_train_support import (
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)


def _rm(argv: list[str]) -> int:
    """`prefalign rm ...` through this module's own parser (the same one `prefalign` registers)."""
    parser = argparse.ArgumentParser(prog="prefalign")
    reward_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rm", *argv])
    return args.func(args)


@pytest.fixture()
def saved_rm(tiny_model_dir: Path, tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = RewardModel(load_model(str(tiny_model_dir), device="cpu"), str(tiny_model_dir))
    path = model.save_pretrained(tmp_path / "rm")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_a_pair_file_gives_both_rewards_and_accuracy_with_a_wilson_interval(
    saved_rm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"Question {i}?", "chosen": f"Answer {i} is yes.", "rejected": "No" * (i + 1), "id": i}
        for i in range(7)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "scores.jsonl"
    assert _rm(["score", "--model", str(saved_rm), "--data", str(data), "-o", str(out), "--batch-size", "3"]) == 0

    scored = _read(out)
    assert [row["id"] for row in scored] == list(range(7)) and scored[0]["location"] == f"{data}:1"
    # The rewards are the model's own, computed here in one batch per pair.
    model, tokenizer = load_reward_model(saved_rm), load_tokenizer(str(saved_rm))
    from prefalign.data.tokenize import TokenizeConfig, tokenize_sft

    for row, source in zip(scored, rows):
        for side in ("chosen", "rejected"):
            example = tokenize_sft(source["prompt"], source[side], tokenizer, TokenizeConfig())
            (expected,) = score_token_rows(
                model, [(example.prompt_ids, example.completion_ids)], tokenizer.pad_token_id
            )
            assert row[f"reward_{side}"] == pytest.approx(expected, abs=1e-5)
        assert row["margin"] == pytest.approx(row["reward_chosen"] - row["reward_rejected"])
    wins = sum(row["reward_chosen"] > row["reward_rejected"] for row in scored)
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["pairs"] == 7 and summary["accuracy"] == pytest.approx(wins / 7)
    assert summary["accuracy_ci95"] == pytest.approx(list(wilson_interval(wins, 7)))
    low, high = summary["accuracy_ci95"]
    assert low - 1e-12 <= wins / 7 <= high + 1e-12 and summary["ci_method"].startswith("wilson")
    assert f"accuracy {wins / 7:.4f} (95% Wilson CI {low:.4f}-{high:.4f}) over 7 pairs" in capsys.readouterr().out


def test_score_counts_ties_as_half(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = RewardModel(load_model(str(tiny_model_dir), device="cpu"), str(tiny_model_dir))
    with torch.no_grad():
        model.reward_head.weight.zero_()  # every reward 0: every pair a tie
    path = model.save_pretrained(tmp_path / "zero")
    out = tmp_path / "scores.jsonl"
    _rm(["score", "--model", str(path), "--data", str(write_pairs(tmp_path / "p.jsonl", 6)), "-o", str(out)])
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["accuracy"] == 0.5 and summary["ties"] == 6
    assert summary["accuracy_ci95"] == pytest.approx(list(wilson_interval(3, 6)))


def test_score_a_response_file_gives_one_reward_per_row(saved_rm: Path, tmp_path: Path) -> None:
    data = tmp_path / "responses.jsonl"
    rows = [
        {"prompt": "Is water wet?", "response": "Yes."},
        {"prompt": "Hi", "completion": "Hello there."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
        {"prompt": "Empty?", "response": ""},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "rewards.jsonl"
    _rm(["score", "--model", str(saved_rm), "--data", str(data), "-o", str(out)])
    scored = _read(out)
    assert [row["location"] for row in scored] == [f"{data}:{i}" for i in range(1, 5)]
    assert all(isinstance(row["reward"], float) for row in scored[:3])
    assert scored[1]["reward"] == pytest.approx(scored[2]["reward"], abs=1e-5)  # the same conversation, two spellings
    assert scored[3]["reward"] is None and scored[3]["error"] == "empty_completion"
    assert not (tmp_path / "rewards.summary.json").exists()


def test_score_a_plain_model_needs_untrained_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    data, out = write_pairs(tmp_path / "p.jsonl", 4), tmp_path / "s.jsonl"
    with pytest.raises(PrefalignError, match="not a reward model"):
        _rm(["score", "--model", str(tiny_model_dir), "--data", str(data), "-o", str(out)])
    _rm(["score", "--model", str(tiny_model_dir), "--untrained-head", "--data", str(data), "-o", str(out)])
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["untrained_head"] is True and summary["pairs"] == 4


def test_rm_train_then_score_its_output_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    data, run = write_pairs(tmp_path / "p.jsonl", 8), tmp_path / "run"
    _rm(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--output-dir",
            str(run),
            "--lora",
            "--lora-rank",
            "4",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--lm-weight",
            "0",
            "--learning-rate",
            "1e-2",
            "--no-progress",
            "--no-plots",
            "--report-to",
            "none",
        ]
    )
    assert all("lm_loss" not in row for row in _read(run / "metrics.jsonl"))
    assert _rm(["score", "--model", str(run), "--data", str(data), "-o", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads((tmp_path / "s.summary.json").read_text())["pairs"] == 8

    # final/ holds the adapter and the head, not the model: a fraction of the base model's size.
    final = run / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "reward_head.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    size = sum(p.stat().st_size for p in final.iterdir() if p.suffix == ".safetensors")
    assert size < (tiny_model_dir / "model.safetensors").stat().st_size / 4

    # The same reward model in the full layout (merged) scores the same, through `rm score` and as a judge.
    adapter_model = load_reward_model(run)
    merged = adapter_model.merged_copy().save_pretrained(tmp_path / "merged")
    assert _rm(["score", "--model", str(merged), "--data", str(data), "-o", str(tmp_path / "m.jsonl")]) == 0
    for a, b in zip(_read(tmp_path / "s.jsonl"), _read(tmp_path / "m.jsonl"), strict=True):
        assert a["reward_chosen"] == pytest.approx(b["reward_chosen"], abs=1e-5)
        assert a["reward_rejected"] == pytest.approx(b["reward_rejected"], abs=1e-5)
    items = [JudgeItem("Is water wet?", "Yes, it is."), JudgeItem("Is fire cold?", "no, I don't know")]
    from_adapter = [s.value for s in load_judge(f"reward-model:{run}").score(items)]
    from_merged = [s.value for s in load_judge(f"reward-model:{merged}").score(items)]
    assert from_adapter == pytest.approx(from_merged, abs=1e-5)
    in_bf16 = load_judge(f"reward-model:{run}")
    in_bf16.bf16 = True  # as an evaluation with --dtype bfloat16 sets it
    bf16_scores = [s.value for s in in_bf16.score(items)]
    assert bf16_scores != from_adapter and bf16_scores == pytest.approx(from_adapter, abs=0.05)
    # ...and the trained adapter matters: the base LM under the same head scores otherwise.
    base = RewardModel(load_model(str(tiny_model_dir), device="cpu"), str(tiny_model_dir), adapter_model.reward_head)
    untrained_lm = base.save_pretrained(tmp_path / "untrained_lm")
    from_base = [s.value for s in load_judge(f"reward-model:{untrained_lm}").score(items)]
    assert max(abs(a - b) for a, b in zip(from_adapter, from_base)) > 1e-4  # type: ignore[operator]  # all scored


def test_reward_model_judge_scores_and_compares_through_the_interface(saved_rm: Path) -> None:
    judge = load_judge(f"reward-model:{saved_rm}")
    items = [JudgeItem("Is water wet?", "Yes, it is."), JudgeItem("Is water wet?", "No."), JudgeItem("Hi", "")]
    scores = judge.score(items)
    model, tokenizer = load_reward_model(saved_rm), load_tokenizer(str(saved_rm))
    from prefalign.data.tokenize import TokenizeConfig, tokenize_sft

    for item, score in zip(items[:2], scores[:2]):
        example = tokenize_sft(item.prompt, item.response, tokenizer, TokenizeConfig())
        (expected,) = score_token_rows(model, [(example.prompt_ids, example.completion_ids)], tokenizer.pad_token_id)
        assert score.value == pytest.approx(expected, abs=1e-5) and math.isfinite(score.value)
    assert scores[2].value is None and "empty_completion" in str(scores[2].error)
    (verdict,) = judge.compare(["Is water wet?"], ["Yes, it is."], ["No."])
    assert verdict.preferred == ("a" if scores[0].value > scores[1].value else "b")  # type: ignore[operator]  # both scored


def test_reward_model_judge_spec_errors() -> None:
    with pytest.raises(PrefalignError, match="reward-model:PATH"):
        load_judge("reward-model:")
    with pytest.raises(PrefalignError, match="--judge-base-url"):
        load_judge("reward-model:/x", base_url="http://localhost")
