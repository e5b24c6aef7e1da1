"""The "what changed" paragraph is written from the table's numbers, with intervals, and says what did not move."""

from __future__ import annotations

from prefalign.evaluate.narrative import what_changed
from prefalign.evaluate.pairwise import PairwiseResult
from prefalign.evaluate.prompt_set import EvalPrompt
from prefalign.evaluate.results import EvalReport
from prefalign.evaluate.stats import Estimate
from prefalign.evaluate.table import HEURISTIC_METRICS, IFEVAL_METRICS, Metric, Row

LABELS = ["base", "sft", "dpo"]


def _e(value: float, low: float, high: float, n: int = 100) -> Estimate:
    return Estimate(value, low, high, n, "test")


def _report(rows: list[Row], pairwise: list[PairwiseResult], delta_pair=("dpo", "sft")) -> EvalReport:
    return EvalReport(
        labels=LABELS,
        models={},
        prompts=[EvalPrompt(str(i), "p") for i in range(100)],
        generations={},
        scores={},
        rows=rows,
        delta_pair=delta_pair,
        deltas=[],
        pairwise=pairwise,
        instructions={},
        heldout=[],
        heldout_info={},
        kl={},
        settings={},
        runs={},
        timings={},
        generation_counts={},
        judge_stats={},
    )


def test_paragraph_reports_each_headline_with_intervals_and_verdicts() -> None:
    prompt_strict, tokens = IFEVAL_METRICS[0], HEURISTIC_METRICS[0]
    repetition = next(m for m in HEURISTIC_METRICS if m.key == "repetition")
    kl = Metric("kl", "KL from base (nats/response, sampled)", "mean", None, 2)
    rows = [
        Row(
            prompt_strict,
            {"base": _e(0.2, 0.13, 0.29), "sft": _e(0.3, 0.22, 0.4), "dpo": _e(0.42, 0.33, 0.52)},
            _e(0.12, 0.04, 0.2),
        ),
        Row(tokens, {"base": _e(90, 80, 100), "sft": _e(95, 85, 105), "dpo": _e(97, 88, 106)}, _e(2, -3, 7)),
        Row(kl, {"base": _e(0.01, 0.0, 0.02), "sft": _e(1.5, 1.2, 1.8), "dpo": _e(2.5, 2.1, 2.9)}, _e(1.0, 0.7, 1.3)),
        Row(
            repetition,
            {"base": _e(0.1, 0.08, 0.12), "sft": _e(0.1, 0.08, 0.12), "dpo": _e(0.2, 0.17, 0.23)},
            _e(0.1, 0.07, 0.13),
        ),
    ]
    win = PairwiseResult(
        "dpo", "sft", "verifier", [1.0] * 30 + [0.5] * 50 + [0.0] * 20, 0, [], 0, _e(0.55, 0.49, 0.61), None
    )
    text = what_changed(_report(rows, [win]))
    assert text.startswith("What dpo changed over sft, on 100 prompts")
    assert (
        "IFEval prompt-level accuracy (strict): 0.300 [0.220, 0.400] for sft, 0.420 [0.330, 0.520] for dpo; "
        "Δ +0.120 [+0.040, +0.200], better."
    ) in text
    assert "Δ +2.0 [-3.0, +7.0], no change distinguishable from zero." in text
    assert "Δ +1.00 [+0.70, +1.30], higher." in text  # KL has no better direction: it is reported as it is
    assert "(The base model's KL from itself is 0.01: the estimator's floor.)" in text
    assert (
        "Judged pairwise by verifier, dpo wins 0.550 [0.490, 0.610] against sft (30 wins, 50 ties, 20 losses, "
        "0 judge failures): no preference distinguishable from a coin flip."
    ) in text
    assert "Also changed: Repeated 4-grams (fraction)" in text and "Δ +0.100 [+0.070, +0.130], worse." in text


def test_no_paragraph_without_a_baseline_pair() -> None:
    assert what_changed(_report([], [], delta_pair=None)) is None
