"""The demo pipeline on the tiny model: every stage runs, a rerun skips them, --from reruns from a stage."""

from __future__ import annotations

import json

import pytest

from prefalign.errors import PrefalignError
from prefalign.pipeline import DemoConfig, run_demo

HH = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."},
    {"chosen": "\n\nHuman: Name a color\n\nAssistant: Blue.", "rejected": "\n\nHuman: Name a color\n\nAssistant: Blue."},
    {"chosen": "\n\nHuman: Two plus two?\n\nAssistant: Four.", "rejected": "\n\nHuman: Two plus two?\n\nAssistant: Five."},
]


@pytest.fixture
def demo_config(tmp_path, tiny_model_dir) -> DemoConfig:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in HH))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hello"}) + "\n" + json.dumps({"prompt": "Count to three"}) + "\n")
    return DemoConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), data=str(data),
                      prompts=str(prompts), max_new_tokens=6, batch_size=2)


def test_demo_runs_every_stage_then_skips_them(demo_config) -> None:
    results = run_demo(demo_config)
    assert [r.name for r in results] == ["base", "data", "generate", "report"]
    assert not any(r.skipped for r in results)

    data_report = json.loads((results[1].directory / "data_report.json").read_text())
    assert data_report["records"] == {"read": 3, "kept": 2, "rejected": 1}
    generations = [json.loads(line) for line in (results[2].directory / "generations.jsonl").read_text().splitlines()]
    assert [g["prompt"] for g in generations] == ["Say hello", "Count to three"]
    assert all(0 < g["num_tokens"] <= 6 for g in generations)
    report = (results[3].directory / "report.md").read_text()
    assert "Read 3, kept 2, rejected 1." in report and "Count to three" in report

    again = run_demo(demo_config)
    assert all(r.skipped for r in again)


def test_from_stage_reruns_that_stage_and_later_ones(demo_config) -> None:
    run_demo(demo_config)
    results = run_demo(demo_config, from_stage="generate")
    assert {r.name: r.skipped for r in results} == {"base": True, "data": True, "generate": False, "report": False}


def test_unknown_stage_is_a_clear_error(demo_config) -> None:
    with pytest.raises(PrefalignError, match="unknown stage 'sft'"):
        run_demo(demo_config, from_stage="sft")
