"""Evaluation: several models on the same prompts, scored, compared, and reported with 95% intervals.

`run_evaluation(EvalConfig(...))` does it all (the `prefalign eval` command is a thin layer over it) and returns an
`EvalReport`; `key_deltas(report)` gives each model's changes over its baseline as data. Importing this package is
light; the work imports torch when it runs.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "EvalConfig": ".config",
    "run_evaluation": ".run",
    "EvalReport": ".results",
    "key_deltas": ".results",
    "Estimate": ".stats",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
