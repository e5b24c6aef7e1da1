"""The demo pipeline: every stage runs, a rerun skips them, --from reruns from a stage, a killed stage resumes.

The core tests run on the tiny model with your-own-data inputs (a random model passes no verifier check, so it cannot
make its own SFT data); the `model` test runs `prefalign demo --quick` end to end on SmolLM2, as CI does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefalign.errors import PrefalignError
from prefalign.pipeline import STAGES, DemoConfig, run_demo
from test_train_support import kill_after_first_checkpoint

PAIRS = [
    {"prompt": f"Name a thing number {i}.", "chosen": f"Thing {i} is a cup.", "rejected": f"I will not say {i}."}
    for i in range(10)
]
SFT = [{"prompt": f"Say hello {i}.", "completion": f"Hello {i}!"} for i in range(6)]


@pytest.fixture
def demo_config(tmp_path: Path, tiny_model_dir: Path) -> DemoConfig:
    pairs, sft = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    sft.write_text("".join(json.dumps(row) + "\n" for row in SFT))
    return DemoConfig(
        output_dir=str(tmp_path / "run"),
        model=str(tiny_model_dir),
        sft_data=str(sft),
        preference_data=str(pairs),
        eval_limit=3,
        max_new_tokens=4,
        generation_batch_size=4,
        max_length=48,
        max_prompt_length=24,
        train_batch_size=4,
        lora_rank=4,
        lora_layers=1,
        rm_lora_layers=1,
        sft_epochs=1,
        rm_epochs=1,
        dpo_epochs=1,
        heldout_fraction=0.3,
        kl_samples=1,
        kl_max_new_tokens=3,
        kl_prompts=2,
    )


def test_demo_runs_every_stage_then_skips_them(demo_config: DemoConfig) -> None:
    results = run_demo(demo_config)
    assert [r.name for r in results] == list(STAGES)
    assert not any(r.skipped for r in results)
    out = Path(demo_config.output_dir)
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    assert (pairs["pairs"], pairs["train_pairs"], pairs["heldout_pairs"]) == (10, 7, 3)
    assert (out / "sft" / "final" / "merged" / "config.json").exists()
    assert (out / "dpo" / "final" / "merged" / "config.json").exists()
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert evaluation["labels"] == ["base", "sft", "dpo"] and evaluation["prompts"] == 3
    assert evaluation["settings"]["kl"]["max_new_tokens"] == 3  # --kl-max-new-tokens, within --max-new-tokens 4
    assert evaluation["settings"]["kl"]["prompts"] == 2  # --kl-prompts: the first 2 of the 3
    report = (out / "report.md").read_text()
    for name in STAGES:
        assert f"| {name} |" in report
    closing = report.rstrip().splitlines()
    assert closing[-3].startswith("What dpo changed over sft, on 3 prompts")
    assert closing[-1].startswith("The other comparisons (95% intervals;") and "sft over base: " in closing[-1]
    assert (out / "report.html").read_text().count("What changed") >= 1

    again = run_demo(demo_config)
    assert all(r.skipped for r in again)


def test_reruns_redo_only_what_changed_or_what_from_names(demo_config: DemoConfig) -> None:
    run_demo(demo_config)
    demo_config.beta = 0.2  # a DPO setting: DPO and the evaluation rerun, nothing before them
    assert [r.name for r in run_demo(demo_config) if not r.skipped] == ["dpo", "eval"]
    results = run_demo(demo_config, from_stage="reward")
    assert [r.name for r in results if not r.skipped] == ["reward", "dpo", "eval"]


def test_user_data_with_a_limit_and_evaluation_on_the_heldout_pairs_prompts(demo_config: DemoConfig) -> None:
    demo_config.data_limit, demo_config.eval_prompts = 8, "heldout-pairs"
    run_demo(demo_config)
    out = Path(demo_config.output_dir)
    assert json.loads((out / "sft_data" / "sampling.json").read_text())["records"] == 6
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    assert (pairs["read"], pairs["used"], pairs["train_pairs"], pairs["heldout_pairs"]) == (10, 8, 6, 2)
    heldout = [json.loads(line)["prompt"] for line in (out / "pairs" / "heldout.jsonl").read_text().splitlines()]
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert evaluation["prompts"] == 2
    assert [p["prompt"] for p in map(json.loads, (out / "pairs" / "heldout_prompts.jsonl").open())] == heldout
    # No verifiable instructions in these prompts: the verifier is not asked; the reward model judges.
    assert [r["judge"] for r in evaluation["pairwise"]] == [f"reward-model:{out / 'reward' / 'final'}"] * 2


def test_the_example_config_loads() -> None:
    from prefalign.config import build_config

    example = Path(__file__).resolve().parents[1] / "examples" / "demo-hh-rlhf.yaml"
    config = build_config(DemoConfig, example)
    assert config.preference_data == config.sft_data and config.preference_data.endswith("harmless-base-test.jsonl.gz")
    assert config.eval_prompts == "heldout-pairs" and config.eval_judges == ["anthropic:claude-haiku-4-5"]


def test_unknown_stage_is_a_clear_error(demo_config: DemoConfig) -> None:
    with pytest.raises(PrefalignError, match="unknown stage 'nope'"):
        run_demo(demo_config, from_stage="nope")


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(PrefalignError, match="--pair-samples must be at least 2"):
        DemoConfig(pair_samples=1)
    with pytest.raises(PrefalignError, match="--max-prompt-length must be below --max-length"):
        DemoConfig(max_length=100, max_prompt_length=100)
    with pytest.raises(PrefalignError, match="--train-precision must be one of auto, bf16, fp32, got 'fp16'"):
        DemoConfig(train_precision="fp16")
    with pytest.raises(PrefalignError, match="--kl-max-new-tokens must be at least 1, got 0"):
        DemoConfig(kl_max_new_tokens=0)
    with pytest.raises(PrefalignError, match="--kl-prompts must be at least 1, got 0"):
        DemoConfig(kl_prompts=0)
    with pytest.raises(PrefalignError, match="--sampling-max-new-tokens must be at least 1, got 0"):
        DemoConfig(sampling_max_new_tokens=0)


def test_samples_and_answers_have_their_own_token_budgets() -> None:
    """SFT and pair samples stop at --sampling-max-new-tokens; the evaluation's answers at --max-new-tokens."""
    config = DemoConfig(sampling_max_new_tokens=40, max_new_tokens=100)
    assert config.sft_sampling().max_new_tokens == config.pairs_sampling().max_new_tokens == 40
    assert config.eval_generation().max_new_tokens == 100


def test_train_precision_auto_takes_bf16_where_the_device_computes_it_faster() -> None:
    from prefalign.models.loading import default_device
    from prefalign.models.precision import fast_bf16

    native = "bf16" if fast_bf16(default_device()) else "fp32"
    for stage in ("sft", "reward", "dpo"):
        trained = DemoConfig().training_config(stage, model="m", data="d", output_dir="o")
        assert trained.precision == native, stage
        assert (
            DemoConfig(train_precision="fp32").training_config(stage, model="m", data="d", output_dir="o").precision
            == "fp32"
        )


def _demo_command(config: DemoConfig, *extra: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "prefalign",
        "demo",
        "--output-dir",
        config.output_dir,
        "--model",
        config.model,
        "--sft-data",
        str(config.sft_data),
        "--preference-data",
        str(config.preference_data),
    ]
    for name in (
        "eval_limit",
        "max_new_tokens",
        "generation_batch_size",
        "max_length",
        "max_prompt_length",
        "train_batch_size",
        "lora_rank",
        "lora_layers",
        "rm_lora_layers",
        "heldout_fraction",
        "sft_epochs",
        "rm_epochs",
        "kl_samples",
        "kl_max_new_tokens",
        "kl_prompts",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    return command + list(extra)


def test_a_kill_during_training_resumes_without_redoing_finished_stages(demo_config: DemoConfig) -> None:
    """SIGKILL the demo once DPO has written a checkpoint; the rerun skips the finished stages and resumes DPO."""
    command = _demo_command(demo_config, "--dpo-epochs", "30", "--save-steps", "4")
    out = Path(demo_config.output_dir)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_after_first_checkpoint(process, out / "dpo.partial", timeout=300)
    assert not (out / "dpo").exists(), "DPO finished before the kill"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    for name in ("base", "prompts", "sft_data", "sft", "pairs", "reward"):
        assert f"[{name}] up to date, skipped" in finished.stderr
    assert "[dpo] resuming the unfinished run" in finished.stderr
    assert json.loads((out / "dpo" / "summary.json").read_text())["resumed_from"] is not None
    assert (out / "report.md").exists()


@pytest.mark.model
def test_quick_demo_on_smollm2_produces_the_three_way_report(smollm2_dir: Path, tmp_path: Path, capsys) -> None:
    """`prefalign demo --quick`, as CI runs it: every stage on the real model, then the report."""
    from prefalign.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"report: {out / 'report.md'}" in captured.out
    for name in STAGES:  # each stage's time is printed at the end
        assert any(line.startswith(name) for line in captured.err.splitlines()[-len(STAGES) - 2 :])
    # the evaluation says what it judges, and the reward model's scoring shows its progress over all 48 answers
    assert "[eval] judging 48 answers: verifier, reward-model:" in captured.err
    assert "reward model: 100%" in captured.err and "| 48/48 " in captured.err
    sampling = json.loads((out / "sft_data" / "sampling.json").read_text())
    assert 0 < sampling["kept"] <= sampling["prompts"] == 32
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    split = pairs["train_pairs"] + pairs["heldout_pairs"] + pairs["heldout_rewrites"]  # held-out rewrites set aside
    assert pairs["source"] == "built" and pairs["pairs"] == split >= 4
    # DPO trains on every train pair; the reward model on them but the contrast pairs (the judge ties their sides).
    trained_on = {
        stage: json.loads((out / stage / "run.json").read_text())["config"]["data"] for stage in ("reward", "dpo")
    }
    assert trained_on == {
        "reward": str(out / "pairs" / "reward_train.jsonl"),
        "dpo": str(out / "pairs" / "train.jsonl"),
    }
    contrasts = sum('"source": "contrast:' in line for line in (out / "pairs" / "train.jsonl").read_text().splitlines())
    assert pairs["reward_train_pairs"] == pairs["train_pairs"] - contrasts
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert evaluation["labels"] == ["base", "sft", "dpo"] and evaluation["prompts"] == 16
    rows = {row["key"]: row for row in evaluation["table"]["rows"]}
    for label in ("base", "sft", "dpo"):  # every model has an instruction-following rate with its interval
        cell = rows["ifeval/prompt_strict"]["cells"][label]
        assert cell["low"] <= cell["value"] <= cell["high"]
    assert rows["ifeval/prompt_strict"]["delta"] is not None
    assert rows["ifeval/prompt_strict_unseen"]["cells"]["dpo"]["n"] < 16  # the prompts worded in unseen phrasings
    assert any(key.startswith("judge/reward-model") for key in rows)
    report = (out / "report.md").read_text()
    assert "| Metric | base | sft | dpo | Δ dpo over sft (95% CI) |" in report
    closing = report.rstrip().splitlines()
    assert closing[-3].startswith("What dpo changed over sft, on 16 prompts")
    assert closing[-1].startswith("The other comparisons (95% intervals;") and "sft over base: " in closing[-1]
    assert (out / "report.html").stat().st_size > 10_000


def test_the_pairs_split_keeps_a_pair_whose_text_holds_a_line_separator_whole(tmp_path: Path) -> None:
    """U+2028 is a line break to `str.splitlines()`, and `json.dumps(ensure_ascii=False)` leaves it unescaped."""
    from prefalign.pipeline.data_stages import build_or_load_pairs

    rows = [dict(row) for row in PAIRS]
    rows[3]["chosen"] = "Thing 3\u2028is a cup.\u2029Really."
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    config = DemoConfig(output_dir=str(tmp_path / "run"), preference_data=str(source), heldout_fraction=0.3)
    build_or_load_pairs(config, config.pairs_sampling(), work, "unused", tmp_path / "unused.jsonl")
    split = [
        json.loads(line)
        for name in ("train.jsonl", "heldout.jsonl")
        for line in (work / name).read_text(encoding="utf-8").split("\n")
        if line
    ]
    assert sorted(row["chosen"] for row in split) == sorted(row["chosen"] for row in rows)
    assert json.loads((work / "summary.json").read_text())["pairs"] == len(rows)


def test_the_demo_report_lists_what_the_training_stages_warned_about(tmp_path: Path) -> None:
    from prefalign.pipeline.report import training_warnings

    assert training_warnings(tmp_path) == ["No training stage warned.", ""]
    for stage, warnings in (("sft", []), ("dpo", ["step 5: diverged: train loss 41 is above ...", "chosen falls"])):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "summary.json").write_text(json.dumps({"steps": 6, "warnings": warnings}))
    assert training_warnings(tmp_path) == [
        "## Training warnings",
        "",
        "- dpo: step 5: diverged: train loss 41 is above ...",
        "- dpo: chosen falls",
        "",
    ]


def test_a_second_dpo_round_trains_the_first_rounds_model_on_pairs_of_its_own(demo_config: DemoConfig) -> None:
    """`--rounds 2`: pairs_2 samples the next train prompts from round 1's DPO model with seeds past round 1's, and
    dpo_2 trains that model on them (itself the reference), validated on round 1's held-out pairs; the evaluation's
    dpo model is round 2's."""
    # Random text from the tiny model contains "re" about half the time: two samples often differ on this check.
    prompts = Path(demo_config.output_dir).parent / "train_prompts.jsonl"
    check = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["re"]}]}
    rows = [{"id": f"p{i:02d}", "prompt": f"Write a note about topic {i}.", **check} for i in range(40)]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    demo_config.train_prompts, demo_config.rounds, demo_config.pair_prompts = str(prompts), 2, 16
    demo_config.sampling_max_new_tokens = 16
    results = run_demo(demo_config)
    assert [r.name for r in results] == [*STAGES[:-1], "pairs_2", "dpo_2", "eval"]
    out = Path(demo_config.output_dir)
    window = [json.loads(line)["id"] for line in (out / "pairs_2" / "prompts.jsonl").read_text().splitlines()]
    assert window == [f"p{i:02d}" for i in range(16, 32)]  # round 1 would have sampled the first 16
    pairs = [json.loads(line) for line in (out / "pairs_2" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["model"] for p in pairs} == {"dpo round 1"}
    assert {p["generation"]["seed"] for p in pairs} == {demo_config.seed + 2}
    summary = json.loads((out / "pairs_2" / "summary.json").read_text())
    assert summary["train_pairs"] == len(pairs) and summary["prompts"] == 16
    trained = json.loads((out / "dpo_2" / "run.json").read_text())["config"]
    assert trained["model"] == str(out / "dpo" / "final" / "merged") and trained["ref_model"] is None
    assert (trained["data"], trained["eval_data"]) == (
        str(out / "pairs_2" / "train.jsonl"),
        str(out / "pairs" / "heldout.jsonl"),
    )
    assert trained["run_name"] == "run-dpo_2"
    evaluation = json.loads((out / "eval" / "report.json").read_text())
    assert evaluation["models"]["dpo"]["path"] == str(out / "dpo_2" / "final" / "merged")
    assert evaluation["runs"]["dpo"] == str(out / "dpo_2")
    report = (out / "report.md").read_text()
    assert report.startswith("# prefalign demo: base → SFT → preference pairs → reward model → DPO (×2 rounds,")
    assert "| pairs_2 | from 16 prompts, sampled from the previous round's DPO model:" in report
    assert "| dpo_2 | " in report and "reward gap" in report.split("| dpo_2 | ")[1].split("\n")[0]

    assert all(r.skipped for r in run_demo(demo_config))
    rerun = run_demo(demo_config, from_stage="dpo_2")
    assert [r.name for r in rerun if not r.skipped] == ["dpo_2", "eval"]
    with pytest.raises(PrefalignError, match="unknown stage 'dpo_3'; stages are .*pairs_2, dpo_2, eval"):
        run_demo(demo_config, from_stage="dpo_3")


def test_a_later_rounds_pairs_keep_out_the_prompts_round_one_held_out(tmp_path: Path) -> None:
    from prefalign.pipeline.data_stages import split_round_pairs

    first = tmp_path / "pairs"
    first.mkdir()
    pair = {"chosen": "a", "rejected": "b"}
    (first / "heldout.jsonl").write_text(json.dumps({"id": "p1", "prompt": "one", **pair}) + "\n")
    (first / "heldout_rewrites.jsonl").write_text(json.dumps({"prompt": "two", **pair, "source": "rewrite:x"}) + "\n")
    built = tmp_path / "built.jsonl"
    rows = [
        {"id": "p1", "prompt": "one", **pair},
        {"prompt": "two", **pair},
        {"prompt": "two", **pair, "source": "contrast:x"},
        {"id": "p3", "prompt": "three", **pair},
        {"id": "p4", "prompt": "four", **pair, "source": "contrast:y"},
    ]
    built.write_text("".join(json.dumps(row) + "\n" for row in rows))
    work = tmp_path / "work"
    work.mkdir()
    counts = split_round_pairs(built, work, first)
    assert counts == {"pairs": 5, "train_pairs": 2, "reward_train_pairs": 1, "heldout_pairs": 2, "heldout_rewrites": 1}
    assert [json.loads(line)["id"] for line in (work / "train.jsonl").read_text().splitlines()] == ["p3", "p4"]
    built.write_text("".join(json.dumps(row) + "\n" for row in rows[:3]))
    with pytest.raises(PrefalignError, match="no pairs to train on"):
        split_round_pairs(built, work, first)


def test_each_rounds_prompts_and_seeds_follow_the_last_rounds(tmp_path: Path) -> None:
    from prefalign.pipeline.run import _round_prompts, stage_names

    assert stage_names(1) == STAGES
    assert stage_names(3)[-5:] == ("pairs_2", "dpo_2", "pairs_3", "dpo_3", "eval")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"p{i}"}) + "\n" for i in range(5)))
    assert [row["id"] for row in _round_prompts(prompts, 2, 2)] == ["2", "3"]
    assert [row["id"] for row in _round_prompts(prompts, 2, 3)] == ["4", "0"]  # from the start again
    assert [row["id"] for row in _round_prompts(prompts, 9, 2)] == ["4", "0", "1", "2", "3"]  # each prompt once
    config = DemoConfig(seed=3, pair_samples=4)
    assert [config.pairs_sampling(r).seed for r in (1, 2, 3)] == [3, 7, 11]  # sample j of a round: seed + j
    with pytest.raises(PrefalignError, match="--rounds must be at least 1, got 0"):
        DemoConfig(rounds=0)


def test_the_report_lists_a_later_rounds_warnings_and_only_this_runs(tmp_path: Path) -> None:
    from prefalign.pipeline.report import training_warnings

    for stage in ("dpo_2", "dpo_3"):  # dpo_3: left over from an earlier run with --rounds 3
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "summary.json").write_text(json.dumps({"steps": 6, "warnings": [f"{stage} warned"]}))
    assert training_warnings(tmp_path, ("sft", "reward", "dpo", "dpo_2")) == [
        "## Training warnings",
        "",
        "- dpo_2: dpo_2 warned",
        "",
    ]
