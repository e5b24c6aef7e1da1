"""The report table: one row per metric, one cell per model (value and 95% interval), and the Δ of a model over its
baseline with a paired-bootstrap interval.

Metrics are computed from per-item values (an item is a prompt, or a held-out pair), aligned across models, so any
two models can be differenced item by item. A value is a number, a (numerator, denominator) pair for ratio metrics,
or None where the item has no value for that model (no instructions in the prompt, a judge failure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .scoring import ResponseScores
from .stats import Estimate, mean_ci, paired_mean_difference, paired_ratio_difference, ratio_ci, wilson_ci

Kind = Literal["mean", "proportion", "ratio"]
ItemValue = float | tuple[float, float] | None
# metric key -> model label -> one value per item
MetricValues = dict[str, dict[str, list[ItemValue]]]

CI_METHODS = {
    "mean": "mean, percentile bootstrap over items",
    "proportion": "proportion, Wilson score interval",
    "ratio": "sum over items / total, bootstrap over items",
}


@dataclass(frozen=True)
class Metric:
    key: str
    name: str
    kind: Kind
    higher_is_better: bool | None  # None: no direction is better in general (length, refusals)
    digits: int = 3


@dataclass
class Row:
    """One line of the table: `cells` by model label (None: no value), `delta` for the table's baseline pair."""

    metric: Metric
    cells: dict[str, Estimate | None]
    delta: Estimate | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.metric.key,
            "name": self.metric.name,
            "kind": self.metric.kind,
            "higher_is_better": self.metric.higher_is_better,
            "cells": {label: cell.to_json() if cell else None for label, cell in self.cells.items()},
            "delta": self.delta.to_json() if self.delta else None,
        }


@dataclass(frozen=True)
class Delta:
    """`model` minus `baseline` on one metric, with its paired-bootstrap interval."""

    metric: Metric
    model: str
    baseline: str
    estimate: Estimate

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.estimate.excludes_zero

    @property
    def improved(self) -> bool | None:
        """True/False when the change is significant and the metric has a better direction; else None."""
        if not self.significant or self.metric.higher_is_better is None:
            return None
        return (self.estimate.value > 0) == self.metric.higher_is_better

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric.key,
            "name": self.metric.name,
            "model": self.model,
            "baseline": self.baseline,
            **self.estimate.to_json(),
            "significant": self.significant,
            "improved": self.improved,
        }


IFEVAL_METRICS = (
    Metric("ifeval/prompt_strict", "IFEval prompt-level accuracy (strict)", "proportion", True),
    Metric("ifeval/prompt_loose", "IFEval prompt-level accuracy (loose)", "proportion", True),
    Metric("ifeval/instruction_strict", "IFEval instruction-level accuracy (strict)", "ratio", True),
    Metric("ifeval/instruction_loose", "IFEval instruction-level accuracy (loose)", "ratio", True),
)
HEURISTIC_METRICS = (
    Metric("length/tokens", "Response length (tokens)", "mean", None, 1),
    Metric("length/words", "Response length (words)", "mean", None, 1),
    Metric("truncated", "Responses cut at the token limit", "proportion", False),
    Metric("refusal", "Refusal rate (phrase list)", "proportion", None),
    Metric("repetition", "Repeated 4-grams (fraction)", "mean", False),
)


def judge_label(name: str) -> str:
    """A judge's short display name for titles, table rows and prose; the report's Judges table keeps the full one.

    `reward-model:/abs/path/runs/demo/reward/final` -> `reward model (reward/final)`: the last two parts of the path
    tell the demo's (or a user's) reward models apart. Other judge names are short already (`verifier`,
    `openai:MODEL`); a very long one keeps its start and end.
    """
    kind, _, path = name.partition(":")
    if kind == "reward-model" and path:
        parts = [part for part in path.replace("\\", "/").rstrip("/").split("/") if part]
        return f"reward model ({'/'.join(parts[-2:])})"
    return clip_label(name, 32)


def clip_label(text: str, width: int) -> str:
    """`text` cut to `width` characters in the middle (`abcdef…uvwxyz`), whole when it fits."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def judge_metric(name: str) -> Metric:
    return Metric(f"judge/{name}", f"Judge score: {judge_label(name)}", "mean", True, 2)


def response_values(scores: dict[str, list[ResponseScores]], judge_names: Sequence[str]) -> MetricValues:
    """Per-prompt values of the IFEval, heuristic and judge metrics, by metric key and model label."""
    values: MetricValues = {}

    def put(key: str, label: str, items: list[ItemValue]) -> None:
        values.setdefault(key, {})[label] = items

    for label, responses in scores.items():
        checks = [r.instructions for r in responses]
        for mode in ("strict", "loose"):
            put(f"ifeval/prompt_{mode}", label, [None if c is None else float(all(i[mode] for i in c)) for c in checks])
            put(
                f"ifeval/instruction_{mode}",
                label,
                [None if c is None else (float(sum(i[mode] for i in c)), float(len(c))) for c in checks],
            )
        put("length/tokens", label, [float(r.tokens) for r in responses])
        put("length/words", label, [float(r.words) for r in responses])
        put("truncated", label, [float(r.truncated) for r in responses])
        put("refusal", label, [float(r.refusal) for r in responses])
        put("repetition", label, [r.repetition for r in responses])
        for name in judge_names:
            put(f"judge/{name}", label, [r.judge_value(name) for r in responses])
    return values


def aggregate(metric: Metric, items: list[ItemValue]) -> Estimate | None:
    """The metric over the items, with its interval (see `CI_METHODS`)."""
    if metric.kind == "ratio":
        nums, dens = _split_ratio(items)
        return ratio_ci(nums, dens)
    if metric.kind == "proportion":
        return wilson_ci(items)  # type: ignore[arg-type]  # only a ratio's items are pairs; these are numbers
    return mean_ci(items)  # type: ignore[arg-type]  # only a ratio's items are pairs; these are numbers


def difference(metric: Metric, a: list[ItemValue], b: list[ItemValue]) -> Estimate | None:
    """metric(a) - metric(b), paired by item, with a paired-bootstrap interval."""
    if metric.kind == "ratio":
        return paired_ratio_difference(*_split_ratio(a), *_split_ratio(b))
    return paired_mean_difference(a, b)  # type: ignore[arg-type]  # only a ratio's items are pairs; these are numbers


def _split_ratio(items: list[ItemValue]) -> tuple[list[float | None], list[float | None]]:
    # A ratio's items are (numerator, denominator) pairs, or None for an item without one.
    nums = [v[0] if isinstance(v, tuple) else None for v in items]
    dens = [v[1] if isinstance(v, tuple) else None for v in items]
    return nums, dens


def build_rows(
    metrics: Sequence[Metric], values: MetricValues, labels: Sequence[str], delta_pair: tuple[str, str] | None
) -> list[Row]:
    """A row per metric that has a value for at least one model; Δ = model - baseline of `delta_pair`."""
    rows = []
    for metric in metrics:
        by_label = values.get(metric.key, {})
        cells = {label: aggregate(metric, by_label[label]) if label in by_label else None for label in labels}
        if all(cell is None for cell in cells.values()):
            continue
        delta = None
        if delta_pair is not None and all(label in by_label for label in delta_pair):
            delta = difference(metric, by_label[delta_pair[0]], by_label[delta_pair[1]])
        rows.append(Row(metric, cells, delta))
    return rows


def all_deltas(metrics: Sequence[Metric], values: MetricValues, pairs: Sequence[tuple[str, str]]) -> list[Delta]:
    """The Δ of every (model, baseline) pair on every metric both models have."""
    deltas = []
    for model, baseline in pairs:
        for metric in metrics:
            by_label = values.get(metric.key, {})
            if model in by_label and baseline in by_label:
                estimate = difference(metric, by_label[model], by_label[baseline])
                if estimate is not None:
                    deltas.append(Delta(metric, model, baseline, estimate))
    return deltas


def instruction_breakdown(scores: dict[str, list[ResponseScores]]) -> dict[str, dict[str, dict[str, Estimate]]]:
    """Per instruction id, per model: the fraction of its instances followed, strict and loose (Wilson intervals,
    instances counted as independent trials)."""
    outcomes: dict[str, dict[str, dict[str, list[float]]]] = {}
    for label, responses in scores.items():
        for response in responses:
            for check in response.instructions or []:
                by_mode = outcomes.setdefault(check["id"], {}).setdefault(label, {"strict": [], "loose": []})
                by_mode["strict"].append(float(check["strict"]))
                by_mode["loose"].append(float(check["loose"]))
    breakdown: dict[str, dict[str, dict[str, Estimate]]] = {}
    for instruction_id in sorted(outcomes):
        for label, by_mode in outcomes[instruction_id].items():
            estimates = {mode: wilson_ci(values) for mode, values in by_mode.items()}
            breakdown.setdefault(instruction_id, {})[label] = {m: e for m, e in estimates.items() if e is not None}
    return breakdown


def format_estimate(estimate: Estimate | None, digits: int = 3) -> str:
    """`0.450 [0.350, 0.550]`; an en dash when there is no value."""
    if estimate is None:
        return "–"
    return f"{estimate.value:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def format_delta(estimate: Estimate | None, digits: int = 3) -> str:
    """`+0.100 [+0.020, +0.180]`: signed, so the direction reads at a glance."""
    if estimate is None:
        return "–"
    return f"{estimate.value:+.{digits}f} [{estimate.low:+.{digits}f}, {estimate.high:+.{digits}f}]"
