"""prefalign's own messages to the user: the one way they go out.

Each message is one line on stderr, written through tqdm so that it lands above any progress bar instead of breaking
it, and only by the main process: under torchrun every process runs the same code, and a user wants each line once.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def is_main_process() -> bool:
    """True except in the processes of rank > 0 that torchrun started (it sets RANK in every process it starts)."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str, *, prefix: str = "prefalign: ") -> None:
    """Print `prefix + message` to stderr from the main process only, above any progress bar."""
    if not is_main_process():
        return
    tqdm.write(prefix + message, file=sys.stderr)
    sys.stderr.flush()


def warn(message: str) -> None:
    """`say` a warning: something the user should look at, though the run goes on."""
    say(f"warning: {message}")
