"""The one training loop, shared by every objective (SFT, DPO; later the reward model).

Read `train` top to bottom: setup (processes, seed, data, model, LoRA, objective, optimizer, schedule, resume), then
one iteration per optimizer step: this rank's micro-batches -> objective.loss -> backward (gradients accumulated, and
synchronised across processes on the last micro-batch only) -> clip -> non-finite check -> update -> log -> validate
-> checkpoint; and at the end the final model, plots and summary.

Memory (what a full fine-tune cannot do without: fp32 weights, gradients and AdamW's two moments, 16 bytes per
parameter): the fused AdamW kernel allocates no temporaries; `--gradient-checkpointing` keeps each layer's input only;
`--release-memory` (default) trims the heap after every step; `--trim-layers N` also after the forward pass and every N
layers of the backward pass, so peak RSS is close to what is live.

On CPU, denormal floats are flushed to zero while training: a gradient full of values below 1.2e-38 (exp() of large
negative scores does it) otherwise makes a backward pass several times slower (measured: 11 s instead of 3 s on one
SmolLM2 batch), and values that small change no log-probability.

Two choices make resuming and multi-process runs exact:
- The items of step s are a pure function of (seed, s): each epoch is a permutation seeded by (seed, epoch), and step
  s takes the next global batch of it. A checkpoint needs no data iterator state; the step number says where we are.
- Objectives return summed losses and metric sums. Each rank divides its summed loss by the step's GLOBAL count
  (pairs, or response tokens for SFT) times the number of processes, and DDP averages gradients over processes: the
  update is the exact mean over the global batch whatever its split into processes and micro-batches.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import PrefalignError
from ..models.loading import load_model, load_tokenizer
from ..models.lora import apply_lora, is_lora, merged_copy, save_adapter
from ..stages import file_digest
from .checkpoint import capture_rng_state, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistInfo, barrier, cleanup, init_distributed, reduce_metrics, shard
from .health import HealthMonitor, truncation_warning
from .memory import release_free_memory, trim_in_backward
from .metrics import MetricsLogger, progress_bar, write_summary
from .objectives.base import Objective, autocast
from .plots import make_plots


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    model: torch.nn.Module  # the trained policy, unwrapped from DDP
    objective: Objective
    summary: dict[str, Any]


def train(config: TrainConfig, objective: Objective) -> TrainResult:
    """Train with `objective` as `config` says; under torchrun, every process calls this."""
    info = init_distributed()
    try:
        return _train(config, objective, info)
    finally:
        cleanup(info)


def _train(config: TrainConfig, objective: Objective, info: DistInfo) -> TrainResult:
    started = time.perf_counter()
    if info.device.type == "cpu":
        torch.set_flush_denormal(True)  # see the module docstring: denormals stall CPU arithmetic
    out = Path(config.output_dir)  # type: ignore[arg-type]  # required by TrainConfig.__post_init__
    say = _printer(info)
    _check_output_dir(out, config.resume)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # LoRA's initial A matrices, dropout

    # Data: tokenized once, split, and reported on (truncation is silent damage otherwise).
    tokenizer = load_tokenizer(config.model)  # type: ignore[arg-type]
    sources = {config.data: objective.load(config.data, tokenizer)}  # type: ignore[index, arg-type]
    if config.eval_data:
        sources[config.eval_data] = objective.load(config.eval_data, tokenizer)
    warnings = []
    for source, (_, report) in sources.items():
        if (warning := truncation_warning(report)) is not None:
            warnings.append(f"{source}: {warning}")
        say(f"warning: {warnings[-1]}" if warning else f"{source}: {report.summary()}")
    items = {source: loaded for source, (loaded, _) in sources.items()}

    # Model: fp32 weights and optimizer state everywhere (bf16 autocast does the matmuls on CUDA).
    model = load_model(config.model, dtype=torch.float32, device=str(info.device))  # type: ignore[arg-type]
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
    model = objective.prepare_model(model)  # e.g. the reward model's head on top: trained and saved with the rest
    model.train()
    if config.trim_layers and not trim_in_backward(model, config.trim_layers):
        say(
            f"note: --trim-layers {config.trim_layers}: this model has no such transformers decoder layer to hook; "
            "the heap is trimmed between steps only"
        )
    objective.setup(model, items, info)  # before any update: DPO's reference is the policy as it is now
    if config.release_memory:
        release_free_memory()  # what loading, tokenizing and a reference pass freed
    if config.eval_data:
        train_items, eval_items = items[config.data], items[config.eval_data]
    else:
        train_items, eval_items = split_eval(items[config.data], config.eval_split, config.seed)
    if not train_items:
        raise PrefalignError(f"{config.data}: no {objective.unit} left to train on")

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids) if info.is_distributed else None
    train_model = ddp if ddp is not None else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config, info.device)
    per_step = config.batch_size * config.grad_accum * info.world_size
    order = DataOrder(len(train_items), per_step, config.seed)
    total_steps = config.max_steps or config.epochs * order.steps_per_epoch
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, config.lr_schedule)
    )

    # Resume: weights, optimizer, schedule and RNG from the newest complete checkpoint; the data position is the step.
    start_step, window, resumed_from = 0, Window(), None
    checkpoint = latest_checkpoint(out) if config.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, rank=info.rank)
        if state["data_order"] != order.signature:  # the step number would point elsewhere in the data
            raise PrefalignError(
                f"{checkpoint}: saved with data order {state['data_order']}, this run has "
                f"{order.signature}; resume with the run's data, seed and global batch (run.json)"
            )
        start_step, window, resumed_from = state["step"], Window(**state["window"]), str(checkpoint)
        say(f"resuming from {checkpoint} (step {start_step} of {total_steps})")
    elif config.resume:
        say(f"--resume: no checkpoint in {out} yet, starting from the beginning")
    if info.is_main:
        _write_run_info(out, config, objective, info, resumed_from)
    logger = MetricsLogger(
        out,
        enabled=info.is_main,
        tensorboard=config.tensorboard,
        resume_step=start_step if checkpoint is not None else None,
    )
    health = HealthMonitor()
    last: dict[str, dict[str, float]] = {}

    def log(step: int, split: str, metrics: dict[str, float]) -> None:
        logger.log(step, split, metrics)
        last[split] = metrics
        for warning in health.update(step, split, metrics):
            warnings.append(warning)
            say(f"warning: {warning}")

    def validate(step: int) -> None:
        if eval_items:
            log(step, "eval", evaluate(model, objective, eval_items, config.batch_size, info))

    say(
        f"{len(train_items)} {objective.unit} to train on, {len(eval_items)} to validate on; {total_steps} steps of "
        f"{per_step} ({order.steps_per_epoch} per epoch) on {info.world_size} process(es), {info.device}"
    )
    show_bar = info.is_main and config.progress
    bar = progress_bar(total_steps, start_step=start_step, enabled=show_bar, desc=objective.name)
    try:
        if start_step == 0:
            validate(0)
        for step in range(start_step + 1, total_steps + 1):
            step_started = time.perf_counter()
            batch_items = [train_items[i] for i in order.indices(step - 1)]
            mine, weight = my_share(batch_items, info)
            size = config.batch_size
            batches = [objective.collate(mine[i : i + size]) for i in range(0, len(mine), size)]
            count = sum(objective.loss_denominator(batch) for batch in batches) * weight
            global_count = float(reduce_metrics({"n": torch.tensor(count, dtype=torch.float64)}, info)["n"])
            step_sums: dict[str, torch.Tensor] = {}
            for i, batch in enumerate(batches):
                last_micro = i == len(batches) - 1
                with ddp.no_sync() if ddp is not None and not last_micro else nullcontext():
                    with autocast(info.device):
                        loss_sum, sums = objective.loss(train_model, batch)
                    if config.trim_layers:
                        release_free_memory()  # what the forward pass freed, before backward allocates gradients
                    (loss_sum * (weight * info.world_size / global_count)).backward()
                add_sums(step_sums, sums, weight)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            reduced = {key: float(value) for key, value in reduce_metrics(step_sums, info).items()}
            if not (math.isfinite(reduced["loss"]) and math.isfinite(grad_norm)):
                raise PrefalignError(
                    f"step {step}: non-finite loss ({reduced['loss'] / reduced['items']:.4g}) or gradient norm "
                    f"({grad_norm:.4g}); stopped before updating the weights. Last good checkpoint: "
                    f"{latest_checkpoint(out) or 'none'}. Lower --learning-rate, then rerun with --resume"
                )
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if config.release_memory:
                release_free_memory()
            window.add(reduced, grad_norm, time.perf_counter() - step_started)
            bar.update()

            if step == 1 or step % config.logging_steps == 0 or step == total_steps:
                metrics = objective.metrics(window.sums) | window.step_metrics(objective.unit, learning_rate)
                log(step, "train", metrics)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "rewards/margins") if k in metrics})
                window = Window()
            if step % config.eval_steps == 0 or step == total_steps:
                validate(step)
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                epoch, next_batch = divmod(step, order.steps_per_epoch)  # for people: the step alone says it
                state = {
                    "epoch": epoch,
                    "next_batch": next_batch,
                    "data_order": order.signature,
                    "window": asdict(window),
                }
                _save(out, step, model, optimizer, scheduler, state, config, info)
    finally:
        bar.close()
        logger.close()

    final_dir = None
    if info.is_main:
        final_dir = save_final(model, tokenizer, out, merge=config.merge)
        plots = make_plots(out / "metrics.jsonl", out / "plots") if config.plots else []
        say(f"final model in {final_dir}" + (f", plots in {out / 'plots'}" if plots else ""))
    summary = {
        "objective": objective.name,
        "steps": total_steps,
        "epochs": total_steps / order.steps_per_epoch,
        "wall_seconds": time.perf_counter() - started,
        "world_size": info.world_size,
        "train": last.get("train", {}),
        "eval": last.get("eval", {}),
        "warnings": warnings,
        "truncation": {source: report.summary() for source, (_, report) in sources.items()},
        "final_model": str(final_dir),
        "resumed_from": resumed_from,
    }
    if info.is_main:
        write_summary(out, summary)
    barrier(info)  # the other ranks leave only once rank 0 has written everything
    return TrainResult(out, total_steps, model, objective, summary)


# ---------------------------------------------------------------------------------------------------------------------
# Steps: data order, shares, schedule, running sums


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
    element-wise ops with their temporaries, so the update is faster and its memory peak lower (same arithmetic)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=config.peak_learning_rate, weight_decay=config.weight_decay, fused=fused)


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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, objective: Objective, items: Sequence[Any], batch_size: int, info: DistInfo
) -> dict[str, float]:
    """The objective's metrics over all of `items` (sharded across processes), in eval mode."""
    model.eval()
    mine, weight = my_share(items, info)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(mine), batch_size):
        with autocast(info.device):
            _, batch_sums = objective.loss(model, objective.collate(mine[start : start + batch_size]))
        add_sums(sums, batch_sums, weight)
    model.train()
    return objective.metrics({key: float(value) for key, value in reduce_metrics(sums, info).items()})


def split_eval(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, eval): a seeded random `fraction` of the items held out (at least one when fraction > 0)."""
    if fraction <= 0:
        return items, []
    held_count = max(1, round(fraction * len(items)))
    if held_count >= len(items):
        raise PrefalignError(f"--eval-split {fraction} of {len(items)} items leaves nothing to train on")
    order = list(range(len(items)))
    random.Random(f"eval-split:{seed}").shuffle(order)
    held = set(order[:held_count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# ---------------------------------------------------------------------------------------------------------------------
# Files


def _check_output_dir(out: Path, resume: bool) -> None:
    if not resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise PrefalignError(f"{out} already holds a run: pass --resume to continue it, or choose another --output-dir")


def _save(
    out: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    config: TrainConfig,
    info: DistInfo,
) -> None:
    rng_states = [capture_rng_state()]
    if info.is_distributed:  # ranks draw different numbers (dropout on different shapes): keep each one's state
        rng_states = [None] * info.world_size
        torch.distributed.all_gather_object(rng_states, capture_rng_state())
    if info.is_main:
        save_checkpoint(
            out,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            trainer_state=state,
            keep_last=config.keep_checkpoints,
            rng_states=rng_states,
        )


def save_final(model: torch.nn.Module, tokenizer: Any, out: Path, *, merge: bool) -> Path:
    """O/final: the LoRA adapter (and with `merge` a merged model in final/merged), or the full model; + tokenizer."""
    final, tmp = out / "final", out / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if is_lora(model):
        save_adapter(model, tmp)
        if merge:
            merged_copy(model).save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if final.exists():  # a resumed run that had already finished once
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _write_run_info(
    out: Path, config: TrainConfig, objective: Objective, info: DistInfo, resumed_from: str | None
) -> None:
    import peft
    import transformers

    data_files = [path for path in (config.data, config.eval_data) if path]
    run = {
        "command": objective.name,
        "config": asdict(config),
        "versions": {
            "prefalign": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "data_sha256": {path: file_digest(path) for path in data_files},
        "world_size": info.world_size,
        "device": str(info.device),
        "resumed_from": resumed_from,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".run.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "run.json")


def _printer(info: DistInfo) -> Any:
    """print() for rank 0 that does not break the progress bar."""
    from tqdm import tqdm

    return (lambda message: tqdm.write(f"prefalign: {message}", file=sys.stderr)) if info.is_main else (lambda _: None)
