"""The parts of a training step: which items it trains on, this rank's share, the learning-rate schedule, the
optimizer, the running sums between logs, and validation. `prefalign.train.loop` puts them together."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig
from .distributed import DistInfo, reduce_metrics, shard
from .health import DivergenceLimits
from .objectives.base import Objective
from .precision import autocast
from .sparse_rows import AdamWithSparseRows


class DataOrder:
    """Which items step s trains on: batch s mod E of a permutation seeded by (seed, epoch = s div E)."""

    def __init__(self, num_items: int, per_step: int, seed: int):
        self.num_items, self.per_step, self.seed = num_items, per_step, seed
        self.steps_per_epoch = math.ceil(num_items / per_step)  # the last batch of an epoch may be smaller
        self._epoch, self._order = -1, list[int]()
        self.signature = {"items": num_items, "per_step": per_step, "seed": seed}

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, list(range(self.num_items))
            random.Random(f"{self.seed}:{epoch}").shuffle(self._order)  # str seeds hash stably across processes
        return self._order[position * self.per_step : (position + 1) * self.per_step]


def my_share(items: Sequence[Any], info: DistInfo) -> tuple[list[Any], float]:
    """This rank's items and their weight. DDP needs every rank in every step, so a rank left without items (a batch
    smaller than the number of processes) runs the first item with weight 0: it adds nothing to loss or metrics."""
    mine = shard(list(items), info)
    return (mine, 1.0) if mine else (list(items[:1]), 0.0)


def my_batches(items: Sequence[Any], info: DistInfo, batch_size: int) -> list[tuple[list[Any], float]]:
    """This rank's share of `items` (see `my_share`) in batches of `batch_size`, each with its weight. Every rank gets
    as many batches as rank 0 (whose share is the largest): under --fsdp every forward pass gathers weights from all
    ranks, so a rank that ran fewer would leave the others waiting. The extra batches run the first item with weight
    0, adding nothing."""
    if not items:
        return []
    mine, weight = my_share(items, info)
    batches = [(mine[start : start + batch_size], weight) for start in range(0, len(mine), batch_size)]
    most = math.ceil(len(items) / info.world_size)
    batches += [(list(items[:1]), 0.0)] * (max(1, math.ceil(most / batch_size)) - len(batches))
    return batches


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at 0-based step `step`: linear warmup to 1, then linear or cosine decay towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `params`. On CPU and CUDA the fused kernel: one pass over each tensor instead of a dozen
    element-wise ops with their temporaries, so the update is faster and its memory peak lower (same arithmetic).
    A row-sparse gradient (an embedding whose output layer is unused, `sparse_rows`) gets state for its rows only."""
    fused = device.type in ("cpu", "cuda")
    return AdamWithSparseRows(params, lr=config.peak_learning_rate, weight_decay=config.weight_decay, fused=fused)


def add_sums(into: dict[str, torch.Tensor], sums: dict[str, torch.Tensor], weight: float = 1.0) -> None:
    for key, value in sums.items():
        value = value.detach().to(torch.float64) * weight
        into[key] = into[key] + value if key in into else value


@dataclass
class Window:
    """Sums over the steps since the last train log; saved in checkpoints so a resumed run logs the same averages.

    `seconds` counts training steps only (not validation or checkpoint writing), for honest throughput."""

    sums: dict[str, float] = field(default_factory=dict)
    grad_norm_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    def add(self, sums: dict[str, float], grad_norm: float, seconds: float) -> None:
        self.sums = {key: self.sums.get(key, 0.0) + value for key, value in sums.items()}
        self.grad_norm_sum += grad_norm
        self.steps += 1
        self.seconds += seconds

    def step_metrics(self, unit: str, learning_rate: float) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {
            "grad_norm": self.grad_norm_sum / self.steps,
            "learning_rate": learning_rate,
            "tokens_per_second": self.sums["tokens"] / seconds,
            f"{unit}_per_second": self.sums["items"] / seconds,
        }


@dataclass
class PendingCheckpoint:
    """A checkpoint due after `step`, captured then (its trainer state and RNG states) and written once the next
    step's forward pass has shown the weights sound: a checkpoint never holds weights that diverged."""

    step: int
    trainer_state: dict[str, Any]
    rng_states: list[Any]


def set_peak_learning_rate(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, peak: float) -> float | None:
    """Make `peak` the schedule's peak learning rate from the current step on; return the peak it replaces (None when
    it is the same). A resumed checkpoint restores its run's peak, and --learning-rate must still win: lowering it is
    how a run that diverged continues from its last good checkpoint."""
    saved = scheduler.base_lrs[0]
    if math.isclose(saved, peak, rel_tol=1e-12):
        return None
    factors = [lr / base if base else 0.0 for lr, base in zip(scheduler.get_last_lr(), scheduler.base_lrs)]
    scheduler.base_lrs = [peak] * len(scheduler.base_lrs)
    for group, factor in zip(optimizer.param_groups, factors):
        group["initial_lr"], group["lr"] = peak, peak * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return saved


def divergence_limits(config: TrainConfig) -> DivergenceLimits:
    """The --divergence-* options as the health monitor's limits."""
    return DivergenceLimits(
        loss_factor=config.divergence_loss_factor,
        max_kl=config.divergence_max_kl,
        logp_factor=config.divergence_logp_factor,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    objective: Objective,
    items: Sequence[Any],
    batch_size: int,
    info: DistInfo,
    before_training: bool = False,
) -> dict[str, float]:
    """The objective's metrics over all of `items` (sharded across processes), in eval mode. `before_training`: the
    weights are those before the first update, so a batch whose sums the objective knows without a forward pass
    (`Objective.sums_before_training`) is not run."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    for batch, weight in my_batches(items, info, batch_size):
        collated = objective.collate(batch)
        batch_sums = objective.sums_before_training(collated) if before_training else None
        if batch_sums is None:
            with autocast(info.device, objective.config.precision):
                _, batch_sums = objective.loss(model, collated)
        add_sums(sums, batch_sums, weight)
    model.train()
    return objective.metrics({key: float(value) for key, value in reduce_metrics(sums, info).items()})
