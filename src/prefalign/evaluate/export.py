"""Machine-readable outputs: `report.csv` (the table), `report.json` (every aggregate), `responses.jsonl` (every
response with its scores and verdicts, one line per prompt)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_open, write_text_atomic
from .results import EvalReport
from .table import CI_METHODS


def write_csv(report: EvalReport, path: Path) -> Path:
    """One row per table row: for each model its value, interval and number of items, then the Δ."""
    header = ["key", "metric", "interval"]
    for label in report.labels:
        header += [label, f"{label}_low", f"{label}_high", f"{label}_n"]
    header += ["delta", "delta_low", "delta_high"]
    with atomic_open(path) as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in report.rows:
            line: list[Any] = [row.metric.key, row.metric.name, CI_METHODS[row.metric.kind]]
            for label in report.labels:
                cell = row.cells.get(label)
                line += [cell.value, cell.low, cell.high, cell.n] if cell else ["", "", "", ""]
            line += [row.delta.value, row.delta.low, row.delta.high] if row.delta else ["", "", ""]
            writer.writerow(line)
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(report: EvalReport, path: Path) -> Path:
    text = json.dumps(_finite(report.to_json()), indent=2, ensure_ascii=False, allow_nan=False, default=str)
    return write_text_atomic(path, text + "\n")


def write_responses(report: EvalReport, path: Path) -> Path:
    """Per prompt: its text and meta, every model's response with its scores, and every pairwise verdict."""
    with atomic_open(path) as out:
        for index, prompt in enumerate(report.prompts):
            record = {
                "id": prompt.id,
                "prompt": prompt.prompt,
                **prompt.meta,
                "responses": {
                    label: {
                        "text": report.generations[label][index].text,
                        "finish_reason": report.generations[label][index].finish_reason,
                        **report.scores[label][index].to_json(),
                    }
                    for label in report.labels
                },
                "pairwise": {f"{r.model}:{r.baseline}/{r.judge}": r.outcomes[index] for r in report.pairwise},
            }
            out.write(json.dumps(_finite(record), ensure_ascii=False, allow_nan=False) + "\n")
    return path
