"""Every source type yields the same records, each located where a person can find it; unreadable sources fail in
one line."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefalign.data import Reason, load_preferences
from prefalign.errors import PrefalignError

# The second record's chosen spans two lines (in a CSV cell too); the third is bad (empty chosen).
ROWS = [
    {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No.", "id": "a"},
    {"prompt": "Name a colour.", "chosen": "Blue.\nOr green.", "rejected": "Seven.", "id": "b"},
    {"prompt": "Say hi.", "chosen": "", "rejected": "Bye.", "id": "c"},
    {"prompt": "Count to two.", "chosen": "One, two.", "rejected": "Two.", "id": "d"},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_json_list(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_json_lines_named_json(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.json"
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = path / "pairs.csv"
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dataset_dir(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path / "saved"))
    return path / "saved"


def write_dataset_dict_dir(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    splits = {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    datasets.DatasetDict(splits).save_to_disk(str(path / "saved"))
    return path / "saved"


def in_memory_dataset(path: Path, rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def in_memory_list(path: Path, rows: list[dict[str, Any]]) -> Any:
    return rows


# (writer, where the first record is, where the bad third record is); "{p}" is the written path.
SOURCES: list[tuple[Callable[[Path, list[dict[str, Any]]], Any], str, str]] = [
    (write_jsonl, "{p}:1", "{p}:3"),
    (write_jsonl_gz, "{p}:1", "{p}:3"),
    (write_json_list, "{p}:row 0", "{p}:row 2"),
    (write_json_lines_named_json, "{p}:1", "{p}:3"),
    (write_parquet, "{p}:row 0", "{p}:row 2"),
    (write_csv, "{p}:2", "{p}:5"),  # header on line 1; the second record's cell spans lines 3-4
    (write_dataset_dir, "{p}:row 0", "{p}:row 2"),
    (write_dataset_dict_dir, "{p}[train]:row 0", "{p}[train]:row 2"),
    (in_memory_dataset, "row 0", "row 2"),
    (in_memory_list, "row 0", "row 2"),
]


@pytest.mark.parametrize(("write", "first", "bad"), SOURCES, ids=[s[0].__name__ for s in SOURCES])
def test_every_source_type_gives_the_same_records(tmp_path: Path, write: Callable, first: str, bad: str):
    source = write(tmp_path, ROWS)
    data = load_preferences(source, max_bad_fraction=0.5)
    expected = [ROWS[0], ROWS[1], ROWS[3]]
    assert [(r.prompt, r.chosen, r.rejected, r.extra) for r in data] == [
        (row["prompt"], row["chosen"], row["rejected"], {"id": row["id"]}) for row in expected
    ]
    (rejection,) = data.report.rejections
    assert data.records[0].location == first.format(p=source)
    assert (rejection.location, rejection.reason) == (bad.format(p=source), Reason.EMPTY_COMPLETION)
    assert (data.report.read, data.report.kept, data.report.rejected) == (4, 3, 1)


def test_conversational_records_through_parquet_and_a_saved_dataset(tmp_path: Path):
    rows = [
        {
            "prompt": "Why is the sky blue?",
            "chosen": [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Air."}],
            "rejected": [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Sea."}],
            "score_chosen": 9.0,
        }
    ]
    for source in (write_parquet(tmp_path, rows), write_dataset_dir(tmp_path, rows)):
        (record,) = load_preferences(source).records
        assert record.prompt == [{"role": "user", "content": "Why is the sky blue?"}]
        assert record.chosen == [{"role": "assistant", "content": "Air."}]
        assert record.extra == {"score_chosen": 9.0}


def test_hh_dialogues_from_csv(tmp_path: Path):
    rows = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}]
    (record,) = load_preferences(write_csv(tmp_path, rows)).records
    assert (record.prompt, record.chosen, record.rejected) == ([{"role": "user", "content": "Hi"}], "Hello", "Go")


def test_dataset_dict_splits(tmp_path: Path):
    import datasets

    source = write_dataset_dict_dir(tmp_path, ROWS)
    (only,) = load_preferences(source, split="test").records
    assert only.location == f"{source}[test]:row 0"
    with pytest.raises(PrefalignError, match=r"no split 'dev'; it has (train, test|test, train)$"):
        load_preferences(source, split="dev")

    one_row = datasets.Dataset.from_list(ROWS[:1])
    no_train = datasets.DatasetDict({"a": one_row, "b": one_row})
    with pytest.raises(PrefalignError, match=r"has splits a, b and none is 'train'; pick one with split \(--split\)$"):
        load_preferences(no_train)
    assert load_preferences(no_train, split="b").records[0].location == "dataset[b]:row 0"
    single = datasets.DatasetDict({"validation": datasets.Dataset.from_list(ROWS[:1])})
    assert load_preferences(single).records[0].location == "dataset[validation]:row 0"


def test_split_is_refused_for_a_plain_file(tmp_path: Path):
    source = write_jsonl(tmp_path, ROWS[:1])
    with pytest.raises(PrefalignError, match=r"split='test' only applies to a `datasets` DatasetDict"):
        load_preferences(source, split="test")


def test_byte_order_mark_and_blank_lines_are_not_records(tmp_path: Path):
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n\n   \n" + json.dumps(ROWS[3]).encode())
    data = load_preferences(source)
    assert [r.location for r in data] == [f"{source}:1", f"{source}:4"]
    assert data.report.read == 2


def test_a_line_that_is_not_utf8_is_rejected_with_its_line(tmp_path: Path):
    source = tmp_path / "latin1.jsonl"
    source.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1") + b"\n")
    data = load_preferences(source, max_bad_fraction=None)
    (rejection,) = data.report.rejections
    assert str(rejection) == f"{source}:2: not valid JSON: not UTF-8 text at byte offset 15"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, r"missing\.jsonl: no such file$"),
        ("pairs.txt", b"{}", r"pairs\.txt: unknown file type; expected \.jsonl, \.jsonl\.gz, \.json, "),
        ("empty.jsonl", b"", r"empty\.jsonl: no records \(the source is empty\)$"),
        ("blank.jsonl", b"\n  \n\n", r"blank\.jsonl: no records \(the source is empty\)$"),
        ("empty.json", b"[]", r"empty\.json: no records \(the source is empty\)$"),
        ("broken.json", b'[\n  {"prompt": "a",\n  oops\n]', r"broken\.json:3: not valid JSON: Expecting property name"),
        ("scalar.json", b"42", r"scalar\.json: expected a list of records or JSON Lines, found a single JSON value$"),
        ("fake.jsonl.gz", b"not gzip at all", r"fake\.jsonl\.gz: not a readable gzip file"),
        ("fake.parquet", b"not parquet", r"fake\.parquet: not a readable Parquet file"),
        ("empty.csv", b"", r"empty\.csv: no records \(the source is empty\)$"),
    ],
)
def test_unreadable_sources_fail_in_one_line(tmp_path: Path, name: str, content: bytes | None, message: str):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PrefalignError, match=message) as caught:
        load_preferences(path)
    assert "\n" not in str(caught.value)


def test_truncated_gzip_fails_in_one_line(tmp_path: Path):
    whole = write_jsonl_gz(tmp_path, ROWS * 50).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PrefalignError, match=r"cut\.jsonl\.gz: not a readable gzip file"):
        load_preferences(cut)


def test_a_directory_that_is_not_a_saved_dataset(tmp_path: Path):
    with pytest.raises(PrefalignError, match=r"a directory, but not one saved by `datasets` save_to_disk"):
        load_preferences(tmp_path)


def test_unknown_format_and_source_type():
    with pytest.raises(PrefalignError, match=r"unknown data format 'yaml'; expected one of auto, hh, explicit"):
        load_preferences([ROWS[0]], format="yaml")
    with pytest.raises(PrefalignError, match=r"cannot read preference data from int"):
        load_preferences(3)
