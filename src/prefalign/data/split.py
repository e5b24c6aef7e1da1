"""The one held-out split: a seeded random subset of items set aside for validation, the rest kept in order."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import TypeVar

from ..errors import PrefalignError

T = TypeVar("T")


def split_heldout(
    items: Sequence[T], fraction: float, seed: Hashable, *, minimum: int = 1, what: str = "items"
) -> tuple[list[T], list[T]]:
    """(train, held_out): round(fraction * len(items)) items, at least `minimum`, drawn by a shuffle seeded with
    `seed` (an int or a string: `random.Random` hashes strings stably across processes and runs); both lists keep
    the items' original order. fraction <= 0 holds nothing out. Raises PrefalignError when nothing would be left to
    train on."""
    if fraction <= 0:
        return list(items), []
    held_count = max(minimum, round(fraction * len(items)))
    if held_count >= len(items):
        raise PrefalignError(
            f"holding out {held_count} of {len(items)} {what} (fraction {fraction}) leaves nothing to train on"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:held_count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
