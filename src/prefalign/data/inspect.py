"""What is in a preference data set: rejections, length percentiles, truncation at a max length, duplicates.

`inspect_preferences` returns a plain JSON-ready dict (what `prefalign data inspect --json` prints) and
`format_inspection` renders it as the table people read.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from .loading import PreferenceData
from .records import PreferenceRecord, Text
from .validation import ValidationReport

PERCENTILES = (50, 90, 99)
FIELDS = ("prompt", "chosen", "rejected")
# Large enough that no real pair is truncated: used to measure untruncated token lengths.
_NO_LIMIT = 10**9


def inspect_preferences(
    data: PreferenceData,
    tokenizer: Any = None,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    prompt_format: str = "auto",
    first_locations: int = 5,
) -> dict[str, Any]:
    """Summarise `data` (as loaded by `load_preferences`).

    Always: records read/kept/rejected, rejections by reason with their first `first_locations` locations, character
    lengths (p50/p90/p99/max; a message list counts its contents) and exact duplicate pairs and prompts. With a
    `tokenizer`: token lengths as `tokenize_pair` makes them (prompts rendered per `prompt_format`: "auto", "chat" or
    "raw"), and how many pairs `max_length` / `max_prompt_length` (default: `TokenizeConfig`'s) would truncate or drop.
    """
    report = data.report
    summary: dict[str, Any] = {
        "source": report.source,
        "records": {"read": report.read, "kept": report.kept, "rejected": report.rejected},
        "rejected_by_reason": summarize_rejections(report, first_locations),
        "char_lengths": {name: length_percentiles([text_length(getattr(r, name)) for r in data]) for name in FIELDS},
        "duplicates": count_duplicates(data.records),
    }
    if tokenizer is not None:
        summary.update(_token_statistics(data.records, tokenizer, max_length, max_prompt_length, prompt_format))
    return summary


def summarize_rejections(report: ValidationReport, first_locations: int = 5) -> dict[str, Any]:
    """{reason code: {"count", "description", "first_locations", "example"}}, most frequent reason first.

    `example` is the detail of the first rejection for that reason (which field, which message), to show what to fix.
    """
    summary = {}
    for reason, count in report.count_by_reason().items():
        first = next(r for r in report.rejections if r.reason is reason)
        summary[reason.code] = {
            "count": count,
            "description": reason.text,
            "first_locations": report.locations(reason, first_locations),
            "example": first.detail,
        }
    return summary


def text_length(text: Text) -> int:
    """Characters of a string, or of all message contents of a message list."""
    return len(text) if isinstance(text, str) else sum(len(message["content"]) for message in text)


def length_percentiles(lengths: list[int]) -> dict[str, int | None]:
    """Nearest-rank p50/p90/p99 and the max (None for no data): each is a length that really occurs."""
    ordered = sorted(lengths)
    stats: dict[str, int | None] = {}
    for p in PERCENTILES:
        stats[f"p{p}"] = ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)] if ordered else None
    stats["max"] = ordered[-1] if ordered else None
    return stats


def count_duplicates(records: list[PreferenceRecord]) -> dict[str, int]:
    """Records repeating an earlier (prompt, chosen, rejected) exactly, records repeating an earlier prompt, and how
    many distinct prompts occur more than once."""
    pairs = Counter(json.dumps([r.prompt, r.chosen, r.rejected], sort_keys=True) for r in records)
    prompts = Counter(json.dumps(r.prompt, sort_keys=True) for r in records)
    return {
        "duplicate_pairs": sum(n - 1 for n in pairs.values()),
        "duplicate_prompts": sum(n - 1 for n in prompts.values()),
        "repeated_prompts": sum(1 for n in prompts.values() if n > 1),
    }


def _token_statistics(
    records: list[PreferenceRecord],
    tokenizer: Any,
    max_length: int | None,
    max_prompt_length: int | None,
    prompt_format: str,
) -> dict[str, Any]:
    from .tokenize import TokenizeConfig, tokenize_pair

    defaults = TokenizeConfig()
    limits = TokenizeConfig(
        max_length=defaults.max_length if max_length is None else max_length,
        max_prompt_length=defaults.max_prompt_length if max_prompt_length is None else max_prompt_length,
        prompt_format=prompt_format,
    )
    unlimited = TokenizeConfig(max_length=_NO_LIMIT, max_prompt_length=_NO_LIMIT - 1, prompt_format=prompt_format)
    lengths: dict[str, list[int]] = {name: [] for name in FIELDS}
    prompt_truncated = completion_truncated = 0
    drops: Counter[str] = Counter()
    for record in records:
        full = tokenize_pair(record, tokenizer, unlimited)
        for name in FIELDS:
            lengths[name].append(len(getattr(full, f"{name}_ids")))
        # A pair that fits both limits untruncated comes out of `limits` unchanged, so only the others are tokenized
        # again (tokenizing dominates the cost of `inspect --model`).
        fits = len(full.prompt_ids) <= limits.max_prompt_length and all(
            len(full.prompt_ids) + len(ids) <= limits.max_length for ids in (full.chosen_ids, full.rejected_ids)
        )
        limited = full if fits else tokenize_pair(record, tokenizer, limits)
        if limited.dropped:
            drops[limited.drop_reason or "unspecified"] += 1
        else:
            prompt_truncated += limited.prompt_truncated
            completion_truncated += limited.completion_truncated
    return {
        "token_lengths": {name: length_percentiles(values) for name, values in lengths.items()},
        "truncation": {
            "max_length": limits.max_length,
            "max_prompt_length": limits.max_prompt_length,
            "prompt_format": prompt_format,
            "prompt_truncated": prompt_truncated,
            "completion_truncated": completion_truncated,
            "dropped": sum(drops.values()),
            "dropped_by_reason": dict(drops.most_common()),
        },
    }


def _where(locations: list[str], source: str) -> str:
    """Locations under a heading that already names the source: "line 3", "lines 3, 9" or "row 2, row 5"."""
    short = [location.removeprefix(f"{source}:") for location in locations]
    if all(s.isdigit() for s in short):
        return ("line " if len(short) == 1 else "lines ") + ", ".join(short)
    return ", ".join(short)


def format_rejections(summary: dict[str, Any], source: str, indent: str = "  ") -> list[str]:
    """Lines of `summarize_rejections` output: code, count and meaning; where the first ones are; an example."""
    lines = []
    code_width = max((len(code) for code in summary), default=0)
    count_width = max((len(str(entry["count"])) for entry in summary.values()), default=0)
    pad = indent + " " * (code_width + count_width + 4)
    for code, entry in summary.items():
        more = entry["count"] - len(entry["first_locations"])
        lines.append(f"{indent}{code:<{code_width}}  {entry['count']:>{count_width}}  {entry['description']}")
        lines.append(f"{pad}at {_where(entry['first_locations'], source)}" + (f" (+{more} more)" if more else ""))
        if entry["example"]:
            lines.append(f"{pad}e.g. {entry['example']}")
    return lines


def format_inspection(summary: dict[str, Any]) -> str:
    """The summary as a table for people."""
    records = summary["records"]
    bad = records["rejected"] / records["read"] if records["read"] else 0.0
    lines = [
        f"source   {summary['source']}",
        f"records  {records['read']} read, {records['kept']} kept, {records['rejected']} rejected ({bad:.1%})",
    ]
    if summary["rejected_by_reason"]:
        lines += ["", "rejected by reason", *format_rejections(summary["rejected_by_reason"], summary["source"])]
    lines += ["", *_length_table("length in characters", summary["char_lengths"])]
    if "token_lengths" in summary:
        cut = summary["truncation"]
        dropped = ", ".join(f"{n} {why}" for why, n in cut["dropped_by_reason"].items())
        lines += [
            "",
            *_length_table("length in tokens", summary["token_lengths"]),
            "",
            f"at max length {cut['max_length']}, max prompt length {cut['max_prompt_length']} (tokens)",
            _row("prompt truncated", cut["prompt_truncated"]),
            _row("completion truncated", cut["completion_truncated"]),
            _row("dropped", cut["dropped"], dropped),
        ]
    duplicates = summary["duplicates"]
    lines += [
        "",
        "duplicates",
        _row("identical pairs", duplicates["duplicate_pairs"], "records repeating an earlier prompt, chosen, rejected"),
        _row(
            "repeated prompts",
            duplicates["duplicate_prompts"],
            f"records repeating an earlier prompt; {duplicates['repeated_prompts']} distinct prompts",
        ),
    ]
    return "\n".join(lines)


def _row(label: str, value: int, note: str = "") -> str:
    return f"  {label:<20}{value:>9}" + (f"  ({note})" if note else "")


def _length_table(title: str, stats: dict[str, dict[str, int | None]]) -> list[str]:
    columns = [f"p{p}" for p in PERCENTILES] + ["max"]
    lines = [f"{title:<22}" + "".join(f"{c:>9}" for c in columns)]
    for name in FIELDS:
        values = ["-" if stats[name][c] is None else str(stats[name][c]) for c in columns]
        lines.append(f"  {name:<20}" + "".join(f"{v:>9}" for v in values))
    return lines
