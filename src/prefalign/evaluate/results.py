"""Everything an evaluation found, as one object the report writers (and a "what changed" summary) read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..generate import Generation
from .implicit_reward import HeldoutAccuracy
from .kl import KLEstimate
from .pairwise import PairwiseResult
from .prompt_set import EvalPrompt
from .scoring import ResponseScores
from .stats import Estimate
from .table import Delta, Row


@dataclass
class EvalReport:
    labels: list[str]  # table columns, base first
    models: dict[str, dict[str, Any]]  # label -> spec, identity, what was loaded
    prompts: list[EvalPrompt]
    generations: dict[str, list[Generation]]
    scores: dict[str, list[ResponseScores]]
    rows: list[Row]
    delta_pair: tuple[str, str] | None  # (model, baseline) of the table's Δ column
    deltas: list[Delta]  # every baseline pair, every metric
    pairwise: list[PairwiseResult]
    instructions: dict[str, dict[str, dict[str, Estimate]]]  # instruction id -> label -> strict/loose
    heldout: list[HeldoutAccuracy]
    heldout_info: dict[str, Any]  # source, pairs, dropped, reference, beta
    kl: dict[str, KLEstimate]
    settings: dict[str, Any]
    runs: dict[str, str]  # label -> training run directory (for curves)
    timings: dict[str, float]
    generation_counts: dict[str, dict[str, int]]  # label -> generated / cached prompts (greedy and KL samples)
    judge_stats: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The aggregates (per-response data goes to responses.jsonl)."""
        return {
            "labels": self.labels,
            "models": self.models,
            "prompts": len(self.prompts),
            "settings": self.settings,
            "table": {
                "delta": list(self.delta_pair) if self.delta_pair else None,
                "rows": [row.to_json() for row in self.rows],
            },
            "deltas": [delta.to_json() for delta in self.deltas],
            "pairwise": [result.to_json() for result in self.pairwise],
            "instructions": {
                instruction: {label: {mode: e.to_json() for mode, e in modes.items()} for label, modes in rows.items()}
                for instruction, rows in self.instructions.items()
            },
            "heldout": {**self.heldout_info, "scorers": [h.to_json() for h in self.heldout]},
            "kl": {
                label: {
                    "mean_kl": sum(e.kl) / len(e.kl),
                    "mean_logratio": sum(e.logratio) / len(e.logratio),
                    "mean_sample_tokens": sum(e.tokens) / len(e.tokens),
                }
                for label, e in self.kl.items()
                if e.kl
            },
            "runs": self.runs,
            "timings_seconds": self.timings,
            "generation": self.generation_counts,
            "judge_stats": self.judge_stats,
            "notes": self.notes,
        }


def kl_coverage(report: EvalReport) -> str:
    """`, on the first N prompts` where the KL covers fewer prompts than the table (`--kl-prompts`), else nothing."""
    covered = report.settings.get("kl", {}).get("prompts")
    return f", on the first {covered} prompts" if covered and covered < report.settings["num_prompts"] else ""


def key_deltas(report: EvalReport, *, significant_only: bool = False) -> list[Delta]:
    """The changes of each model over its baseline (every baseline pair, every metric), with 95% intervals.

    `Delta.significant` says whether the interval excludes zero and `Delta.improved` whether the change goes the
    metric's better way; a "what changed" paragraph is written from these, plus `report.pairwise` win rates.
    """
    return [d for d in report.deltas if d.significant or not significant_only]
