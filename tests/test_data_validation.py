"""Rejections: every reason named with its exact location; the bad-fraction threshold and strict mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefalign.data import Reason, load_preferences
from prefalign.errors import DataError, PrefalignError

DATA = Path(__file__).parent / "fixtures" / "data"
BAD = DATA / "bad_records.jsonl"

# Line of bad_records.jsonl -> (reason, detail). Lines 1 and 16 are good, line 15 is blank (not a record).
EXPECTED_REJECTIONS = {
    2: (Reason.INVALID_JSON, "Expecting property name enclosed in double quotes at column 40"),
    3: (Reason.MISSING_FIELD, "'rejected'"),
    4: (Reason.WRONG_TYPE, "'chosen' is a number, expected a string"),
    5: (Reason.BAD_MESSAGE, "message 2 of 'rejected' has no role"),
    6: (Reason.BAD_MESSAGE, "message 1 of 'prompt' has unknown role 'narrator' (known: system, user, assistant)"),
    7: (Reason.EMPTY_PROMPT, "the prompt has no text"),
    8: (Reason.EMPTY_COMPLETION, "'chosen' has no text"),
    9: (Reason.IDENTICAL_COMPLETIONS, "nothing to prefer"),
    10: (Reason.PROMPT_MISMATCH, "the dialogues differ at character 10, before their last Assistant turn"),
    11: (Reason.MISSING_FINAL_TURN, "'chosen' ends with a Human turn"),
    12: (Reason.MISSING_FINAL_TURN, "'chosen' has no Assistant turn"),
    13: (Reason.PROMPT_MISMATCH, "the conversations differ from their first message on"),
    14: (Reason.WRONG_TYPE, "the record is a list, expected an object"),
}


def test_every_rejection_names_its_line_and_reason():
    data = load_preferences(BAD, max_bad_fraction=None)
    found = {int(r.location.rsplit(":", 1)[1]): (r.reason, r.detail) for r in data.report.rejections}
    assert found == EXPECTED_REJECTIONS
    assert all(r.location.startswith(f"{BAD}:") for r in data.report.rejections)
    assert [r.location for r in data] == [f"{BAD}:1", f"{BAD}:16"]
    assert (data.report.read, data.report.kept, data.report.rejected) == (15, 2, 13)
    assert repr(data) == f"PreferenceData(2 records from {BAD}; 13 of 15 rejected)"


def test_report_counts_by_reason_and_lists_locations_in_file_order():
    report = load_preferences(BAD, max_bad_fraction=None).report
    counts = report.count_by_reason()
    assert counts[Reason.BAD_MESSAGE] == 2 and counts[Reason.PROMPT_MISMATCH] == 2 and counts[Reason.EMPTY_PROMPT] == 1
    assert sum(counts.values()) == 13
    assert set(counts) == set(Reason)  # the fixture exercises every reason
    assert report.locations(Reason.PROMPT_MISMATCH) == [f"{BAD}:10", f"{BAD}:13"]
    assert report.locations(Reason.MISSING_FINAL_TURN, limit=1) == [f"{BAD}:11"]


def test_a_rejection_reads_as_one_line():
    report = load_preferences(BAD, max_bad_fraction=None).report
    assert str(report.rejections[1]) == f"{BAD}:3: missing field: 'rejected'"
    assert str(report.rejections[7]) == f"{BAD}:9: chosen identical to rejected: nothing to prefer"
    assert all("\n" not in str(r) for r in report.rejections)


def test_too_many_bad_records_raise_one_line_naming_the_first():
    with pytest.raises(PrefalignError) as caught:
        load_preferences(BAD)
    assert str(caught.value) == (
        f"{BAD}: 13 of 15 records are bad (86.7%), more than the allowed 5.0% (--max-bad-fraction); "
        f"first: {BAD}:2: not valid JSON: Expecting property name enclosed in double quotes at column 40"
    )


def test_threshold_is_a_fraction_of_records_read():
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(19)]
    rows.append({"prompt": "q", "chosen": "same", "rejected": "same"})  # 1 of 20 = 5%: at the limit, allowed
    data = load_preferences(rows)
    assert (len(data), data.report.rejected) == (19, 1)
    too_many = r"^records: 1 of 20 records are bad \(5\.0%\), more than the allowed 4\.0%"
    with pytest.raises(PrefalignError, match=too_many):
        load_preferences(rows, max_bad_fraction=0.04)
    assert len(load_preferences(rows[-1:] * 3, max_bad_fraction=None)) == 0


def test_strict_raises_at_the_first_bad_record():
    with pytest.raises(DataError) as caught:
        load_preferences(BAD, strict=True)
    reason = "not valid JSON: Expecting property name enclosed in double quotes at column 40"
    assert (caught.value.location, caught.value.reason) == (f"{BAD}:2", reason)
    assert str(caught.value) == f"{BAD}:2: {reason}"


def test_strict_passes_clean_data():
    assert len(load_preferences(DATA / "conversational.jsonl", strict=True)) == 3
