"""What a user sees on the terminal: our own lines and progress bars, no library warnings our calls cause, and
--quiet / --verbose doing what they say. Runs the tiny model through `prefalign.cli.main` as the demo does."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefalign import console
from prefalign.cli import main
from prefalign.train.config import DPOConfig
from test_train_support import (
    config_options,
    quiet,
    single_thread,  # noqa: F401  (an autouse fixture: importing it applies it here)
    write_pairs,
)

# What library noise looks like on stderr: Python warnings, transformers' log lines, its deprecation notices.
NOISE = re.compile(r"Warning|deprecated|\[transformers\]")


@pytest.fixture
def library_records() -> Iterator[list[logging.LogRecord]]:
    """transformers' log records of warning level and up, emitted during the test.

    transformers logs through its own handler (not propagated to pytest's caplog) and prints many warnings only
    once per process (`warning_once` is an lru_cache): the cache is cleared first so an earlier test cannot hide one.
    """
    once = getattr(logging.Logger, "warning_once", None)
    if once is not None and hasattr(once, "cache_clear"):
        once.cache_clear()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]  # a collecting handler needs no subclass
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    yield records
    library.removeHandler(handler)


def _library_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, Warning)]


def _generate(model: Path, *options: str) -> int:
    return main([*options, "generate", "--model", str(model), "--prompt", "Hi there", "--max-new-tokens", "4"])


def test_generate_prints_no_library_warning_or_loading_bar(
    tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], library_records: list[logging.LogRecord]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _generate(tiny_model_dir) == 0
    err = capfd.readouterr().err
    assert not _library_warnings(caught)  # e.g. FutureWarning: `past_key_values` is deprecated
    assert not [record.getMessage() for record in library_records]
    assert not NOISE.search(err), err
    assert "Loading weights" not in err  # transformers' bar, one per model load: --verbose only
    assert "generating" in err  # our own progress bar stays


def test_a_short_dpo_run_prints_no_library_warning(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], library_records: list[logging.LogRecord]
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    options = quiet(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "run"), max_steps=2)
    config = DPOConfig(**{**options, "progress": True, "plots": True, "logging_steps": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["dpo", *config_options(config)]) == 0
    err = capfd.readouterr().err
    assert not _library_warnings(caught)
    assert not [record.getMessage() for record in library_records]
    assert not NOISE.search(err), err
    assert "Loading weights" not in err
    assert "prefalign: final model in" in err


def test_quiet_prints_the_result_only(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tiny_model_dir, "--quiet") == 0
    out, err = capsys.readouterr()
    assert err == ""  # no info line, no progress bar
    assert out.endswith("\n")  # the answer is still printed
    assert console.verbosity() == console.NORMAL  # restored for whatever runs next in this process


def test_quiet_after_the_command_and_still_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    with console.verbosity_scope(console.QUIET):
        console.say("an info line")
        console.warn("something to look at")
        with console.progress_bar(total=2, desc="hidden") as bar:
            bar.update(2)
    err = capsys.readouterr().err
    assert err == "prefalign: warning: something to look at\n"


def test_verbose_shows_library_progress_and_info(tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    infos: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = infos.append  # type: ignore[method-assign]  # a collecting handler needs no subclass
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        assert _generate(tiny_model_dir) == 0
        assert infos == []  # by default transformers says only warnings
        assert _generate(tiny_model_dir, "--verbose") == 0
    finally:
        library.removeHandler(handler)
    err = capfd.readouterr().err
    assert "Loading weights" in err  # transformers' own bar, shown with --verbose only
    assert [record for record in infos if record.levelno == logging.INFO]  # its info messages too
    assert hf_logging.get_verbosity() == before  # restored after the command


def test_verbosity_options_parse_before_and_after_the_command() -> None:
    from prefalign.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-q", "models", "list"]).verbosity == console.QUIET
    assert parser.parse_args(["models", "list", "--verbose"]).verbosity == console.VERBOSE
    assert parser.parse_args(["models", "list"]).verbosity == console.NORMAL
    with pytest.raises(SystemExit):
        parser.parse_args(["--quiet", "--verbose", "models", "list"])
