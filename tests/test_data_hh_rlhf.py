"""The real HH-RLHF harmless-base test split (../shared/data): every line accounted for, the malformed ones named.

What is wrong in that file, found by reading it: 4 dialogues whose chosen final Assistant turn is empty, and 5 whose
chosen and rejected differ before the last "\\n\\nAssistant:" (a response that itself contains "Assistant:" or
"Human:" turns moves the last marker). Nothing else: no bad JSON, no identical pairs, no missing fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefalign.cli import main
from prefalign.data import Reason, load_preferences

pytestmark = pytest.mark.shared

LINES = 2312
EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]
PROMPT_MISMATCH_LINES = [1255, 1689, 1951, 1953, 2037]


def test_every_line_is_kept_or_rejected_with_a_location_and_reason(hh_test_path: Path):
    data = load_preferences(hh_test_path)
    report = data.report
    assert report.read == LINES
    assert report.kept == len(data) == 2303
    assert report.kept + report.rejected == LINES
    assert all(r.location.startswith(f"{hh_test_path}:") and r.reason in Reason for r in report.rejections)
    assert report.locations(Reason.EMPTY_COMPLETION) == [f"{hh_test_path}:{n}" for n in EMPTY_CHOSEN_LINES]
    assert report.locations(Reason.PROMPT_MISMATCH) == [f"{hh_test_path}:{n}" for n in PROMPT_MISMATCH_LINES]
    assert {r.detail for r in report.rejections if r.reason is Reason.EMPTY_COMPLETION} == {"'chosen' has no text"}
    kept_lines = {int(r.location.rsplit(":", 1)[1]) for r in data}
    assert kept_lines.isdisjoint(EMPTY_CHOSEN_LINES + PROMPT_MISMATCH_LINES) and len(kept_lines) == 2303


def test_records_are_chat_prompts_with_plain_responses(hh_test_path: Path):
    data = load_preferences(hh_test_path)
    first = data[0]
    assert first.location == f"{hh_test_path}:1"
    assert first.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    for record in data:
        assert record.prompt[0]["role"] == "user"
        assert record.chosen == record.chosen.strip() and record.rejected == record.rejected.strip()
        assert record.chosen != record.rejected


def test_inspect_reads_it(hh_test_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["data", "inspect", str(hh_test_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == {"read": LINES, "kept": 2303, "rejected": 9}
    assert {code: entry["count"] for code, entry in summary["rejected_by_reason"].items()} == {
        "prompt_mismatch": 5,
        "empty_completion": 4,
    }
    assert summary["duplicates"] == {"duplicate_pairs": 0, "duplicate_prompts": 2, "repeated_prompts": 2}
