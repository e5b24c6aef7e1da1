"""The training's `--precision`: where forward and backward compute in bf16 (autocast) and where in fp32."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from ..models.precision import bf16_autocast


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether `--precision` computes in bf16 on `device`: bf16 always does; auto on CUDA only."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str = "auto") -> AbstractContextManager[object]:
    """bf16 autocast (fp32 weights and optimizer, bf16 matmuls) where `uses_bf16`; plain fp32 otherwise.

    On a CPU with AVX512-BF16 or AMX, bf16 matmuls run faster than fp32 ones, so `--precision bf16` pays there too;
    on other CPUs they are slower, which is why auto keeps a CPU in fp32.
    """
    return bf16_autocast(uses_bf16(device, precision), device)
