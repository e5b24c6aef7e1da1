"""`--fsdp`: the policy's parameters, gradients and optimizer state sharded across processes with PyTorch's FSDP2.

`fully_shard` goes on every decoder layer, then on the whole model (the root keeps what is left: embeddings, final
norm, output head, a reward model's head). Each process then holds 1/N of every weight, of its gradient and of
AdamW's two moments; a layer's full weights exist only while that layer runs (all-gathered before its forward and
again before its backward, freed after), and gradients are reduce-scattered back into shards. Gradients are averaged
over processes as DDP does, so the loop's loss scaling (see `prefalign.train.loop`) gives the same update.

The modules keep their class and names (FSDP2 swaps in a subclass and makes each parameter a DTensor), so everything
that finds a model's head, its adapter or its attention implementation works as before. Every process must run the
same number of forward passes (each one all-gathers): `prefalign.train.steps` gives every rank the same number of
micro-batches, weight 0 where a rank has no items left.

On CUDA a mixed-precision policy computes in bf16 and reduces gradients in fp32; the sharded master weights and the
optimizer stay fp32. On CPU (gloo) everything is fp32, which is what the tests compare with a single process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..errors import PrefalignError
from .distributed import DistInfo
from .memory import decoder_layers
from .precision import uses_bf16


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is an FSDP2 root (`shard_model` was applied to it)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, info: DistInfo, precision: str = "auto") -> None:
    """Shard `model` in place across the processes of `info`: per decoder layer, then the rest at the root; gathered
    weights in bf16 where `--precision` computes in bf16 (gradients are reduced in fp32 either way)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise PrefalignError(f"--fsdp: {type(model).__name__} has no transformers decoder layers to shard")
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    policy = MixedPrecisionPolicy()  # fp32 throughout
    if uses_bf16(info.device, precision):
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # FSDP2 warns that in-place ops on a view it returns would skip its hooks; prefalign only reads model outputs.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    # The root's weights stay gathered from its forward to its backward (FSDP2's default for the root), which the
    # output head needs: `prefalign.scoring` runs it on the final hidden states after the forward call returns.
    fully_shard(model, mesh=mesh, mp_policy=policy)


def gradient_sync(train_model: torch.nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """A context for one micro-batch's forward and backward: gradients are synchronised across processes only when
    `sync` (the step's last micro-batch); before that DDP and FSDP2 accumulate locally."""
    if sync:
        return nullcontext()
    if isinstance(train_model, DistributedDataParallel):
        return train_model.no_sync()
    if is_sharded(train_model):
        return _fsdp_no_sync(train_model)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (every process must call this: it is a collective); any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sharded `model`'s whole state dict, gathered on rank 0 into CPU memory (empty on other ranks; every rank
    must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
