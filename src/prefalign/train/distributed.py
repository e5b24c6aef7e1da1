"""Running under `torchrun`: process group, device per rank, data sharding and metric reduction.

Launched plainly, everything here degrades to one process: rank 0 of 1, no process group, reductions are no-ops.
Under `torchrun --nproc-per-node N`, RANK / WORLD_SIZE / LOCAL_RANK come from the environment and the process group
uses gloo on CPU and NCCL on CUDA (one GPU per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import PrefalignError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool  # rank 0: the one process that writes files and prints

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(*, device_type: str | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); otherwise describe one process.

    `device_type` ("cpu" or "cuda") overrides the default: CUDA when available, else CPU.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type not in ("cpu", "cuda"):
        raise PrefalignError(f"device {device_type!r} is not supported; use 'cpu' or 'cuda'")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise PrefalignError("CUDA was asked for, but torch sees no GPU")

    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo(0, 1, 0, torch.device(device_type), True)
    if "RANK" not in os.environ:
        raise PrefalignError(f"WORLD_SIZE={world_size} but RANK is not set; launch with torchrun")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)

    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PrefalignError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "use --nproc-per-node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if device.type == "cuda":
            # device_id binds the NCCL communicator to this rank's GPU up front (no guessing in the first collective).
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank, world_size, local_rank, device, rank == 0)


def shard(items: list[T], info: DistInfo) -> list[T]:
    """This rank's share of a global batch: items rank, rank + world_size, rank + 2 * world_size, ...

    Deterministic, and across ranks every item is taken exactly once. Strided rather than contiguous so that a batch
    sorted by length gives every rank similar lengths (ranks wait for the slowest one). When len(items) is not a
    multiple of world_size, the first len(items) % world_size ranks get one item more; a rank gets nothing when the
    batch is smaller than world_size. So that the gradient equals the single-process one, the loop weighs each rank's
    loss by its share of the global count (DDP averages gradients over ranks, it does not count items).
    """
    return items[info.rank :: info.world_size]


def reduce_metrics(sums: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Sum each tensor over all ranks (one all_reduce); unchanged when there is one process.

    Pass sums and counts (e.g. loss summed over pairs, and the number of pairs), not means, and divide after. Every rank
    must pass the same keys with the same shapes. Results keep each input's dtype and device.
    """
    if not info.is_distributed or not sums:
        return sums
    keys = sorted(sums)  # the same order on every rank, whatever order each built its dict in
    # float64 holds token counts exactly (up to 2**53) and keeps sums of many small losses precise.
    flat = torch.cat([sums[key].detach().reshape(-1).to(info.device, torch.float64) for key in keys])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    reduced, offset = {}, 0
    for key in keys:
        original = sums[key]
        values = flat[offset : offset + original.numel()].reshape(original.shape)
        reduced[key] = values.to(original.device, original.dtype)
        offset += original.numel()
    return reduced


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. while rank 0 writes a checkpoint the others will read); no-op for one process."""
    if info.is_distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group, if this run joined one."""
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise PrefalignError(f"environment variable {name}={value!r} is not an integer") from None
