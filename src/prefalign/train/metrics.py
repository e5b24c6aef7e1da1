"""Where training metrics go: `O/metrics.jsonl` (the record of the run), TensorBoard when installed, a progress bar.

`metrics.jsonl` holds one JSON object per line, `{"step": 10, "split": "train", "loss": 0.69, ...}`, flushed as it is
written so a killed run loses at most the line being written. Non-finite values are written as `null`: NaN is not
JSON, and a reader (jq, pandas, another language) must be able to parse every line.

A resumed run first cuts the file back to the checkpoint's step, so the finished file equals the one an uninterrupted
run would have written: records the killed run wrote after its last checkpoint are logged again by the resumed run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import write_jsonl_atomic, write_text_atomic

if TYPE_CHECKING:
    from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Writes metric records to `output_dir/metrics.jsonl` and, when `torch.utils.tensorboard` imports, to TensorBoard.

    A fresh run (`resume_step=None`) starts an empty file. A resumed run keeps the records with step <= `resume_step`
    and appends after them. With `enabled=False` (ranks other than 0) nothing is opened and `log` does nothing.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115  (held open for the run; close() closes it)
        else:
            _truncate_after(self.path, resume_step)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (held open for the run; close() closes it)
        if tensorboard:
            self._writer = _tensorboard_writer(Path(output_dir) / TENSORBOARD_DIR, resume_step)

    @property
    def tensorboard_enabled(self) -> bool:
        return self._writer is not None

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Append one record; values may be floats, ints or 0-d tensors. Non-finite values become null."""
        if self._file is None:
            return
        clash = {"step", "split"} & metrics.keys()
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved for the record's own fields")
        values = {key: _finite_or_none(float(value)) for key, value in metrics.items()}
        self._file.write(json.dumps({"step": step, "split": split, **values}, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if value is not None:
                    self._writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_summary(output_dir: Path, summary: dict[str, Any]) -> Path:
    """Write `output_dir/summary.json` atomically (temp file + rename); non-finite floats become null."""
    path = Path(output_dir) / SUMMARY_FILE
    return write_text_atomic(path, json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (the run was killed while writing it) is skipped."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = _parse_record(line)
            if record is not None:
                records.append(record)
    return records


def progress_bar(total_steps: int, *, start_step: int = 0, enabled: bool = True, desc: str = "train") -> tqdm:
    """A tqdm bar over optimizer steps, with rate and ETA; resumed runs start it at `start_step`.

    Show the latest metrics with `bar.set_postfix(loss=..., refresh=False)` and advance with `bar.update()`.
    """
    from tqdm import tqdm

    return tqdm(
        total=total_steps,
        initial=start_step,
        desc=desc,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
    )


# ---------------------------------------------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _parse_record(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None  # torn write
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _truncate_after(path: Path, last_step: int) -> None:
    """Keep the records with step <= last_step (and drop a torn last line), atomically."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= last_step]
    write_jsonl_atomic(path, kept, allow_nan=False)


def _tensorboard_writer(log_dir: Path, resume_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl has everything
        return None
    if resume_step is None and log_dir.is_dir():
        # A fresh run replaces the previous run's curves, as it replaces its metrics.jsonl.
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
    # purge_step drops the events a killed run wrote after its checkpoint, as _truncate_after does for the JSONL.
    purge_step = None if resume_step is None else resume_step + 1
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=10)
