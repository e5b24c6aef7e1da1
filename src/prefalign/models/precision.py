"""bf16 autocast, the one switch behind every "compute in bf16" setting: training's `--precision` and the
evaluation's `--dtype` for its scoring passes (weights stay as loaded; matmuls run in bf16, reductions in fp32)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def bf16_autocast(enabled: bool, device: torch.device | str) -> AbstractContextManager[object]:
    """bf16 autocast on `device`'s type when `enabled`, else nothing."""
    if not enabled:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
