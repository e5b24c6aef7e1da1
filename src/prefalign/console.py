"""prefalign's own messages to the user: the one way they go out, at the verbosity the user chose.

Each message is one line on stderr, written through tqdm so that it lands above any progress bar instead of breaking
it, and only by the main process: under torchrun every process runs the same code, and a user wants each line once.

Verbosity (`prefalign --quiet` / `--verbose`, set by the command line through `verbosity_scope`): QUIET prints
warnings, errors and a command's result only (no info lines, no progress bars, library messages from errors up);
NORMAL adds our info lines and our progress bars; VERBOSE adds the libraries' own info messages and progress bars
(transformers' "Loading weights", for one), which are hidden otherwise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

QUIET, NORMAL, VERBOSE = 0, 1, 2
_verbosity = NORMAL


def verbosity() -> int:
    """The current level: QUIET, NORMAL or VERBOSE."""
    return _verbosity


def is_main_process() -> bool:
    """True except in the processes of rank > 0 that torchrun started (it sets RANK in every process it starts)."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str, *, prefix: str = "prefalign: ", level: int = NORMAL) -> None:
    """Print `prefix + message` to stderr from the main process only, above any progress bar.

    The line is shown when the verbosity is at least `level`: NORMAL for information (hidden by --quiet), VERBOSE for
    details only --verbose wants, QUIET for what must always show.
    """
    if not is_main_process() or _verbosity < level:
        return
    tqdm.write(prefix + message, file=sys.stderr)
    sys.stderr.flush()


def warn(message: str) -> None:
    """`say` a warning: something the user should look at, though the run goes on. Shown even with --quiet."""
    say(f"warning: {message}", level=QUIET)


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr for our own progress: hidden with --quiet, in processes of rank > 0, or when `disable`."""
    hidden = kwargs.pop("disable", False) or _verbosity < NORMAL or not is_main_process()
    return tqdm(disable=hidden, file=sys.stderr, **kwargs)


def _library_log_level(level: int) -> int | None:
    """The transformers log level for our verbosity `level`; None leaves the library's default (warnings up)."""
    import logging

    return {QUIET: logging.ERROR, VERBOSE: logging.INFO}.get(level)


@contextmanager
def verbosity_scope(level: int) -> Iterator[None]:
    """Run the block at verbosity `level` (ours and transformers' log level), restoring both after it."""
    global _verbosity
    previous, _verbosity = _verbosity, level
    library_level = _library_log_level(level)
    restore_library = None
    if library_level is not None:
        # Imported only when a level other than the default asks for it, so `prefalign --help` stays instant.
        from transformers.utils import logging as hf_logging

        restore_library = hf_logging.get_verbosity()
        hf_logging.set_verbosity(library_level)
    try:
        yield
    finally:
        _verbosity = previous
        if restore_library is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(restore_library)


@contextmanager
def library_progress_hidden() -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights", "Writing model shards") inside the block.

    They say nothing a user acts on, one per model load; --verbose shows them. Scoped to the block so that it changes
    nothing for code around ours; the hub's download bars are left alone.
    """
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5.x; older ones keep their bars
    if _verbosity >= VERBOSE or set_hook is None:
        yield
        return

    def hidden(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    previous = set_hook(hidden)
    try:
        yield
    finally:
        set_hook(previous)
