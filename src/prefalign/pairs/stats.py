"""`prefalign pairs stats`: what a pairs file holds, and whether the judge simply preferred longer answers.

Length bias is the first thing to check in preference data: when the chosen answer is nearly always the longer one, a
policy trained on the pairs learns to be long, whatever the judge meant. So next to the counts, the tie rate and the
score distributions, the stats compare chosen and rejected lengths and give the fraction of pairs whose chosen answer
is longer. Fields written by `pairs build` (scores, sampling settings, the verifier's per-instruction results) are
summarised when present; any preference file loads, with whatever of them it has.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..data.loading import load_preferences
from ..data.records import Text
from ..errors import DataError, PrefalignError
from ..scoring.preference import preference_margin
from .build import SKIP_STATUSES, SYNTHESIZED, skipped_path


def pair_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Statistics of the pairs file `path` and of its skipped file (`path` + ".skipped.jsonl") when there is one."""
    path = Path(path)
    if not path.is_file():
        raise PrefalignError(f"{path}: pairs file not found")
    records, bad_lines = [], 0
    # A run whose every prompt tied leaves an empty pairs file, which the loader refuses; it still has stats.
    if path.read_bytes().strip():
        data = load_preferences(path, max_bad_fraction=None)
        records, bad_lines = data.records, data.report.rejected
    stats: dict[str, Any] = {"source": str(path), "pairs": len(records), "bad_lines": bad_lines}
    # `pairs build --rewrite [--contrast [--mirror]]` writes rewrite pairs ("rewrite:..."), contrast pairs
    # ("contrast:...") and mirror pairs ("mirror:...") besides the judged ones ("judge") for a prompt.
    sources = Counter(str(record.extra["source"]) for record in records if "source" in record.extra)
    if sources:
        stats["by_source"] = dict(sorted(sources.items()))
    rewrites = sum(count for source, count in sources.items() if source.split(":")[0] in SYNTHESIZED)
    skipped = _skip_counts(skipped_path(path))
    if skipped is not None:
        prompts = len(records) - rewrites + sum(skipped.values())
        stats.update(skipped=skipped, prompts=prompts, tie_rate=skipped["tie"] / prompts if prompts else 0.0)
    if not records:
        return stats
    extras = [record.extra for record in records]
    chosen_scores = [e["chosen_score"] for e in extras if _is_number(e.get("chosen_score"))]
    rejected_scores = [e["rejected_score"] for e in extras if _is_number(e.get("rejected_score"))]
    if chosen_scores or rejected_scores:
        margins = [
            preference_margin(e["chosen_score"], e["rejected_score"])
            for e in extras
            if _is_number(e.get("chosen_score")) and _is_number(e.get("rejected_score"))
        ]
        stats["scores"] = {
            "chosen": _summary(chosen_scores),
            "rejected": _summary(rejected_scores),
            "margin": _summary(margins),
        }
    chosen_text = [_text(record.chosen) for record in records]
    rejected_text = [_text(record.rejected) for record in records]
    stats["length"] = {
        unit: {
            "chosen": _summary([measure(t) for t in chosen_text]),
            "rejected": _summary([measure(t) for t in rejected_text]),
        }
        for unit, measure in (("chars", len), ("words", lambda t: len(t.split())))
    }
    pairs = len(records)
    stats["chosen_longer"] = sum(len(c) > len(r) for c, r in zip(chosen_text, rejected_text)) / pairs
    stats["same_length"] = sum(len(c) == len(r) for c, r in zip(chosen_text, rejected_text)) / pairs
    samples = [
        (e["chosen_sample"], e["rejected_sample"])
        for e in extras
        if isinstance(e.get("chosen_sample"), dict) and isinstance(e.get("rejected_sample"), dict)
    ]
    if samples:
        by_temperature = Counter(str(chosen.get("temperature")) for chosen, _ in samples)
        stats["chosen_by_temperature"] = dict(sorted(by_temperature.items()))
        stats["truncated"] = {
            side: sum(pair[k].get("finish_reason") == "length" for pair in samples) / len(samples)
            for k, side in enumerate(("chosen", "rejected"))
        }
    instructions = _instruction_pass_rates(extras)
    if instructions:
        stats["instructions"] = instructions
    return stats


def _skip_counts(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    counts = dict.fromkeys(SKIP_STATUSES, 0)
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                status = json.loads(line).get("status")
            except (json.JSONDecodeError, AttributeError):
                raise DataError(f"{path}:{number}", "not a skip record (a JSON object with a `status`)") from None
            if status not in counts:
                raise DataError(f"{path}:{number}", f"unknown status {status!r} (known: {', '.join(SKIP_STATUSES)})")
            counts[status] += 1
    return counts


def _instruction_pass_rates(extras: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per instruction id: pairs it appears in, and how often chosen and rejected follow it (strict and loose), from
    the verifier's per-instruction results in `judge_details`."""
    passes: dict[str, list[dict[str, bool]]] = defaultdict(list)
    for extra in extras:
        details = extra.get("judge_details")
        if not isinstance(details, dict):
            continue
        chosen, rejected = details.get("chosen"), details.get("rejected")
        if not (isinstance(chosen, dict) and isinstance(rejected, dict)):
            continue
        chosen_results, rejected_results = chosen.get("instructions"), rejected.get("instructions")
        if not (isinstance(chosen_results, list) and isinstance(rejected_results, list)):
            continue
        for c, r in zip(chosen_results, rejected_results):
            passes[c["id"]].append(
                {
                    "chosen_strict": bool(c["strict"]),
                    "rejected_strict": bool(r["strict"]),
                    "chosen_loose": bool(c["loose"]),
                    "rejected_loose": bool(r["loose"]),
                }
            )
    return {
        instruction: {"pairs": len(rows), **{key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}}
        for instruction, rows in sorted(passes.items())
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Text) -> str:
    return value if isinstance(value, str) else "\n".join(message["content"] for message in value)


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as an aligned text table."""
    lines = [f"source          {stats['source']}"]
    bad = f"; {stats['bad_lines']} bad lines skipped" if stats["bad_lines"] else ""
    lines.append(f"pairs           {stats['pairs']}{bad}")
    if "by_source" in stats:
        lines.append("by source       " + ", ".join(f"{n} {source}" for source, n in stats["by_source"].items()))
    if "skipped" in stats:
        skipped = ", ".join(f"{count} {status}" for status, count in stats["skipped"].items())
        lines.append(f"skipped         {sum(stats['skipped'].values())} ({skipped})")
        lines.append(f"tie rate        {stats['tie_rate']:.1%} of {stats['prompts']} prompts")
    else:
        lines.append("tie rate        unknown (no skipped file beside the pairs file)")
    if "scores" in stats:
        for side in ("chosen", "rejected", "margin"):
            lines.append(f"score {side:<9} {_format_summary(stats['scores'][side])}")
    if "length" in stats:
        for unit in ("chars", "words"):
            for side in ("chosen", "rejected"):
                lines.append(f"{unit} {side:<9} {_format_summary(stats['length'][unit][side])}")
        lines.append(f"chosen longer   {stats['chosen_longer']:.1%} of pairs (same length: {stats['same_length']:.1%})")
    if "chosen_by_temperature" in stats:
        counts = ", ".join(f"{t}: {n}" for t, n in stats["chosen_by_temperature"].items())
        lines.append(f"chosen sampled at temperature  {counts}")
        truncated = stats["truncated"]
        lines.append(f"cut at max_new_tokens  chosen {truncated['chosen']:.1%}, rejected {truncated['rejected']:.1%}")
    if "instructions" in stats:
        lines.append(f"{'instruction pass rates (strict / loose)':<48} pairs   chosen           rejected")
        for instruction, row in stats["instructions"].items():
            lines.append(
                f"  {instruction:<46} {row['pairs']:>5}   {row['chosen_strict']:>6.1%} / {row['chosen_loose']:<6.1%}"
                f"  {row['rejected_strict']:>6.1%} / {row['rejected_loose']:.1%}"
            )
    return "\n".join(lines)


def _format_summary(summary: dict[str, Any]) -> str:
    if not summary["count"]:
        return "no values"
    numbers = "  ".join(f"{name} {_number(summary[name])}" for name in ("mean", "median", "min", "max"))
    return f"{numbers}  (n={summary['count']})"


def _number(value: float) -> str:
    """Two decimals, without trailing zeros: 0.5, 224.54, 62."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
