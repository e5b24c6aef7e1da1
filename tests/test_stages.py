"""Resumable stages: skipped when unchanged, rerun when settings change, nothing half-written after a failure."""

from __future__ import annotations

import json

import pytest

from prefalign.fileio import file_digest
from prefalign.stages import run_stage


def _writer(text: str, calls: list[str]):
    def body(work):
        calls.append(text)
        (work / "out.txt").write_text(text)

    return body


def test_skipped_when_settings_unchanged(tmp_path, capsys) -> None:
    calls: list[str] = []
    first = run_stage("s", tmp_path / "s", {"a": 1}, _writer("one", calls))
    # The body works in s.partial; the closing line names where its output ends up.
    assert f"[s] done in 0 s: {tmp_path / 's'}" in capsys.readouterr().err
    second = run_stage("s", tmp_path / "s", {"a": 1}, _writer("two", calls))
    assert not first.skipped and second.skipped
    assert calls == ["one"]
    assert (tmp_path / "s" / "out.txt").read_text() == "one"
    assert json.loads((tmp_path / "s" / "stage.json").read_text())["settings"] == {"a": 1}


def test_rerun_when_settings_change_or_forced(tmp_path) -> None:
    calls: list[str] = []
    run_stage("s", tmp_path / "s", {"a": 1}, _writer("one", calls))
    run_stage("s", tmp_path / "s", {"a": 2}, _writer("two", calls))
    run_stage("s", tmp_path / "s", {"a": 2}, _writer("three", calls), force=True)
    assert calls == ["one", "two", "three"]
    assert (tmp_path / "s" / "out.txt").read_text() == "three"


def test_failure_keeps_previous_result_and_leaves_no_partial_result(tmp_path) -> None:
    run_stage("s", tmp_path / "s", {"a": 1}, _writer("good", []))

    def broken(work):
        (work / "out.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("s", tmp_path / "s", {"a": 2}, broken)
    assert (tmp_path / "s" / "out.txt").read_text() == "good"
    # The next run clears the partial directory and completes.
    result = run_stage("s", tmp_path / "s", {"a": 2}, _writer("new", []))
    assert not result.skipped and (tmp_path / "s" / "out.txt").read_text() == "new"
    assert not (tmp_path / "s.partial").exists()


def test_file_digest_tracks_content_and_names(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    before = file_digest(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("y")
    assert file_digest(tmp_path / "d") != before
    (tmp_path / "d" / "a.txt").rename(tmp_path / "d" / "b.txt")
    (tmp_path / "d" / "b.txt").write_text("x")
    assert file_digest(tmp_path / "d") != before
