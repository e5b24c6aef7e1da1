"""Setting up a training run: seed, data, model, LoRA, objective, optimizer, schedule, resume and logger, gathered in
one `Run` that `prefalign.train.loop` steps through and closes."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from ..console import say, warn
from ..data.split import split_heldout
from ..errors import PrefalignError
from ..models.loading import load_model, load_tokenizer
from ..models.lora import apply_lora
from ..scoring import prefix_cache
from ..scoring.run import unwrap
from .checkpoint import resumable_checkpoint
from .config import TrainConfig
from .distributed import DistInfo
from .health import HealthMonitor, truncation_warning
from .memory import release_free_memory, training_state_bytes, trim_in_backward
from .metrics import MetricsLogger, progress_bar
from .objectives.base import Objective
from .run_files import check_output_dir, write_run_info
from .sharded_checkpoint import load_run_checkpoint
from .sharding import shard_model
from .steps import (
    DataOrder,
    PendingCheckpoint,
    Window,
    divergence_limits,
    lr_factor,
    make_optimizer,
    set_peak_learning_rate,
)
from .trackers import make_trackers

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..data.tokenize import TruncationReport


@dataclass
class Run:
    """One training run from setup to the end: what it trains, with what, where it is, and what it has logged."""

    config: TrainConfig
    objective: Objective
    info: DistInfo
    out: Path
    tokenizer: Any
    reports: dict[str, TruncationReport]  # per data source: what tokenization cut
    train_items: list[Any]
    eval_items: list[Any]
    model: torch.nn.Module  # the policy, unwrapped (under --fsdp, sharded in place)
    ddp: DistributedDataParallel | None  # the policy wrapped for multi-process runs
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    order: DataOrder
    total_steps: int
    start_step: int  # the last step done: 0, or the resumed checkpoint's
    resumed_from: str | None
    logger: MetricsLogger
    bar: tqdm
    trim_hooks: list[Any]  # removed by close()
    warnings: list[str]  # every warning said, for the summary
    started: float  # time.perf_counter() at setup
    window: Window  # sums since the last train log
    health: HealthMonitor = field(default_factory=HealthMonitor)
    last: dict[str, dict[str, float]] = field(default_factory=dict)  # the last metrics logged, by split
    pending: PendingCheckpoint | None = None  # the checkpoint of the last step, written once the next one checks it

    @property
    def train_model(self) -> torch.nn.Module:
        """What the forward pass runs: the DDP wrapper in multi-process runs (it synchronises gradients); under --fsdp
        the sharded model itself."""
        return self.ddp if self.ddp is not None else self.model

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The parameters being trained (the optimizer's), whose gradient norm is clipped."""
        return trainable_params(self.model)

    def close(self) -> None:
        """Close the progress bar and the metrics files, and take the heap-trimming hooks off the model."""
        self.bar.close()
        self.logger.close()
        for hook in self.trim_hooks:
            hook.remove()


def setup_run(config: TrainConfig, objective: Objective, info: DistInfo) -> Run:
    """Everything before the first step: data, model, objective, optimizer, schedule, and a checkpoint to resume."""
    started = time.perf_counter()
    out = Path(config.output_dir)
    check_output_dir(out, config.resume)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # LoRA's initial A matrices, dropout
    tokenizer = load_tokenizer(config.model)
    items, reports, warnings = load_data(config, objective, tokenizer)
    model = build_model(config, objective, info)
    objective.setup(model, items, info)  # before any update: DPO's reference is the policy as it is now
    trim_hooks = hook_heap_trimming(model, config.trim_heap_every_layers)
    if config.release_memory:
        release_free_memory()  # what loading, tokenizing and a reference pass freed
    train_items, eval_items = split_data(config, objective, items)
    ddp = _wrap(model, config, info)
    state_bytes = training_state_bytes(model)
    say(f"training state per process: {state_bytes.describe()}")
    optimizer = make_optimizer(trainable_params(model), config, info.device)
    order = DataOrder(len(train_items), config.batch_size * config.grad_accum * info.world_size, config.seed)
    total_steps = config.max_steps or config.epochs * order.steps_per_epoch
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, config.lr_schedule))
    health = HealthMonitor(limits=divergence_limits(config))
    start_step, window, resumed_from = resume(
        config, out, model, optimizer, scheduler, order, total_steps, info, health
    )
    if info.is_main:
        write_run_info(out, config, objective, info, resumed_from, state_bytes)
    resume_step = start_step if resumed_from is not None else None
    trackers = make_trackers(config.report_to, out, project=config.project, run_name=config.run_name)
    tracked = {"objective": objective.name, **asdict(config)}  # the config each tracker shows for the run
    logger = MetricsLogger(out, enabled=info.is_main, trackers=trackers, config=tracked, resume_step=resume_step)
    say(
        f"{len(train_items)} {objective.unit} to train on, {len(eval_items)} to validate on; {total_steps} steps of "
        f"{order.per_step} ({order.steps_per_epoch} per epoch) on {info.world_size} process(es), {info.device}"
    )
    bar = progress_bar(
        total_steps, start_step=start_step, enabled=info.is_main and config.progress, desc=objective.name
    )
    return Run(
        config=config,
        objective=objective,
        info=info,
        out=out,
        tokenizer=tokenizer,
        reports=reports,
        train_items=train_items,
        eval_items=eval_items,
        model=model,
        ddp=ddp,
        optimizer=optimizer,
        scheduler=scheduler,
        order=order,
        total_steps=total_steps,
        start_step=start_step,
        resumed_from=resumed_from,
        logger=logger,
        bar=bar,
        trim_hooks=trim_hooks,
        warnings=warnings,
        started=started,
        window=window,
        health=health,
    )


def load_data(
    config: TrainConfig, objective: Objective, tokenizer: Any
) -> tuple[dict[str, list[Any]], dict[str, TruncationReport], list[str]]:
    """The items of --data (and --eval-data), what truncation did to each, and warnings for those it damaged (said
    here: truncation is silent damage otherwise)."""
    sources = [config.data, *([config.eval_data] if config.eval_data else [])]
    loaded = {source: objective.load(source, tokenizer) for source in sources}
    warnings = []
    for source, (_, report) in loaded.items():
        if (warning := truncation_warning(report)) is None:
            say(f"{source}: {report.summary()}")
        else:
            warnings.append(f"{source}: {warning}")
            warn(warnings[-1])
    items = {source: source_items for source, (source_items, _) in loaded.items()}
    reports = {source: report for source, (_, report) in loaded.items()}
    return items, reports, warnings


def build_model(config: TrainConfig, objective: Objective, info: DistInfo) -> torch.nn.Module:
    """The module to train, in train mode: fp32 weights and optimizer state everywhere (bf16 autocast does the matmuls
    on CUDA), with --lora an adapter on it, and whatever the objective builds around it (the reward model's head)."""
    model = load_model(config.model, dtype=torch.float32, device=str(info.device))
    if config.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and needs no input grads
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.lora:
        model = apply_lora(
            model,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            last_layers=config.lora_layers,
        )
        _cache_frozen_prefix(model, config, info)
    model = objective.prepare_model(model)  # trained and saved with the rest
    model.train()
    return model


def _cache_frozen_prefix(model: torch.nn.Module, config: TrainConfig, info: DistInfo) -> None:
    """With --lora-layers, the blocks below the adapter computed once per sequence (`prefalign.scoring.prefix_cache`).
    One process only: under DDP or FSDP the model's blocks are not swapped during a forward."""
    if config.lora_layers is None or not config.prefix_cache_mb or info.is_distributed:
        return
    cache = prefix_cache.attach(model, unwrap(model), config.prefix_cache_mb * 2**20)
    if cache is not None:
        say(
            f"blocks 0-{cache.depth - 1} (below the adapter) run once per sequence: their output is cached "
            f"(--prefix-cache-mb {config.prefix_cache_mb})"
        )


def hook_heap_trimming(model: torch.nn.Module, every_layers: int) -> list[Any]:
    """With --trim-heap-every-layers N, hooks that trim the heap every N layers of the backward pass (to remove)."""
    if not every_layers:
        return []
    hooks = trim_in_backward(model, every_layers)
    if not hooks:
        say(
            f"note: --trim-heap-every-layers {every_layers}: this model has no such transformers decoder layer to "
            "hook; the heap is trimmed between steps only"
        )
    return hooks


def split_data(config: TrainConfig, objective: Objective, items: dict[str, list[Any]]) -> tuple[list[Any], list[Any]]:
    """(train, eval) items: --data and --eval-data, or --data split by --eval-split."""
    if config.eval_data:
        train_items, eval_items = items[config.data], items[config.eval_data]
    else:
        train_items, eval_items = split_eval(items[config.data], config.eval_split, config.seed, objective.unit)
    if not train_items:
        raise PrefalignError(f"{config.data}: no {objective.unit} left to train on")
    return train_items, eval_items


def split_eval(items: list[Any], fraction: float, seed: int, unit: str = "items") -> tuple[list[Any], list[Any]]:
    """(train, eval): a seeded random `fraction` of the items held out (at least one when fraction > 0)."""
    try:
        return split_heldout(items, fraction, seed=f"eval-split:{seed}", what=unit)
    except PrefalignError as error:
        raise PrefalignError(f"--eval-split {fraction}: {error}") from None


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _wrap(model: torch.nn.Module, config: TrainConfig, info: DistInfo) -> DistributedDataParallel | None:
    """The DDP wrapper for a multi-process run; None for one process, or under --fsdp, which shards `model` in
    place instead (`prefalign.train.sharding`)."""
    if not info.is_distributed:
        if config.fsdp:
            say("note: --fsdp with one process: nothing to shard across, training unsharded")
        return None
    if config.fsdp:
        shard_model(model, info, config.precision)
        return None
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def resume(
    config: TrainConfig,
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    order: DataOrder,
    total_steps: int,
    info: DistInfo,
    health: HealthMonitor,
) -> tuple[int, Window, str | None]:
    """With --resume, load weights, optimizer, schedule, RNG and the health monitor's baseline in place from the newest
    intact checkpoint in `out` and return (its step, its logging window, its path); else (0, an empty window, None).
    The step is the data position (see `DataOrder`)."""
    checkpoint = resumable_checkpoint(out) if config.resume else None
    if checkpoint is None:
        if config.resume:
            say(f"--resume: no checkpoint in {out} yet, starting from the beginning")
        return 0, Window(), None
    state = load_run_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, rank=info.rank)
    if state["data_order"] != order.signature:  # the step number would point elsewhere in the data
        raise PrefalignError(
            f"{checkpoint}: saved with data order {state['data_order']}, this run has "
            f"{order.signature}; resume with the run's data, seed and global batch (run.json)"
        )
    health.load_state(state.get("health"))
    say(f"resuming from {checkpoint} (step {state['step']} of {total_steps})")
    if (replaced := set_peak_learning_rate(optimizer, scheduler, config.peak_learning_rate)) is not None:
        say(f"peak learning rate {config.peak_learning_rate:g} from here on (the checkpoint's run had {replaced:g})")
    return state["step"], Window(**state["window"]), str(checkpoint)
