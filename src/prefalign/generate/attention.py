"""Attention for bfloat16 decoding on a CPU: SDPA computed in fp32.

On a CPU with native bf16 matmuls the linear layers run about twice as fast in bf16, but PyTorch's CPU SDPA kernel is
several times slower in bf16 than in fp32 for a one-token query, which takes the gain back. So a bf16 model on a CPU
generates with `UPCAST_SDPA`: the projections stay bf16, the KV cache is kept in fp32 (`SlotCache(dtype=...)`), and
attention upcasts the (one-token) queries and runs SDPA in fp32, the output going back to bf16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

UPCAST_SDPA = "prefalign_fp32_sdpa"
_SDPA_LIKE = ("sdpa", "prefalign_pairs")  # pair attention is plain SDPA for calls without spans, like these


def upcast_sdpa(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, in fp32."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def needs_upcast(model: torch.nn.Module) -> bool:
    """A bf16 model on a CPU whose attention is SDPA."""
    config = getattr(model, "config", None)
    return (
        model.device.type == "cpu"
        and model.dtype == torch.bfloat16
        and getattr(config, "_attn_implementation", None) in (*_SDPA_LIKE, UPCAST_SDPA)
    )


@contextmanager
def upcast_attention(model: torch.nn.Module | None) -> Iterator[None]:
    """Within the block, `model` (when `needs_upcast`) attends with `UPCAST_SDPA`; its setting is restored after."""
    if model is None or not needs_upcast(model):
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(UPCAST_SDPA, upcast_sdpa)
    AttentionMaskInterface.register(UPCAST_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config = model.config
    saved, config._attn_implementation = config._attn_implementation, UPCAST_SDPA
    try:
        yield
    finally:
        config._attn_implementation = saved
