"""Keeping a training process's resident memory close to what is live (glibc's allocator; no-ops elsewhere).

Full fine-tuning needs fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter; everything above that
is activations and what the allocator holds. The functions here deal with the second.

glibc keeps freed heap memory resident, and the holes between blocks still alive grow the heap during a step. Trimming
(`malloc_trim`, milliseconds) hands every free page back. After every optimizer step that keeps RSS between steps at
what is live; `trim_in_backward` also trims after the forward pass and every few decoder layers of the backward pass,
so the peak, at the end of backward when all gradients exist, carries no forward-pass leftovers either. (Serving every
block of 1 MiB or more with mmap gives the same peak, but pays page faults for every activation: a slower step.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import Any

import torch


@functools.cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Give the heap memory the process has freed back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Called after setup and after every optimizer step (milliseconds), so RSS between steps is what is live."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks, in order: transformers' checkpointable layers (any wrapper around them)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def trim_in_backward(model: torch.nn.Module, every: int) -> list[Any]:
    """Trim the heap when the backward pass reaches every `every`-th decoder layer (a gradient hook on that layer's
    output, registered as the forward pass goes by). Returns the forward-hook handles (`.remove()` undoes it)."""

    def on_forward(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if torch.is_grad_enabled() and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(_trim_and_pass)

    layers = decoder_layers(model)
    return [layer.register_forward_hook(on_forward) for layer in layers[every - 1 :: every]]


def _trim_and_pass(_grad: torch.Tensor) -> None:
    release_free_memory()  # the gradient itself goes on unchanged (the hook returns None)


@dataclass(frozen=True)
class StateBytes:
    """What one process holds of the training state, in bytes: its local shards under --fsdp, everything otherwise.

    `gradients` and `optimizer` are what the trainable parameters take once the first step has run (AdamW keeps two
    moments of each parameter's shape and dtype, and one fp32 step count per parameter tensor); DDP holds another
    gradient-sized set of communication buckets besides, not counted here. `sparse_rows`: the bytes of the trained
    embedding whose gradient and moments exist for the rows it trains only (`train.sparse_rows`), counted in neither."""

    parameters: int
    gradients: int
    optimizer: int
    sparse_rows: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    def describe(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients), ("AdamW state", self.optimizer)]
        text = ", ".join(f"{name} {_mib(size)}" for name, size in parts) + f" ({_mib(self.total)} in all)"
        if self.sparse_rows:
            text += f"; the embedding ({_mib(self.sparse_rows)}) has gradient and AdamW state for the rows it trains"
        return text


def training_state_bytes(model: torch.nn.Module) -> StateBytes:
    """This process's parameter, gradient and AdamW bytes for training `model` (see `StateBytes`)."""
    by_rows = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}
    parameters = trainable = tensors = sparse_rows = 0
    for param in model.parameters():  # tied weights are listed once
        size = _local_bytes(param)
        parameters += size
        if param.requires_grad and id(param) in by_rows:
            sparse_rows += size
        elif param.requires_grad:
            trainable += size
            tensors += 1
    return StateBytes(parameters, trainable, 2 * trainable + 4 * tensors, sparse_rows)


def _local_bytes(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
