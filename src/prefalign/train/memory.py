"""Keeping a training process's resident memory close to what is live (glibc's allocator; no-ops elsewhere).

Full fine-tuning needs fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter; everything above that
is activations and what the allocator holds. These two functions deal with the second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

# glibc keeps blocks below its mmap threshold in heaps it never shrinks by itself (it raises that threshold up to
# 32 MiB as soon as a large block is freed): a step's activations and gradients, freed there, stay resident, and
# the holes between blocks still alive grow RSS from step to step. Measured on SmolLM2-135M full fine-tuning: 0.35 GiB
# more peak RSS than what is live, and +1.8 GiB of RSS after a few steps without trimming.
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
_LEAN_MMAP_THRESHOLD = 1 << 20


@functools.cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def use_lean_allocator() -> None:
    """From now on serve blocks of 1 MiB and more (activations, gradients, logits chunks) with mmap, so that freeing
    one returns it to the OS at once. glibc only (a no-op elsewhere); it holds for the rest of the process."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _LEAN_MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Give the heap memory the process has freed back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Called after setup and after every optimizer step (milliseconds), so RSS between steps is what is live."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
