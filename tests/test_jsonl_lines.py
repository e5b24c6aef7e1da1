"""Every reader of JSON Lines (and of one-prompt-per-line text) ends lines at "\\n" only.

`json.dumps(..., ensure_ascii=False)` leaves U+2028, U+2029 and U+0085 unescaped inside strings, and `str.splitlines()`
ends a line at each of them: a reader that used it would cut such a record in two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefalign.data import load_preferences
from prefalign.data.prompt_files import read_prompts
from prefalign.errors import DataError
from prefalign.evaluate.cache import _append, _read
from prefalign.fileio import read_jsonl, write_jsonl_atomic
from prefalign.generate import Generation
from prefalign.pairs.build import _read_existing, read_prompt_records

SEPARATED = "one line\u2028still the same line\u2029and this\x85too"


def test_the_text_really_holds_line_separators() -> None:
    assert len(SEPARATED.splitlines()) == 4 and "\n" not in json.dumps(SEPARATED, ensure_ascii=False)


def test_read_jsonl_keeps_a_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"text": SEPARATED}, {"text": "next"}])
    assert list(read_jsonl(path)) == [(f"{path}:1", {"text": SEPARATED}), (f"{path}:2", {"text": "next"})]


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n\xff\n')
    rows = read_jsonl(path)
    assert next(rows) == (f"{path}:1", {"a": 1})
    with pytest.raises(DataError, match=r"rows.jsonl:3: not valid JSON"):
        next(rows)


def test_preference_data_keeps_a_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(path, [{"prompt": SEPARATED, "chosen": "yes", "rejected": "no"}])
    (record,) = load_preferences(path, strict=True)
    assert record.prompt == SEPARATED


def test_prompt_files_keep_a_prompt_whole(tmp_path: Path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(jsonl, [{"prompt": SEPARATED}, {"prompt": "second"}])
    assert [r["prompt"] for r in read_prompts(jsonl)] == [SEPARATED, "second"]
    text = tmp_path / "prompts.txt"
    text.write_bytes(f"{SEPARATED}\r\n\nsecond\n".encode())
    assert [r["prompt"] for r in read_prompts(text)] == [SEPARATED, "second"]


def test_pairs_build_files_keep_a_record_whole(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, [{"prompt": SEPARATED}])
    assert [(r.id, r.prompt) for r in read_prompt_records(prompts)] == [("line-1", SEPARATED)]
    existing = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(existing, [{"id": "line-1", "chosen": SEPARATED}])
    assert _read_existing(existing, {}) == [{"id": "line-1", "chosen": SEPARATED}]


def test_generation_cache_keeps_an_answer_whole(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    answer = Generation(SEPARATED, [5, 6, 2], "eos", 3)
    _append(path, {"key": answer}, header={"model": "m"})
    assert _read(path) == {"key": answer}
