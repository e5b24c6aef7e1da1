"""`prefalign data inspect` and `prefalign data convert`, run in-process (and once as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefalign.cli import main
from prefalign.data import load_preferences
from prefalign.data.formats import to_conversational, to_explicit
from prefalign.data.inspect import inspect_preferences
from prefalign.data.tokenize import TokenizeConfig, tokenize_pair

DATA = Path(__file__).parent / "fixtures" / "data"
BAD_LINE3 = DATA / "bad_line3.jsonl"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fields(records: list) -> list[tuple]:
    return [(r.prompt, r.chosen, r.rejected, r.extra) for r in records]


def test_inspect_prints_a_table(capsys: pytest.CaptureFixture[str]):
    code, out, err = run(["data", "inspect", str(DATA / "hh.jsonl")], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"source   {DATA / 'hh.jsonl'}"
    assert lines[1] == "records  4 read, 4 kept, 0 rejected (0.0%)"
    assert "rejected by reason" not in out
    # Prompt characters (message contents): 30, 71, 15, 46; nearest-rank p50 of four values is the second smallest.
    assert "  prompt                     30       71       71       71" in lines
    assert "  identical pairs             0  (records repeating an earlier prompt, chosen, rejected)" in lines


def test_inspect_reports_bad_records_by_reason_and_still_exits_0(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(["data", "inspect", str(DATA / "bad_records.jsonl")], capsys)
    assert code == 0
    assert "records  15 read, 2 kept, 13 rejected (86.7%)" in out
    assert "  prompt_mismatch        2  chosen and rejected do not share the prompt" in out
    assert "at lines 10, 13" in out


def test_inspect_json(capsys: pytest.CaptureFixture[str]):
    source = DATA / "bad_records.jsonl"
    code, out, _ = run(["data", "inspect", str(source), "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["records"] == {"read": 15, "kept": 2, "rejected": 13}
    assert summary["rejected_by_reason"]["missing_final_turn"] == {
        "count": 2,
        "description": "dialogue does not end with an Assistant turn",
        "first_locations": [f"{source}:11", f"{source}:12"],
        "example": "'chosen' ends with a Human turn",
    }
    assert sum(entry["count"] for entry in summary["rejected_by_reason"].values()) == 13
    # Kept: "Say hi." / "Hi!" / "No." and [user "Hi"] / "Hello" / "Go away".
    assert summary["char_lengths"]["prompt"] == {"p50": 2, "p90": 7, "p99": 7, "max": 7}
    assert summary["char_lengths"]["rejected"] == {"p50": 3, "p90": 7, "p99": 7, "max": 7}
    assert "token_lengths" not in summary


def test_duplicates_are_counted(tmp_path: Path):
    pair = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}
    rows = [pair, {"prompt": "Other", "chosen": "a", "rejected": "b"}, pair, {**pair, "chosen": "Hey"}, pair]
    summary = inspect_preferences(load_preferences(rows))
    assert summary["duplicates"] == {"duplicate_pairs": 2, "duplicate_prompts": 3, "repeated_prompts": 1}


def test_inspect_with_a_tokenizer_counts_tokens_and_truncation(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
):
    from prefalign.models.loading import load_tokenizer

    source = DATA / "hh.jsonl"
    argv = ["data", "inspect", str(source), "--model", str(tiny_model_dir), "--max-length", "24"]
    code, out, _ = run([*argv, "--max-prompt-length", "12", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)

    tokenizer = load_tokenizer(str(tiny_model_dir))
    records = load_preferences(source).records
    full = [tokenize_pair(r, tokenizer, TokenizeConfig(max_length=10_000, max_prompt_length=9_000)) for r in records]
    cut = [tokenize_pair(r, tokenizer, TokenizeConfig(max_length=24, max_prompt_length=12)) for r in records]
    assert summary["token_lengths"]["prompt"]["max"] == max(len(p.prompt_ids) for p in full)
    assert summary["token_lengths"]["chosen"]["max"] == max(len(p.chosen_ids) for p in full)
    truncation = summary["truncation"]
    assert (truncation["max_length"], truncation["max_prompt_length"]) == (24, 12)
    assert truncation["prompt_truncated"] == sum(p.prompt_truncated for p in cut) > 0
    assert truncation["completion_truncated"] == sum(p.completion_truncated for p in cut) > 0
    assert truncation["dropped"] == 0
    assert summary["model"] == str(tiny_model_dir)

    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "length in tokens" in out and "at max length 24, max prompt length 512 (tokens)" in out


def test_inspect_max_length_needs_a_model(capsys: pytest.CaptureFixture[str]):
    code, out, err = run(["data", "inspect", str(DATA / "hh.jsonl"), "--max-length", "64"], capsys)
    assert (code, out) == (2, "")
    assert err == "prefalign: error: --max-length and --max-prompt-length count tokens: give a tokenizer with --model\n"


def test_inspect_of_an_unreadable_file_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(["data", "inspect", str(tmp_path / "missing.jsonl")], capsys)
    assert (code, out) == (2, "")
    assert err == f"prefalign: error: {tmp_path / 'missing.jsonl'}: no such file\n"


@pytest.mark.parametrize("extra", [[], ["--strict"]], ids=["threshold", "strict"])
def test_a_broken_line_3_fails_convert_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
):
    out_path = tmp_path / "out.jsonl"
    code, out, err = run(["data", "convert", str(BAD_LINE3), "-o", str(out_path), *extra], capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert f"{BAD_LINE3}:3: not valid JSON: Expecting ',' delimiter at column 36" in err
    assert "Traceback" not in err
    assert not out_path.exists()


def test_a_broken_line_3_in_a_real_process(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "prefalign", "data", "convert", str(BAD_LINE3), "-o", str(tmp_path / "o.jsonl")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("prefalign: error: ") and f"{BAD_LINE3}:3: not valid JSON" in line
    assert "Traceback" not in result.stderr


def test_convert_skips_bad_records_under_the_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out_path = tmp_path / "out.jsonl"
    argv = ["data", "convert", str(BAD_LINE3), "-o", str(out_path), "--max-bad-fraction", "0.25"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"wrote 4 records to {out_path}; rejected 1 of 5 read",
        "  invalid_json  1  not valid JSON",
        "                   at line 3",
        "                   e.g. Expecting ',' delimiter at column 36",
    ]
    written = [json.loads(line)["prompt"] for line in out_path.read_text().splitlines()]
    assert written == ["Say hi.", "Say bye.", "A?", "D?"]


@pytest.mark.parametrize("name", ["hh.jsonl", "explicit.jsonl", "conversational.jsonl"])
def test_convert_output_loads_back_identically(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str):
    out_path = tmp_path / "out.jsonl"
    code, out, _ = run(["data", "convert", str(DATA / name), "-o", str(out_path)], capsys)
    original = load_preferences(DATA / name).records
    assert code == 0 and out.startswith(f"wrote {len(original)} records to {out_path}; rejected 0 of")
    reloaded = load_preferences(out_path).records
    assert fields(reloaded) == fields(original)
    assert [r.location for r in reloaded] == [f"{out_path}:{i}" for i in range(1, len(original) + 1)]
    # Normalised means stable: converting the output again writes the same bytes.
    again = tmp_path / "again.jsonl"
    assert main(["data", "convert", str(out_path), "-o", str(again)]) == 0
    assert again.read_bytes() == out_path.read_bytes()


@pytest.mark.parametrize(("target", "reshape"), [("conversational", to_conversational), ("explicit", to_explicit)])
def test_convert_to_a_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, reshape):
    sources = ["hh.jsonl", "explicit.jsonl", "conversational.jsonl"]
    for name in sources:
        out_path = tmp_path / f"{target}-{name}.gz"
        assert main(["data", "convert", str(DATA / name), "-o", str(out_path), "--to", target]) == 0
        expected = [reshape(r) for r in load_preferences(DATA / name).records]
        assert fields(load_preferences(out_path, format=target).records) == fields(expected)
        assert fields(load_preferences(out_path).records) == fields(expected)


def test_convert_to_explicit_refuses_multi_message_completions_and_leaves_the_old_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    source = tmp_path / "multi.jsonl"
    chosen = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    row = {"prompt": "q", "chosen": chosen, "rejected": [{"role": "assistant", "content": "c"}]}
    source.write_text(json.dumps(row) + "\n")
    out_path = tmp_path / "out.jsonl"
    out_path.write_text("old\n")
    code, _, err = run(["data", "convert", str(source), "-o", str(out_path), "--to", "explicit"], capsys)
    assert code == 2
    assert err == (f"prefalign: error: {source}:1: 'chosen' holds 2 messages; an explicit completion is one string\n")
    assert out_path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.jsonl", "out.jsonl"]  # no temporary file left


def test_convert_refuses_to_write_an_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"chosen": "x"}\n')
    argv = ["data", "convert", str(source), "-o", str(tmp_path / "out.jsonl"), "--max-bad-fraction", "1"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err == (
        f"prefalign: error: {source}: all 1 records are bad, nothing to write; first: {source}:1: missing field: "
        "'rejected'\n"
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_convert_refuses_an_output_it_could_not_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(["data", "convert", str(DATA / "hh.jsonl"), "-o", str(tmp_path / "out.csv")], capsys)
    assert code == 2
    assert err == f"prefalign: error: {tmp_path / 'out.csv'}: preference output must be .jsonl or .jsonl.gz\n"


def test_bad_max_bad_fraction_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as caught:
        main(["data", "convert", str(DATA / "hh.jsonl"), "-o", "x.jsonl", "--max-bad-fraction", "2"])
    assert caught.value.code == 2
    assert "expected a number from 0 to 1, got 2.0" in capsys.readouterr().err
