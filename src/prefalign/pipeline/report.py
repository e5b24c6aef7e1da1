"""The demo's own report: what each stage produced and how long it took, then the three-way evaluation report.

`output_dir/report.md` is the stage summary followed by the evaluation's report (which ends with the "what changed"
paragraph); `output_dir/report.html` is the evaluation's page (self-contained: its figures are embedded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import jsonl_lines, write_text_atomic
from ..pairs.build import SYNTHESIZED
from ..stages import STAGE_FILE, StageResult
from .config import DemoConfig


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _training_line(run: Path, keys: tuple[tuple[str, str], ...]) -> str:
    summary = _read(run / "summary.json")
    if not summary:
        return ""
    parts = [f"{summary['steps']} step{'s' if summary['steps'] != 1 else ''}"]
    for key, name in keys:
        for split in ("train", "eval"):
            value = summary.get(split, {}).get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{split} {name} {value:.3f}")
    return ", ".join(parts)


_DPO_KEYS = (("rewards/margins", "reward gap"), ("rewards/accuracies", "accuracy"), ("kl", "KL"))


def _is_round(name: str) -> bool:
    """Whether `name` is a stage of a DPO round after the first: pairs_2, dpo_2..."""
    stage, _, round_ = name.partition("_")
    return stage in ("pairs", "dpo") and round_.isdigit()


def _round_pairs_fact(pairs: dict[str, Any]) -> str:
    """What a later round's pairs stage made: its pairs are the previous DPO model's samples."""
    set_aside = pairs["heldout_pairs"] + pairs["heldout_rewrites"]
    synthesized = ", ".join(
        f"{pairs[key]} {what}"
        for key, what in (("rewrites", "rewrites"), ("contrasts", "contrast pairs"))
        if pairs.get(key)
    )
    return (
        f"from {pairs['prompts']} prompts, sampled from the previous round's DPO model: {pairs['ties']} ties and "
        f"{pairs['judge_failures']} judge failures skipped; {pairs['pairs']} pairs"
        + (f" ({synthesized})" if synthesized else "")
        + f", {pairs['train_pairs']} trained on"
        + (f", {set_aside} of the first round's held-out prompts set aside" if set_aside else "")
    )


def _stage_facts(out: Path, rounds: tuple[str, ...] = ()) -> dict[str, str]:
    """One line per stage on what it produced, read back from its files; `rounds`: this run's stages of DPO rounds
    after the first (pairs_2, dpo_2...)."""
    facts = {"base": _read(out / "base" / "model.json").get("path", "")}
    prompts = out / "prompts"
    if prompts.exists():
        counts = [sum(1 for _ in jsonl_lines(prompts / f"{name}.jsonl")) for name in ("train", "heldout")]
        facts["prompts"] = f"{counts[0]} train prompts, {counts[1]} held-out prompts"
    sampling = _read(out / "sft_data" / "sampling.json")
    if "kept" in sampling:
        rewritten = (
            f" ({sampling['rewritten']} of them rewrites of failing samples, {sampling.get('trimmed', 0)} trimmed "
            "back to a complete sentence)"
            if sampling.get("rewritten")
            else ""
        )
        facts["sft_data"] = (
            f"{sampling['kept']} of {sampling['prompts']} prompts kept{rewritten}: {sampling['passed']} of "
            f"{sampling['samples']} samples passed every instruction check, {sampling['truncated']} "
            "were cut at the token limit"
            + (
                f", {sampling['repetitive']} passed but repeat too much to be taught"
                if sampling.get("repetitive")
                else ""
            )
        )
    elif sampling:
        facts["sft_data"] = f"your data: {sampling.get('source')}"
    facts["sft"] = _training_line(out / "sft", (("loss", "loss"),))
    pairs = _read(out / "pairs" / "summary.json")
    if pairs:
        facts["pairs"] = _pairs_fact(out / "pairs", pairs)
    facts["reward"] = _training_line(
        out / "reward", (("rewards/accuracies", "accuracy"), ("rewards/margins", "margin"))
    )
    for name in ("dpo", *rounds):
        if name.startswith("dpo"):
            facts[name] = _training_line(out / name, _DPO_KEYS)
        elif pairs := _read(out / name / "summary.json"):
            facts[name] = _round_pairs_fact(pairs)
    evaluation = _read(out / "eval" / "report.json")
    if evaluation:
        facts["eval"] = f"{' vs '.join(evaluation['labels'])} on {evaluation['prompts']} prompts: below"
    return facts


def _pairs_fact(directory: Path, pairs: dict[str, Any]) -> str:
    """What the pairs stage made: judged pairs, what was skipped and why, rewrite, contrast and mirror pairs (counted
    apart: they are synthesised, not sampled), and the train / held-out split."""
    split = f"{pairs['pairs']} pairs, {pairs['train_pairs']} train / {pairs['heldout_pairs']} held out"
    if pairs.get("source") != "built":
        return f"from {pairs.get('source')}: {split}"
    small_gaps = f", {pairs['small_gaps']} below the minimum score gap" if pairs.get("small_gaps") else ""
    repetitive = f", {pairs['repetitive']} whose chosen answer repeats too much" if pairs.get("repetitive") else ""
    text = (
        f"from {pairs['prompts']} prompts: {pairs['ties']} ties and {pairs['judge_failures']} judge failures"
        f"{small_gaps}{repetitive} skipped; {split}"
    )
    if not pairs.get("config", {}).get("rewrite"):
        return text
    trained = _source_counts(directory / "train.jsonl")
    contrasts = (
        f" and {pairs['contrasts']} contrast pairs (a sample as it was over the same sample with a case, quote or "
        f"comma edit its prompt did not ask for; {trained['contrast']} trained on by DPO, none by the reward model)"
        if pairs.get("contrasts")
        else ""
    )
    mirrors = (
        f" and {pairs['mirrors']} mirror pairs (a contrast pair the other way round, under its prompt with the "
        f"edit's instruction added; {trained['mirror']} trained on)"
        if pairs.get("mirrors")
        else ""
    )
    return (
        f"{text}; {pairs.get('rewrites', 0)} of the pairs are rewrites of a sample to follow the instructions it "
        f"failed ({trained['rewrite']} trained on){contrasts}{mirrors}; the {pairs.get('heldout_rewrites', 0)} of "
        "these of held-out prompts are set aside, so held-out pairs are judged samples only; the rest are judged "
        "samples"
    )


def _source_counts(path: Path) -> dict[str, int]:
    """The rewrite pairs (source "rewrite:..."), contrast pairs ("contrast:...") and mirror pairs ("mirror:...") of a
    pairs file."""
    counts = dict.fromkeys(SYNTHESIZED, 0)
    if path.exists():
        for _, raw in jsonl_lines(path):
            kind = str(json.loads(raw).get("source", "")).split(":")[0]
            if kind in counts:
                counts[kind] += 1
    return counts


TRAINING_STAGES = ("sft", "reward", "dpo")


def training_warnings(out: Path, stages: tuple[str, ...] = TRAINING_STAGES) -> list[str]:
    """The report's lines on what the training stages warned about (a divergence under `--on-divergence warn`, a
    falling chosen log-probability, truncation...): nothing a run flagged stays in its summary.json alone. `stages`:
    the training stages of this run (a later DPO round's too: dpo_2...)."""
    warned = [
        f"- {stage}: {warning}"
        for stage in stages
        for warning in _read(out / stage / "summary.json").get("warnings", [])
    ]
    if not warned:
        return ["No training stage warned.", ""]
    return ["## Training warnings", "", *warned, ""]


def write_demo_report(out: Path, results: list[StageResult], config: DemoConfig) -> Path:
    """Write output_dir/report.md and report.html; return the .md path."""
    rounds = tuple(r.name for r in results if _is_round(r.name))
    facts = _stage_facts(out, rounds)
    rows = []
    total = 0.0
    for result in results:
        built = _read(result.directory / STAGE_FILE).get("seconds", 0.0)
        total += built
        state = "skipped (unchanged)" if result.skipped else "ran"
        rows.append(f"| {result.name} | {facts.get(result.name, '')} | {built:.0f} | {state} |")
    lines = [
        "# prefalign demo: base → SFT → preference pairs → reward model → DPO"
        + (f" (×{config.rounds} rounds, each on pairs of the last DPO model)" if config.rounds > 1 else "")
        + " → evaluation",
        "",
        f"Base model `{config.model}`; output in `{out}`."
        + (" Quick profile (`--quick`): every stage small." if config.quick else ""),
        "",
        "| Stage | Result | Seconds (when built) | This run |",
        "|---|---|---:|---|",
        *rows,
        f"| total | | {total:.0f} | |",
        "",
        *training_warnings(out, (*TRAINING_STAGES, *(name for name in rounds if name.startswith("dpo")))),
    ]
    evaluation = out / "eval" / "report.md"
    if evaluation.exists():
        # The evaluation's headings move one level down under this report's title.
        body = evaluation.read_text(encoding="utf-8")
        lines += ["#" + line if line.startswith("#") else line for line in body.splitlines()]
        write_text_atomic(out / "report.html", (out / "eval" / "report.html").read_text(encoding="utf-8"))
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
