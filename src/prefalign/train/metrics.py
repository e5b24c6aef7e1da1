"""Where training metrics go: `O/metrics.jsonl` (the record of the run), the trackers of `--report-to`, a progress bar.

`metrics.jsonl` holds one JSON object per line, `{"step": 10, "split": "train", "loss": 0.69, ...}`, flushed as it is
written so a killed run loses at most the line being written. Non-finite values are written as `null`: NaN is not
JSON, and a reader (jq, pandas, another language) must be able to parse every line. Each record then goes to every
tracker (TensorBoard, W&B, Trackio, MLflow: see `trackers.py`), the same names and steps to each, finite values only.

A resumed run first cuts the file back to the checkpoint's step, so the finished file equals the one an uninterrupted
run would have written: records the killed run wrote after its last checkpoint are logged again by the resumed run.
TensorBoard drops its copies of them as well; the trackers that cannot take a point back are not sent those records
again (the resumed run recomputes the same values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import console
from ..fileio import write_jsonl_atomic, write_text_atomic
from .trackers import Tracker

if TYPE_CHECKING:
    from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class MetricsLogger:
    """Writes metric records to `output_dir/metrics.jsonl` and hands each to `trackers`, started here with `config`.

    A fresh run (`resume_step=None`) starts an empty file. A resumed run keeps the records with step <= `resume_step`
    and appends after them. With `enabled=False` (ranks other than 0) nothing is opened or started and `log` does
    nothing.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        enabled: bool = True,
        trackers: Sequence[Tracker] = (),
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self.trackers: list[Tracker] = []
        # (step, split) of what the killed run logged after its checkpoint: trackers that cannot rewind keep those.
        self._already_sent: set[tuple[int, str]] = set()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115  (held open for the run; close() closes it)
        else:
            self._already_sent = _truncate_after(self.path, resume_step)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (held open for the run; close() closes it)
        for tracker in trackers:
            tracker.start(config or {}, resume_step)
            self.trackers.append(tracker)  # only started ones: close() finishes these

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
        finite = {key: value for key, value in values.items() if value is not None}
        for tracker in self.trackers:
            if tracker.rewinds or (step, split) not in self._already_sent:
                tracker.log(step, split, finite)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()

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
    return console.progress_bar(
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


def _truncate_after(path: Path, last_step: int) -> set[tuple[int, str]]:
    """Keep the records with step <= last_step (and drop a torn last line), atomically; return the (step, split) of
    the records dropped."""
    if not path.exists():
        return set()
    records = read_metrics(path)
    write_jsonl_atomic(path, [record for record in records if record["step"] <= last_step], allow_nan=False)
    return {(record["step"], record["split"]) for record in records if record["step"] > last_step}
