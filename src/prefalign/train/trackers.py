"""Experiment trackers (`--report-to`): TensorBoard, Weights & Biases, Trackio and MLflow, one adapter each.

Every tracker gets the same things the same way through `Tracker`: `start(config, resume_step)` once, with the run's
config as a flat dict; `log(step, split, metrics)` for every record of metrics.jsonl, each metric named
`split/name` (`train/loss`, `eval/rewards/accuracies`) at the optimizer step, non-finite values left out; `finish()`
at the end. Only the main process makes trackers (`MetricsLogger` is enabled on rank 0 only).

Each library is imported only when its tracker starts; `check_report_to` (called when a config is built, so before
any model or data loads) refuses an unknown name or one whose library is not installed, naming the pip command.

A resumed run continues the same run in each tracker: W&B and MLflow by the run id kept in `O/trackers.json`,
Trackio by the run name kept there, TensorBoard by writing to the same directory with `purge_step`. TensorBoard drops
what a killed run logged after its checkpoint, as metrics.jsonl does (`rewinds`); the others cannot take a logged point
back, so `MetricsLogger` does not send them again the records they already have (a resume recomputes the same values).

Where each one writes follows its own settings: `WANDB_MODE=offline`, `WANDB_DIR` (default: the output directory),
`TRACKIO_DIR` (default: `~/.cache/huggingface/trackio`), `MLFLOW_TRACKING_URI` (default: MLflow's own).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..console import say
from ..errors import PrefalignError
from ..fileio import write_json_atomic

# Each tracker's name is also its Python module's and its pip extra's (`pip install 'prefalign[wandb]'`).
TRACKER_NAMES = ("tensorboard", "wandb", "trackio", "mlflow")
RUN_IDS_FILE = "trackers.json"  # in the output directory: what a resumed run needs to continue the same tracker runs
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    """One experiment tracker, as `MetricsLogger` drives it."""

    name: str
    rewinds: bool  # whether start(resume_step=s) drops what was logged after step s (else those steps are not resent)

    def start(self, config: dict[str, Any], resume_step: int | None) -> None: ...

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None: ...

    def finish(self) -> None: ...


def check_report_to(names: Sequence[str], option: str = "--report-to") -> tuple[str, ...]:
    """The trackers `names` asks for (none for `none`), each checked to be known and installed; a PrefalignError
    naming the option and the pip command otherwise."""
    chosen = [name.strip().lower() for name in names if name.strip()]
    for name in chosen:
        if name not in (*TRACKER_NAMES, "none"):
            raise PrefalignError(f"{option} {name}: not a tracker; choose from {', '.join(TRACKER_NAMES)} or none")
    if "none" in chosen and len(set(chosen)) > 1:
        raise PrefalignError(f"{option}: `none` cannot be combined with a tracker")
    trackers = tuple(dict.fromkeys(name for name in chosen if name != "none"))
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise PrefalignError(f"{option} {name}: {name} is not installed; pip install 'prefalign[{name}]'")
    return trackers


def make_trackers(names: Sequence[str], output_dir: Path, *, project: str, run_name: str | None) -> list[Tracker]:
    """The trackers `names` asks for, writing to (or naming their runs after) `output_dir`; nothing is imported or
    opened until `start`."""
    output_dir = Path(output_dir)
    run_name = run_name or output_dir.resolve().name
    makers = {
        "tensorboard": lambda: TensorBoardTracker(output_dir),
        "wandb": lambda: WandbTracker(output_dir, project, run_name),
        "trackio": lambda: TrackioTracker(output_dir, project, run_name),
        "mlflow": lambda: MlflowTracker(output_dir, project, run_name),
    }
    return [makers[name]() for name in check_report_to(names)]


def metric_key(split: str, name: str) -> str:
    """The name every tracker shows a metric under: `train/loss`, `eval/rewards/margins`."""
    return f"{split}/{name}"


def read_run_ids(output_dir: Path) -> dict[str, Any]:
    """`O/trackers.json`: per tracker, what identifies its run ({} when there is none yet)."""
    path = Path(output_dir) / RUN_IDS_FILE
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PrefalignError(f"{path}: unreadable ({exc}); delete it to start new tracker runs") from None
    return loaded if isinstance(loaded, dict) else {}


def _remember_run(output_dir: Path, tracker: str, ids: dict[str, Any]) -> None:
    write_json_atomic(Path(output_dir) / RUN_IDS_FILE, {**read_run_ids(output_dir), tracker: ids})


def _resumed_ids(output_dir: Path, tracker: str, resume_step: int | None) -> dict[str, Any] | None:
    """The ids of the run to continue: those kept in trackers.json when resuming, else None (a new run)."""
    return read_run_ids(output_dir).get(tracker) if resume_step is not None else None


def _config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, default=str)


# ---------------------------------------------------------------------------------------------------------------------


class TensorBoardTracker:
    """Event files in `O/tensorboard` (`tensorboard --logdir O/tensorboard`); the config as a text summary."""

    name = "tensorboard"
    rewinds = True

    def __init__(self, output_dir: Path):
        self.log_dir = Path(output_dir) / TENSORBOARD_DIR
        self._writer: Any = None

    def start(self, config: dict[str, Any], resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is None and self.log_dir.is_dir():
            # A fresh run replaces the previous run's curves, as it replaces its metrics.jsonl.
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step drops the events a killed run wrote after its checkpoint, as metrics.jsonl is cut back.
        purge_step = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=10)
        self._writer.add_text("config", f"```\n{_config_text(config)}\n```", resume_step or 0)
        say(f"tensorboard: events in {self.log_dir} (view them with `tensorboard --logdir {self.log_dir}`)")

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(metric_key(split, key), value, step)

    def finish(self) -> None:
        self._writer.close()


class WandbTracker:
    """A Weights & Biases run in `project`, its files under the output directory unless WANDB_DIR says otherwise;
    offline with WANDB_MODE=offline (upload it later with `wandb sync`)."""

    name = "wandb"
    rewinds = False

    def __init__(self, output_dir: Path, project: str, run_name: str):
        self.output_dir, self.project, self.run_name = Path(output_dir), project, run_name
        self._run: Any = None

    def start(self, config: dict[str, Any], resume_step: int | None) -> None:
        import wandb

        ids = _resumed_ids(self.output_dir, self.name, resume_step) or {"id": uuid.uuid4().hex[:12]}
        _remember_run(self.output_dir, self.name, ids)
        self._run = wandb.init(
            project=self.project,
            name=self.run_name,
            id=ids["id"],
            resume="allow",  # the same id continues the run; a new id starts one
            config=config,
            dir=None if os.environ.get("WANDB_DIR") else str(self.output_dir),
            settings=wandb.Settings(silent=True),  # wandb's banner lines; ours below says where the run is
        )
        if self._run.offline:
            say(f"wandb: offline run {self._run.id} in {Path(self._run.dir).parent} (upload it with `wandb sync`)")
        else:
            say(f"wandb: run {self._run.name} at {self._run.url}")

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self._run.log({metric_key(split, key): value for key, value in metrics.items()}, step=step)

    def finish(self) -> None:
        self._run.finish()


class TrackioTracker:
    """A Trackio run named `run_name` in `project`, stored locally under TRACKIO_DIR (`trackio show`), or on a Space
    when TRACKIO_SPACE_ID is set."""

    name = "trackio"
    rewinds = False

    def __init__(self, output_dir: Path, project: str, run_name: str):
        self.output_dir, self.project, self.run_name = Path(output_dir), project, run_name
        self._run: Any = None

    def start(self, config: dict[str, Any], resume_step: int | None) -> None:
        import trackio

        ids = _resumed_ids(self.output_dir, self.name, resume_step)
        resume = "allow" if ids else "never"
        ids = ids or {"project": self.project, "name": self.run_name}
        _remember_run(self.output_dir, self.name, ids)
        with contextlib.redirect_stdout(io.StringIO()):  # trackio prints its banner to stdout; we say one line
            self._run = trackio.init(
                project=ids["project"], name=ids["name"], config=config, resume=resume, embed=False
            )
        say(f"trackio: run {ids['name']} in project {ids['project']} (view it with `trackio show`)")

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self._run.log({metric_key(split, key): value for key, value in metrics.items()}, step=step)

    def finish(self) -> None:
        import trackio

        with contextlib.redirect_stdout(io.StringIO()):
            trackio.finish()  # not Run.finish alone: trackio would finish the run again, and print, at exit


class MlflowTracker:
    """An MLflow run in the experiment `project`, at MLFLOW_TRACKING_URI (MLflow's default otherwise); the config as
    the run's parameters."""

    name = "mlflow"
    rewinds = False

    def __init__(self, output_dir: Path, project: str, run_name: str):
        self.output_dir, self.project, self.run_name = Path(output_dir), project, run_name
        self._client: Any = None
        self._run_id = ""

    def start(self, config: dict[str, Any], resume_step: int | None) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        with _quiet_logger("mlflow"):  # a new database logs its table creation at INFO
            self._client = MlflowClient()
        ids = _resumed_ids(self.output_dir, self.name, resume_step)
        if ids:
            self._run_id = ids["run_id"]
            self._client.update_run(self._run_id, status="RUNNING")
        else:
            experiment = self._client.get_experiment_by_name(self.project)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(self.project)
            self._run_id = self._client.create_run(experiment_id, run_name=self.run_name).info.run_id
            _remember_run(self.output_dir, self.name, {"run_id": self._run_id})
        # Parameters cannot change once logged: a resumed run adds the ones the run does not have yet.
        logged = self._client.get_run(self._run_id).data.params
        params = [Param(key, str(value)[:6000]) for key, value in config.items() if key not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self._client.log_batch(self._run_id, params=params[start : start + 100])
        say(f"mlflow: run {self.run_name} ({self._run_id}) in experiment {self.project} at {self._client.tracking_uri}")

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(split, key), value, now, step) for key, value in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch)

    def finish(self) -> None:
        self._client.set_terminated(self._run_id)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """The library logger `name` at WARNING for the block: its INFO lines are not for our users."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
