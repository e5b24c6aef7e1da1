"""The "what changed" paragraph: a plain-language reading of the table's Δ column, written from the numbers only.

It names the model and baseline of the table's Δ pair (by default dpo over sft) and goes through what a practitioner
asks of an alignment step, always in the same order and always with the 95% intervals: instruction following, length,
drift from the base model (KL), the pairwise win rates, then every other metric whose interval excludes zero and the
ones that did not move. A change counts only when its interval excludes zero; "did not change" means the interval
includes zero at this sample size, not that the effect is zero, and the paragraph says so.
"""

from __future__ import annotations

from .results import EvalReport
from .stats import Estimate
from .table import Row, judge_label

# The rows the paragraph always reports on (when present), in reading order; everything else is summarised after.
# report.md's table of the other comparisons has these as its columns.
HEADLINE_METRICS = (
    "ifeval/prompt_strict",
    "ifeval/prompt_strict_unseen",
    "ifeval/instruction_strict",
    "length/tokens",
    "kl",
)


def _fmt(estimate: Estimate, digits: int, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{estimate.value:{sign}.{digits}f} [{estimate.low:{sign}.{digits}f}, {estimate.high:{sign}.{digits}f}]"


def _verdict(delta: Estimate, higher_is_better: bool | None) -> str:
    if not delta.excludes_zero:
        return "no change distinguishable from zero"
    if higher_is_better is None:
        return "higher" if delta.value > 0 else "lower"
    return "better" if (delta.value > 0) == higher_is_better else "worse"


def _row_sentence(row: Row, model: str, baseline: str) -> str | None:
    ours, theirs = row.cells.get(model), row.cells.get(baseline)
    if ours is None or theirs is None or row.delta is None:
        return None
    digits = row.metric.digits
    return (
        f"{row.metric.name}: {_fmt(theirs, digits)} for {baseline}, {_fmt(ours, digits)} for {model}; "
        f"Δ {_fmt(row.delta, digits, signed=True)}, {_verdict(row.delta, row.metric.higher_is_better)}."
    )


def what_changed(report: EvalReport) -> str | None:
    """The paragraph for the table's Δ pair, or None when the evaluation has no baseline pair."""
    if report.delta_pair is None:
        return None
    model, baseline = report.delta_pair
    rows = {row.metric.key: row for row in report.rows}
    sentences = [
        f"What {model} changed over {baseline}, on {len(report.prompts)} prompts (95% intervals; Δ is "
        f"{model} minus {baseline}, paired over prompts)."
    ]
    for key in HEADLINE_METRICS:
        if key in rows and (sentence := _row_sentence(rows[key], model, baseline)):
            sentences.append(sentence)
    if (
        "kl" in rows
        and (base_kl := rows["kl"].cells.get(report.labels[0])) is not None
        and report.labels[0] not in (model, baseline)
    ):
        sentences.append(f"(The base model's KL from itself is {base_kl.value:.2f}: the estimator's floor.)")
    for result in report.pairwise:
        if (result.model, result.baseline) != (model, baseline) or result.win_rate is None:
            continue
        c = result.counts
        coin_flip = result.win_rate.low <= 0.5 <= result.win_rate.high
        verdict = (
            "no preference distinguishable from a coin flip"
            if coin_flip
            else f"{model} preferred"
            if result.win_rate.value > 0.5
            else f"{baseline} preferred"
        )
        lc = f", length-controlled {_fmt(result.lc_win_rate, 3)}" if result.lc_win_rate is not None else ""
        sentences.append(
            f"Judged pairwise by {judge_label(result.judge)}, {model} wins {_fmt(result.win_rate, 3)} against "
            f"{baseline}{lc} ({c['wins']} wins, {c['ties']} ties, {c['losses']} losses, "
            f"{c['failures']} judge failures): {verdict}."
        )
    others = [row for key, row in rows.items() if key not in HEADLINE_METRICS and row.delta is not None]
    moved = [s for row in others if row.delta.excludes_zero and (s := _row_sentence(row, model, baseline))]
    still = [row.metric.name for row in others if not row.delta.excludes_zero]
    if moved:
        sentences.append("Also changed: " + " ".join(moved))
    if still:
        sentences.append("Not distinguishable from zero at this sample size: " + "; ".join(still) + ".")
    return " ".join(sentences)


def other_pairs_told_apart(report: EvalReport) -> str | None:
    """For each baseline pair besides the table's Δ pair (sft over base; in `prefalign compare`, every method over SFT
    and over each other): which headline metrics and win rates its 95% intervals tell apart, and which they cannot."""
    pairs = [p for p in dict.fromkeys((d.model, d.baseline) for d in report.deltas) if p != report.delta_pair]
    sentences = []
    for model, baseline in pairs:
        deltas = {d.metric.key: d for d in report.deltas if (d.model, d.baseline) == (model, baseline)}
        apart, not_apart = [], []
        for key in HEADLINE_METRICS:
            if (delta := deltas.get(key)) is not None:
                text = f"{delta.metric.name} {_fmt(delta.estimate, delta.metric.digits, signed=True)}"
                if delta.significant:
                    apart.append(f"{text} ({_verdict(delta.estimate, delta.metric.higher_is_better)})")
                else:
                    not_apart.append(text)
        for result in report.pairwise:
            if (result.model, result.baseline) == (model, baseline) and result.win_rate is not None:
                text = f"win rate by {judge_label(result.judge)} {_fmt(result.win_rate, 3)}"
                coin_flip = result.win_rate.low <= 0.5 <= result.win_rate.high
                (not_apart if coin_flip else apart).append(text)
        if apart or not_apart:
            sentence = f"{model} over {baseline}: told apart: {'; '.join(apart) or 'nothing'}"
            if not_apart:
                sentence += f"; not told apart: {'; '.join(not_apart)}"
            sentences.append(sentence + ".")
    if not sentences:
        return None
    preamble = (
        "The other comparisons (95% intervals; a difference is told apart when its interval excludes zero, a win "
        "rate when its interval excludes 0.5)."
    )
    return " ".join([preamble, *sentences])
