"""The one training loop, shared by every objective (SFT, DPO, the reward model).

Read `train` top to bottom: `setup_run` (seed, data, model, LoRA, objective, optimizer, schedule, resume, logger), then
one `train_step` per optimizer step: this rank's micro-batches -> objective.loss -> backward (gradients accumulated,
and synchronised across processes on the last micro-batch only) -> clip -> non-finite check -> update; `after_step`
logs, validates and checkpoints; `finish_run` saves the final model, plots and summary. What the run changes outside
itself is undone on the way out: `process_settings` for the process, `Run.close` for the model's hooks. The parts of a
step (data order, shares, schedule, running sums, validation) are in `steps.py`, run.json and the final model in
`run_files.py`, and setting a run up in `setup.py`.

Memory (what a full fine-tune cannot do without: fp32 weights, gradients and AdamW's two moments, 16 bytes per
parameter): the fused AdamW kernel allocates no temporaries; `--gradient-checkpointing` keeps each layer's input only;
`--release-memory` (default) trims the heap after every step; `--trim-heap-every-layers N` also after the forward
pass and every N layers of the backward pass, so peak RSS is close to what is live.

On CPU, denormal floats are flushed to zero while training: a gradient full of values below 1.2e-38 (exp() of large
negative scores does it) otherwise makes a backward pass several times slower, and values that small change no
log-probability.

Two choices make resuming and multi-process runs exact:
- The items of step s are a pure function of (seed, s): each epoch is a permutation seeded by (seed, epoch), and step
  s takes the next global batch of it. A checkpoint needs no data iterator state; the step number says where we are.
- Objectives return summed losses and metric sums. Each rank divides its summed loss by the step's GLOBAL count
  (pairs, or response tokens for SFT) times the number of processes, and DDP (or FSDP2 under --fsdp, see
  `sharding.py`) averages gradients over processes: the update is the exact mean over the global batch whatever its
  split into processes and micro-batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..console import say, warn
from ..errors import PrefalignError
from ..scoring import prefix_cache
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .distributed import barrier, cleanup, init_distributed, reduce_metrics
from .memory import release_free_memory
from .metrics import write_summary
from .objectives.base import Objective
from .plots import make_plots
from .precision import autocast
from .rng_state import capture_rng_state
from .run_files import save_final
from .setup import Run, build_model, setup_run
from .sharded_checkpoint import save_run_checkpoint
from .sharding import full_state_dict, full_value, gradient_sync, is_sharded
from .sparse_rows import clip_grad_norm
from .steps import (
    PendingCheckpoint,
    Window,
    add_sums,
    evaluate,
    my_batches,
)

if TYPE_CHECKING:
    pass


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
        with process_settings(info.device):
            run = setup_run(config, objective, info)
            try:
                if run.start_step == 0:
                    validate(run, 0)
                for step in range(run.start_step + 1, run.total_steps + 1):
                    learning_rate = train_step(run, step)
                    after_step(run, step, learning_rate)
            finally:
                run.close()
            return finish_run(run)
    finally:
        cleanup(info)


@contextmanager
def process_settings(device: torch.device) -> Iterator[None]:
    """The process-wide settings training needs, restored on exit: on CPU, denormal floats flushed to zero (see the
    module docstring)."""
    if device.type != "cpu":
        yield
        return
    was_flushing = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormals now (torch has no getter): a denormal times one is then zero."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# The step


def train_step(run: Run, step: int) -> float:
    """One optimizer step over the global batch of `step` (1-based), added to the run's logging window; returns the
    learning rate it used."""
    started = time.perf_counter()
    config, info = run.config, run.info
    batches, global_count = step_batches(run, step)
    step_sums: dict[str, torch.Tensor] = {}
    for i, (batch, weight) in enumerate(batches):
        last_micro = i == len(batches) - 1  # gradients are synchronised on the last micro-batch only
        with gradient_sync(run.train_model, last_micro):
            with autocast(info.device, config.precision):
                loss_sum, sums = run.objective.loss(run.train_model, batch)
            if config.trim_heap_every_layers:
                release_free_memory()  # what the forward pass freed, before backward allocates gradients
            (loss_sum * (weight * info.world_size / global_count)).backward()
        add_sums(step_sums, sums, weight)
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = float(full_value(clip_grad_norm(run.params, max_norm)))
    reduced = {key: float(value) for key, value in reduce_metrics(step_sums, info).items()}
    check_step(run, step, reduced, grad_norm)
    learning_rate = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if config.release_memory:
        release_free_memory()
    run.window.add(reduced, grad_norm, time.perf_counter() - started)
    run.bar.update()
    return learning_rate


def step_batches(run: Run, step: int) -> tuple[list[tuple[Any, float]], float]:
    """This rank's micro-batches of `step` with their weights (see `my_batches`), and the loss denominator of all
    ranks."""
    items = [run.train_items[i] for i in run.order.indices(step - 1)]
    mine = my_batches(items, run.info, run.config.batch_size)
    batches = [(run.objective.collate(batch), weight) for batch, weight in mine]
    count = sum(run.objective.loss_denominator(batch) * weight for batch, weight in batches)
    global_count = float(reduce_metrics({"n": torch.tensor(count, dtype=torch.float64)}, run.info)["n"])
    return batches, global_count


def check_step(run: Run, step: int, sums: dict[str, float], grad_norm: float) -> None:
    """Before `step`'s update: stop on a non-finite loss or gradient norm, judge the step's metrics (`judge`), and only
    then write the checkpoint due after the step before, whose weights this step's forward pass just ran."""
    if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
        raise PrefalignError(
            f"step {step}: non-finite loss ({sums['loss'] / sums['items']:.4g}) or gradient norm "
            f"({grad_norm:.4g}); stopped before updating the weights; {_last_good(run)}"
        )
    judge(run, step, "train", run.objective.metrics(sums) | {"grad_norm": grad_norm})
    write_pending_checkpoint(run)


def judge(run: Run, step: int, split: str, metrics: dict[str, float]) -> None:
    """Say what the health monitor finds in one step's (or validation's) metrics. Divergence under --on-divergence
    stop ends the run here, before anything is saved from the weights that diverged."""
    for finding in run.health.check(step, split, metrics):
        if finding.diverged and run.config.on_divergence == "stop":
            raise PrefalignError(
                f"{finding.message}; stopped, nothing saved from these weights; {_last_good(run)}; "
                "--on-divergence warn trains on regardless"
            )
        run.warnings.append(finding.message)
        warn(finding.message)


def _last_good(run: Run) -> str:
    checkpoint = latest_checkpoint(run.out)
    if checkpoint is None:
        return "no checkpoint saved yet (rerun with a lower --learning-rate)"
    return f"last good checkpoint: {checkpoint} (rerun with --resume and a lower --learning-rate to continue from it)"


def after_step(run: Run, step: int, learning_rate: float) -> None:
    """Log the training window, validate and checkpoint, each when `step` is due for it."""
    config, last_step = run.config, step == run.total_steps
    if step == 1 or step % config.logging_steps == 0 or last_step:
        step_metrics = run.window.step_metrics(run.objective.unit, learning_rate)
        metrics = run.objective.metrics(run.window.sums) | step_metrics
        log(run, step, "train", metrics)
        run.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "rewards/margins") if k in metrics})
        run.window = Window()
    if step % config.eval_interval(run.total_steps) == 0 or last_step:
        validate(run, step)
    if config.save_steps and step % config.save_steps == 0 and not last_step:
        save_step_checkpoint(run, step)


def log(run: Run, step: int, split: str, metrics: dict[str, float]) -> None:
    """Write one record, keep it as the split's latest, and warn about what the health monitor sees in it."""
    run.logger.log(step, split, metrics)
    run.last[split] = metrics
    for warning in run.health.update(step, split, metrics):
        run.warnings.append(warning)
        warn(warning)


def validate(run: Run, step: int) -> None:
    """Log the validation metrics of the weights after `step`, and judge them: the only look at the final weights."""
    if run.eval_items:
        metrics = evaluate(
            run.model, run.objective, run.eval_items, run.config.batch_size, run.info, before_training=step == 0
        )
        log(run, step, "eval", metrics)
        judge(run, step, "eval", metrics)


def save_step_checkpoint(run: Run, step: int) -> None:
    """A checkpoint after `step`: weights, optimizer, schedule, RNG of every rank, the open logging window and the
    health monitor's baseline. Captured now, written by the next step once its forward pass has judged the weights
    (`check_step`): a diverged run leaves its last good checkpoint, never one of the weights that diverged."""
    epoch, next_batch = divmod(step, run.order.steps_per_epoch)  # for people: the step alone says it
    state = {"epoch": epoch, "next_batch": next_batch, "data_order": run.order.signature, "window": asdict(run.window)}
    state["health"] = run.health.state()
    rng_states = [capture_rng_state()]
    if run.info.is_distributed:  # ranks draw different numbers (dropout on different shapes): keep each one's state
        rng_states = [None] * run.info.world_size
        torch.distributed.all_gather_object(rng_states, capture_rng_state())
    run.pending = PendingCheckpoint(step, state, rng_states)


def write_pending_checkpoint(run: Run) -> None:
    """Write the checkpoint `save_step_checkpoint` captured (rank 0, or under --fsdp every rank its shards), now that
    its weights are judged sound."""
    pending, run.pending = run.pending, None
    if pending is not None:
        save_run_checkpoint(
            run.out,
            pending.step,
            model=run.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            trainer_state=pending.trainer_state,
            keep_last=run.config.keep_checkpoints,
            rng_states=pending.rng_states,
            info=run.info,
        )


# ---------------------------------------------------------------------------------------------------------------------
# The end


def model_to_save(run: Run) -> torch.nn.Module | None:
    """What rank 0 saves as the final model (None on other ranks): the policy, or under --fsdp an unsharded copy
    built on the CPU from the weights gathered from every rank, so that it saves as an ordinary model would."""
    if not is_sharded(run.model):
        return run.model if run.info.is_main else None
    state = full_state_dict(run.model)  # a collective: every rank takes part
    if not run.info.is_main:
        return None
    model = build_model(run.config, run.objective, replace(run.info, device=torch.device("cpu")))
    model.load_state_dict(state)
    return model


def finish_run(run: Run) -> TrainResult:
    """Rank 0 saves the final model, plots and summary.json; every rank returns the same summary."""
    cache = prefix_cache.release(run.model)
    final_dir, model = None, model_to_save(run)
    if model is not None:
        final_dir = save_final(model, run.tokenizer, run.out, merge=run.config.merge)
        plots = make_plots(run.out / "metrics.jsonl", run.out / "plots") if run.config.plots else []
        say(f"final model in {final_dir}" + (f", plots in {run.out / 'plots'}" if plots else ""))
    summary = {
        "objective": run.objective.name,
        "steps": run.total_steps,
        "epochs": run.total_steps / run.order.steps_per_epoch,
        "wall_seconds": time.perf_counter() - run.started,
        "world_size": run.info.world_size,
        "train": run.last.get("train", {}),
        "eval": run.last.get("eval", {}),
        "warnings": run.warnings,
        "truncation": {source: report.summary() for source, report in run.reports.items()},
        "final_model": str(final_dir),
        "resumed_from": run.resumed_from,
        "prefix_cache": cache.summary() if cache is not None else None,
    }
    if run.info.is_main:
        write_summary(run.out, summary)
    barrier(run.info)  # the other ranks leave only once rank 0 has written everything
    return TrainResult(run.out, run.total_steps, run.model, run.objective, summary)
