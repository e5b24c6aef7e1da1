"""`pairs build` and `pairs stats`: loadable pairs with provenance, recorded skips, resuming after a kill, the stats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefalign.cli import main
from prefalign.data import load_preferences
from prefalign.errors import DataError, PrefalignError
from prefalign.judges import VerifierJudge
from prefalign.pairs import (
    BuildReport,
    PairsConfig,
    build_pairs,
    format_stats,
    pair_stats,
    read_prompt_records,
    skipped_path,
)

# Random text from the tiny model contains "re" about half the time, so two samples often differ on this check
# (a pair) and often agree (a tie).
CONTAINS_RE = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["re"]}]}
ALWAYS_FOLLOWED = {"instruction_id_list": ["keywords:forbidden_words"], "kwargs": [{"forbidden_words": ["zqxj"]}]}


def write_prompts(path: Path, count: int, *, extra: list[dict] | None = None) -> Path:
    rows = [
        {"id": f"p{i:02d}", "prompt": f"Write a short note about topic number {i}.", **CONTAINS_RE}
        for i in range(count)
    ]
    with open(path, "w", encoding="utf-8") as out:
        for row in rows + (extra or []):
            out.write(json.dumps(row) + "\n")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from prefalign.models.loading import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


CONFIG = {"max_new_tokens": 16, "batch_size": 2, "chunk_size": 4}


def run_build(tiny, prompts_file: Path, output: Path, **options) -> BuildReport:
    model, tokenizer = tiny
    config = PairsConfig(**{**CONFIG, **options})
    prompts = read_prompt_records(prompts_file, config.limit)
    return build_pairs(model, tokenizer, VerifierJudge(), prompts, output, config, model_name="tiny")


def test_cli_build_writes_only_loadable_pairs_and_records_skips(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    special = [
        {"id": "tie", "prompt": "Say anything.", **ALWAYS_FOLLOWED},  # both samples follow it: always a tie
        {"id": "no-instructions", "prompt": "Say anything."},  # the verifier cannot score it: a judge failure
    ]
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12, extra=special)
    out = tmp_path / "pairs.jsonl"
    code = main(
        [
            "pairs",
            "build",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            str(prompts),
            "--judge",
            "verifier",
            "-o",
            str(out),
            "--max-new-tokens",
            "16",
            "--batch-size",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    pairs, skipped = read_lines(out), read_lines(skipped_path(out))
    assert len(pairs) >= 2 and len(skipped) >= 3
    expected_ids = [f"p{i:02d}" for i in range(12)] + ["tie", "no-instructions"]
    assert sorted(line["id"] for line in pairs + skipped) == sorted(expected_ids)
    data = load_preferences(out, strict=True)
    assert len(data) == len(pairs)
    for line, record in zip(pairs, data):
        assert record.prompt == line["prompt"] and record.chosen != record.rejected
        assert (line["model"], line["judge"]) == (str(tiny_model_dir), "verifier")
        assert line["instruction_id_list"] == CONTAINS_RE["instruction_id_list"]
        assert (line["chosen_score"], line["rejected_score"]) == (1.0, 0.0)  # one instruction: followed or not
        assert ("re" in line["chosen"].lower(), "re" in line["rejected"].lower()) == (True, False)
        sides = {line["chosen_sample"]["index"], line["rejected_sample"]["index"]}
        assert sides == {0, 1}
        for side in ("chosen_sample", "rejected_sample"):
            sample = line[side]
            assert (sample["temperature"], sample["seed"]) == ([0.7, 1.2][sample["index"]], sample["index"])
            assert sample["top_p"] == 0.95 and 1 <= sample["num_tokens"] <= 16
        assert line["judge_details"]["chosen"]["instructions"][0] == {
            "id": "keywords:existence",
            "strict": True,
            "loose": True,
        }
    by_id = {line["id"]: line for line in skipped}
    assert by_id["tie"]["status"] == "tie" and [s["score"] for s in by_id["tie"]["samples"]] == [1.0, 1.0]
    assert by_id["no-instructions"]["status"] == "judge_failure"
    assert "no verifiable instructions" in by_id["no-instructions"]["error"]
    ties = sum(line["status"] == "tie" for line in skipped)
    counts = f"prompts 14 (0 done before this run), pairs written {len(pairs)}, ties {ties}, judge failures 1"
    assert counts in captured.out
    assert f"tie rate {ties / 14:.1%}" in captured.out
    assert "14/14 prompts done" in captured.err


def test_identical_answers_make_no_pair(tiny, tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    # Near-greedy sampling: both samples take the argmax at every step.
    report = run_build(tiny, prompts, tmp_path / "pairs.jsonl", temperatures=[1e-4])
    assert (report.pairs, report.no_distinct_responses) == (0, 4)
    skipped = read_lines(skipped_path(tmp_path / "pairs.jsonl"))
    assert {line["status"] for line in skipped} == {"no_distinct_responses"}
    assert all(line["samples"][0]["text"] == line["samples"][1]["text"] for line in skipped)


def test_more_samples_pick_best_against_worst(tiny, tmp_path: Path):
    config = PairsConfig(num_samples=3, temperatures=[0.7, 1.2], seed=5)
    assert [(s.temperature, s.seed) for s in config.sample_settings()] == [(0.7, 5), (1.2, 6), (0.7, 7)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    out = tmp_path / "pairs.jsonl"
    report = run_build(tiny, prompts, out, num_samples=3)
    assert report.pairs >= 1
    for line in read_lines(out):
        assert (line["chosen_score"], line["rejected_score"]) == (1.0, 0.0)
        assert line["chosen_sample"]["index"] != line["rejected_sample"]["index"]
    for line in read_lines(skipped_path(out)):
        if line["status"] == "tie":
            assert len({s["score"] for s in line["samples"] if s["score"] is not None}) == 1
    load_preferences(out, strict=True)


class Stop(Exception):
    pass


def stop_after(batches: int):
    seen = []

    def on_batch(report: BuildReport) -> None:
        seen.append(report.done)
        if len(seen) == batches:
            raise Stop

    return on_batch


def test_resume_after_a_stop_and_a_torn_line_gives_the_same_files(tiny, tmp_path: Path, capsys):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", 12)
    prompts = read_prompt_records(prompts_file)
    model, tokenizer = tiny
    config = PairsConfig(**CONFIG)
    whole = tmp_path / "whole.jsonl"
    build_pairs(model, tokenizer, VerifierJudge(), prompts, whole, config, model_name="tiny")

    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(Stop):
        build_pairs(
            model, tokenizer, VerifierJudge(), prompts, resumed, config, model_name="tiny", on_batch=stop_after(2)
        )
    done_lines = len(read_lines(resumed)) + len(read_lines(skipped_path(resumed)))
    assert done_lines == 8  # two batches of four
    # A kill in the middle of writing the second batch: its last pair line is cut short.
    data = resumed.read_bytes()
    assert data, "the first two batches gave no pair; pick other test prompts"
    resumed.write_bytes(data[:-7])
    report = build_pairs(model, tokenizer, VerifierJudge(), prompts, resumed, config, model_name="tiny")
    assert "removed an incomplete last line" in capsys.readouterr().err
    assert report.resumed == 7 and report.done == 12
    assert resumed.read_bytes() == whole.read_bytes()
    assert skipped_path(resumed).read_bytes() == skipped_path(whole).read_bytes()

    # Everything done: a rerun generates nothing and changes nothing.
    again = build_pairs(
        model, tokenizer, VerifierJudge(), prompts, resumed, config, model_name="tiny", on_batch=stop_after(1)
    )
    assert (again.resumed, again.pairs) == (12, report.pairs)
    assert resumed.read_bytes() == whole.read_bytes()


def test_sigkill_mid_run_then_rerun_gives_the_same_files(tiny_model_dir: Path, tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    common = [
        "pairs",
        "build",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "--judge",
        "verifier",
        "--max-new-tokens",
        "16",
        "--batch-size",
        "2",
        "--chunk-size",
        "2",
    ]
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    assert main([*common, "-o", str(whole)]) == 0

    process = subprocess.Popen(
        [sys.executable, "-m", "prefalign", *common, "-o", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while not any(p.exists() and p.stat().st_size for p in (killed, skipped_path(killed))):
            assert process.poll() is None, "the run ended before writing anything"
            assert time.monotonic() < deadline, "no output after 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    written = len(read_lines(killed)) + len(read_lines(skipped_path(killed)))
    assert written < 12, "the kill came after the end of the run"
    assert main([*common, "-o", str(killed)]) == 0
    assert killed.read_bytes() == whole.read_bytes()
    assert skipped_path(killed).read_bytes() == skipped_path(whole).read_bytes()


def test_resume_with_other_settings_is_refused(tiny, tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "pairs.jsonl"
    run_build(tiny, prompts, out)
    with pytest.raises(
        PrefalignError,
        match=r"pairs.jsonl(.skipped.jsonl)?:1: written with generation .* resume "
        r"with the same settings",
    ):
        run_build(tiny, prompts, out, seed=1)


def test_bad_prompt_files_name_the_line(tmp_path: Path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"prompts.jsonl:2: empty prompt"):
        read_prompt_records(path)
    path.write_text('{"id": 1, "prompt": "a"}\n\n{"id": "1", "prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"prompts.jsonl:3: id '1' repeats the id at .*prompts.jsonl:1"):
        read_prompt_records(path)
    path.write_text('{"prompt": "a", "chosen": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="field `chosen` is written by pairs build"):
        read_prompt_records(path)
    path.write_text('{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}]}\nnot json\n', encoding="utf-8")
    assert [(p.id, p.prompt) for p in read_prompt_records(path, limit=2)] == [
        ("line-1", "a"),
        ("line-2", [{"role": "user", "content": "b"}]),
    ]


def test_bad_options_are_one_line_errors(tiny_model_dir: Path, tmp_path: Path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    base = ["pairs", "build", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--judge", "verifier"]
    cases = [
        ([*base, "-o", str(tmp_path / "pairs.json")], "the pairs file must be .jsonl"),
        ([*base, "-o", str(tmp_path / "p.jsonl"), "--num-samples", "1"], "--num-samples must be at least 2"),
        ([*base, "-o", str(tmp_path / "p.jsonl"), "--temperatures", "0"], "temperatures must be positive"),
        (
            [*base, "-o", str(tmp_path / "p.jsonl"), "--judge-base-url", "http://127.0.0.1:1"],
            "--judge-base-url apply only to openai: and anthropic: judges",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("prefalign: error: ") and message in err and err.count("\n") == 1, err


def _pair(
    chosen: str,
    rejected: str,
    chosen_score: float,
    rejected_score: float,
    temperature: float,
    chosen_results: list[bool],
    rejected_results: list[bool],
) -> dict:
    ids = ["punctuation:no_comma", "detectable_format:title"][: len(chosen_results)]

    def details(results: list[bool]) -> dict:
        return {"instructions": [{"id": i, "strict": r, "loose": r} for i, r in zip(ids, results)]}

    return {
        "prompt": "p",
        "chosen": chosen,
        "rejected": rejected,
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
        "chosen_sample": {"temperature": temperature, "finish_reason": "eos"},
        "rejected_sample": {"temperature": 1.2, "finish_reason": "length"},
        "judge_details": {"chosen": details(chosen_results), "rejected": details(rejected_results)},
    }


def test_stats_by_hand(tmp_path: Path, capsys):
    out = tmp_path / "pairs.jsonl"
    rows = [
        _pair("one two three", "one", 1.0, 0.5, 0.7, [True, True], [True, False]),  # chosen longer
        _pair("ab", "abcd efgh", 0.5, 0.0, 0.7, [False, True], [False, False]),  # chosen shorter
        _pair("same", "diff", 1.0, 0.0, 1.2, [True], [False]),  # equal lengths
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    skips = [
        {"id": i, "status": s} for i, s in enumerate(["tie", "tie", "judge_failure", "no_distinct_responses", "tie"])
    ]
    skipped_path(out).write_text("".join(json.dumps(s) + "\n" for s in skips), encoding="utf-8")
    stats = pair_stats(out)
    assert stats["pairs"] == 3 and stats["prompts"] == 8
    assert stats["skipped"] == {
        "tie": 3,
        "judge_failure": 1,
        "no_distinct_responses": 1,
        "small_gap": 0,
        "repetitive": 0,
    }
    assert stats["tie_rate"] == 3 / 8
    assert stats["scores"]["chosen"] == {"count": 3, "mean": 2.5 / 3, "median": 1.0, "min": 0.5, "max": 1.0}
    assert stats["scores"]["rejected"]["mean"] == 0.5 / 3 and stats["scores"]["margin"]["median"] == 0.5
    assert stats["length"]["chars"]["chosen"]["mean"] == (13 + 2 + 4) / 3
    assert stats["length"]["chars"]["rejected"]["median"] == 4
    assert stats["length"]["words"]["chosen"]["mean"] == 5 / 3 and stats["length"]["words"]["rejected"]["max"] == 2
    assert (stats["chosen_longer"], stats["same_length"]) == (1 / 3, 1 / 3)
    assert stats["chosen_by_temperature"] == {"0.7": 2, "1.2": 1}
    assert stats["truncated"] == {"chosen": 0.0, "rejected": 1.0}
    assert stats["instructions"]["punctuation:no_comma"] == {
        "pairs": 3,
        "chosen_strict": 2 / 3,
        "rejected_strict": 1 / 3,
        "chosen_loose": 2 / 3,
        "rejected_loose": 1 / 3,
    }
    assert stats["instructions"]["detectable_format:title"]["pairs"] == 2
    assert stats["instructions"]["detectable_format:title"]["chosen_strict"] == 1.0

    assert main(["pairs", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert table == format_stats(stats) + "\n"
    assert "tie rate        37.5% of 8 prompts" in table
    assert "chosen longer   33.3% of pairs (same length: 33.3%)" in table
    assert main(["pairs", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(stats))


def test_stats_of_a_file_without_pairs_or_skips(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"
    out.write_text("", encoding="utf-8")
    skipped_path(out).write_text(json.dumps({"id": "a", "status": "tie"}) + "\n", encoding="utf-8")
    assert pair_stats(out) == {
        "source": str(out),
        "pairs": 0,
        "bad_lines": 0,
        "prompts": 1,
        "tie_rate": 1.0,
        "skipped": {"tie": 1, "judge_failure": 0, "no_distinct_responses": 0, "small_gap": 0, "repetitive": 0},
    }
    skipped_path(out).write_text('{"id": "a", "status": "maybe"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"skipped.jsonl:1: unknown status 'maybe'"):
        pair_stats(out)


@pytest.mark.model
def test_builtin_prompts_with_smollm2(smollm2_dir: Path, tmp_path: Path, capsys):
    """The issue's "done when" with SmolLM2-135M-Instruct and the verifier: every line of the pairs file loads.

    16 prompts by default, so the test stays within a few minutes on a 2-core CPU; PREFALIGN_TEST_PAIRS_PROMPTS=64
    runs the issue's full 64 (about 4x longer).
    """
    count = int(os.environ.get("PREFALIGN_TEST_PAIRS_PROMPTS", "16"))
    prompts = tmp_path / "prompts.jsonl"
    assert main(["prompts", "builtin", "-o", str(prompts), "--split", "train"]) == 0
    capsys.readouterr()
    out = tmp_path / "pairs.jsonl"
    started = time.perf_counter()
    assert (
        main(
            [
                "pairs",
                "build",
                "--model",
                "smollm2-135m-instruct",
                "--prompts",
                str(prompts),
                "--judge",
                "verifier",
                "-o",
                str(out),
                "--limit",
                str(count),
                "--max-new-tokens",
                "64",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    elapsed = time.perf_counter() - started
    summary = capsys.readouterr().out.splitlines()[0]
    data = load_preferences(out, strict=True)
    skipped = read_lines(skipped_path(out))
    assert len(data) + len(skipped) == count and len(data) >= count // 8
    assert f"prompts {count} (0 done before this run), pairs written {len(data)}" in summary and "tie rate" in summary
    with capsys.disabled():
        print(f"\n{count} built-in prompts in {elapsed:.0f} s: {summary}\n{format_stats(pair_stats(out))}")
