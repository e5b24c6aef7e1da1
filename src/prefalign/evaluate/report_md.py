"""`report.md`: the table with intervals, win rates, held-out accuracy, per-instruction results and how it was measured.

`markdown_summary` is what the command prints at the end; `render_markdown` adds the details below it and ends with the
"what changed" paragraph (`narrative.what_changed`).
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import write_text_atomic
from .metrics import REFUSAL_WINDOW, REPETITION_N
from .narrative import HEADLINE_METRICS, other_pairs_told_apart, what_changed
from .results import EvalReport, kl_coverage
from .stats import LEVEL, RESAMPLES, SEED
from .table import format_delta, format_estimate, judge_label


def _cell(text: object) -> str:
    """A table cell: a `|` would end the cell and a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _decoding(report: EvalReport) -> str:
    g = report.settings["generation"]
    how = "greedy decoding"
    if g["temperature"] > 0:
        how = f"sampling at temperature {g['temperature']}, top-p {g['top_p']}"
    precision = g.get("dtype", "each model's own")  # reports written before the setting existed have none
    return (
        f"{how}, at most {g['max_new_tokens']} new tokens, seed {g['seed']}, prompt format {g['prompt_format']}, "
        f"precision {precision}"
    )


def main_table(report: EvalReport) -> list[str]:
    header = ["Metric", *report.labels]
    if report.delta_pair:
        model, baseline = report.delta_pair
        header.append(f"Δ {model} over {baseline} (95% CI)")
    rows = []
    for row in report.rows:
        digits = row.metric.digits
        line = [row.metric.name, *(format_estimate(row.cells.get(label), digits) for label in report.labels)]
        if report.delta_pair:
            line.append(format_delta(row.delta, digits))
        rows.append(line)
    return _table(header, rows)


def other_pairs_table(report: EvalReport) -> list[str]:
    """Δ (paired bootstrap) of every baseline pair but the main table's, one row per pair, on the headline metrics
    this evaluation has: e.g. sft over base beside the main table's dpo over sft."""
    every = dict.fromkeys((d.model, d.baseline) for d in report.deltas)
    pairs = [pair for pair in every if pair != report.delta_pair]  # in baseline order
    found = {(d.model, d.baseline, d.metric.key): d for d in report.deltas}
    metrics = {d.metric.key: d.metric for d in report.deltas if (d.model, d.baseline) in pairs}
    columns = [key for key in HEADLINE_METRICS if key in metrics]  # none where no pair has a value (KL of sft:base)
    if not pairs or not columns:
        return []
    rows = []
    for model, baseline in pairs:
        cells = []
        for key in columns:
            delta = found.get((model, baseline, key))
            cells.append(format_delta(delta.estimate if delta else None, metrics[key].digits))
        rows.append([f"{model} over {baseline}", *cells])
    return [
        "",
        "## The other comparisons",
        "",
        "Δ of each other baseline pair, paired bootstrap over prompts (95% interval).",
        "",
        *_table(["Δ", *(metrics[key].name for key in columns)], rows),
    ]


def markdown_summary(report: EvalReport) -> str:
    """Title, settings, the main table, and the pairwise and held-out results."""
    s = report.settings
    lines = [
        f"# Evaluation: {' vs '.join(report.labels)}",
        "",
        f"{len(report.prompts)} prompts from `{s['prompts']}`; {_decoding(report)}; the same for every model.",
        f"Every number: value [{LEVEL:.0%} interval]. Proportions: Wilson interval; means and ratios: percentile "
        f"bootstrap over prompts ({RESAMPLES} resamples, seed {SEED}); Δ: paired bootstrap over prompts. "
        "– : not applicable.",
        "",
        *main_table(report),
        *other_pairs_table(report),
    ]
    if report.pairwise:
        lines += [
            "",
            "## Pairwise win rates",
            "",
            "Ties count half; an LLM judge asks in both orders and a verdict that flips is a tie. LC: length-"
            "controlled (AlpacaEval-style logistic fit on the word-count difference; the win rate at equal "
            "length).",
            "",
        ]
        rows = []
        for r in report.pairwise:
            c = r.counts
            counts = [str(c[key]) for key in ("wins", "ties", "losses", "failures", "inconsistent")]
            rows.append(
                [
                    r.model,
                    r.baseline,
                    judge_label(r.judge),
                    format_estimate(r.win_rate),
                    format_estimate(r.lc_win_rate),
                    *counts,
                ]
            )
        lines += _table(
            [
                "Model",
                "Baseline",
                "Judge",
                "Win rate",
                "LC win rate",
                "Wins",
                "Ties",
                "Losses",
                "Failed",
                "Inconsistent",
            ],
            rows,
        )
    lines += _heldout_lines(report)
    return "\n".join(lines) + "\n"


def _heldout_lines(report: EvalReport) -> list[str]:
    """The held-out preference accuracy section: each scorer's accuracy on the held-out pairs (none without pairs)."""
    if not report.heldout:
        return []
    info = report.heldout_info
    implicit = info["reference"] is not None  # else --no-implicit-reward: no model ran over the pairs
    lines = [
        "",
        "## Held-out preference accuracy",
        "",
        f"{info['pairs']} pairs from `{info['source']}`"
        + (f" ({info['dropped'] or 0} dropped by tokenization)" if implicit else "")
        + ". A pair counts 1 when the scorer ranks chosen above rejected, 0.5 on a tie, 0 otherwise (RewardBench "
        "style)."
        + (
            " Implicit reward: β·(log π/π_ref(chosen) − log π/π_ref(rejected)), summed log-probs."
            if implicit
            else " No implicit reward was computed (--no-implicit-reward)."
        ),
        "",
    ]
    rows = []
    for h in report.heldout:
        scored = h.accuracy.n if h.accuracy else 0
        rows.append(
            [
                judge_label(h.scorer) if h.scorer in report.settings.get("judges", []) else h.scorer,
                format_estimate(h.accuracy),
                format_estimate(h.margin),
                str(scored),
            ]
        )
    return lines + _table(["Scorer", "Accuracy", "Mean margin", "Pairs scored"], rows)


def render_markdown(report: EvalReport) -> str:
    lines = [markdown_summary(report).rstrip("\n")]
    if report.instructions:
        lines += [
            "",
            "## Instruction following by instruction",
            "",
            "Fraction of the instances of each instruction followed (strict), with Wilson intervals; n = instances.",
            "",
        ]
        rows = []
        for instruction, by_label in report.instructions.items():
            n = next((e["strict"].n for e in by_label.values() if "strict" in e), 0)
            cells = [format_estimate(by_label.get(label, {}).get("strict")) for label in report.labels]
            rows.append([instruction, str(n), *cells])
        lines += _table(["Instruction", "n", *report.labels], rows)
    lines += ["", "## Models", ""]
    rows = []
    for label in report.labels:
        m, counts = report.models[label], report.generation_counts.get(label, {})
        loaded = m["path"] + (f" + adapter {m['adapter']}" if m["adapter"] else "")
        rows.append(
            [label, m["spec"], loaded, m["identity"][:12], f"{counts.get('generated', 0)} / {counts.get('cached', 0)}"]
        )
    lines += _table(["Label", "Spec", "Loaded from", "Identity", "Answers generated / cached"], rows)
    judges = report.settings.get("judges", [])
    if judges:
        lines += ["", "## Judges", ""]
        lines += _table(["Judge", "Spec"], [[judge_label(name), f"`{name}`"] for name in judges])
    lines += ["", "## How the numbers are measured", "", *(f"- {line}" for line in _method_notes(report))]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    lines += ["", "## Wall time", ""]
    lines += _table(["Stage", "Seconds"], [[stage, f"{seconds:.1f}"] for stage, seconds in report.timings.items()])
    paragraphs = [text for text in (what_changed(report), other_pairs_told_apart(report)) if text]
    if paragraphs:
        lines += ["", "## What changed", "", "\n\n".join(paragraphs)]
    return "\n".join(lines) + "\n"


def _method_notes(report: EvalReport) -> list[str]:
    s = report.settings
    notes = [
        "IFEval accuracies (Zhou et al. 2023): prompt-level = all of a prompt's instructions followed; instruction-"
        "level = instructions followed / instructions; loose forgives a preamble, a sign-off and markdown `*`.",
        "Length: generated tokens (including the end-of-turn token) and whitespace-separated words.",
        f"Refusal: one of a fixed phrase list (`prefalign.evaluate.metrics.REFUSAL_PHRASES`) in the first "
        f"{REFUSAL_WINDOW} characters.",
        f"Repetition: 1 − distinct/total word {REPETITION_N}-grams of the response.",
    ]
    unseen = sum(p.unseen_phrasing for p in report.prompts)
    if unseen:
        notes.append(
            f"Unseen phrasings: the {unseen} prompts whose instructions are all worded in phrasings no train prompt "
            "uses (`unseen_phrasing`); a gain there is a gain on the instruction, not on one wording of it."
        )
    kl = s["kl"]
    if report.kl:
        notes.append(
            f"KL from {kl['base']}: KL(model ‖ {kl['base']}) over the first {kl['max_new_tokens']} response tokens, "
            f"in nats per response: the exact next-token KL over the vocabulary, summed along responses sampled from "
            f"the model at temperature 1 ({kl['samples_per_prompt']} per prompt), averaged per prompt"
            f"{kl_coverage(report)}."
        )
    return notes


def write_markdown(report: EvalReport, path: Path) -> Path:
    write_text_atomic(path, render_markdown(report))
    return path
