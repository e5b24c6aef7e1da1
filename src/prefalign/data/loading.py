"""`load_preferences`: any supported source and format in, validated `PreferenceRecord`s and a report out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, PrefalignError
from ..fileio import write_jsonl_atomic
from .formats import FORMATS, parse_record
from .records import PreferenceRecord
from .sources import open_source
from .validation import RecordRejected, Rejection, ValidationReport


@dataclass(repr=False)  # the default repr would print every record
class PreferenceData:
    """The records a source yielded that passed validation, in source order, and the report of what was rejected."""

    records: list[PreferenceRecord]
    report: ValidationReport

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PreferenceRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> PreferenceRecord:
        return self.records[index]

    def __repr__(self) -> str:
        kept, source, rejected, read = self.report.kept, self.report.source, self.report.rejected, self.report.read
        return f"PreferenceData({kept} records from {source}; {rejected} of {read} rejected)"


def load_preferences(
    source: Any,
    format: str = "auto",
    *,
    strict: bool = False,
    max_bad_fraction: float | None = 0.05,
    split: str | None = None,
) -> PreferenceData:
    """Read preference pairs from `source`, validate each, and return the good ones with a report of the rest.

    source: a path to a .jsonl, .jsonl.gz, .json (a list of objects, or JSON Lines), .parquet or .csv file, or to a
        directory saved by `datasets` (`Dataset.save_to_disk` or a DatasetDict); or an in-memory `datasets.Dataset` /
        `DatasetDict` or a list of dicts.
    format: "hh" (HH-RLHF dialogues), "explicit" (prompt/chosen/rejected strings), "conversational" (message lists,
        prompt explicit or implicit), or "auto" to detect each record's format from its keys and types.
    strict: raise `DataError` ("file:line: reason") at the first bad record instead of skipping it.
    max_bad_fraction: skip bad records, but raise a one-line `PrefalignError` when more than this fraction of the
        records read is bad. None never raises for bad records (for reports such as `prefalign data inspect`).
    split: the split of a DatasetDict to read (default "train", or the only split there is).

    Fields of a record besides prompt/chosen/rejected (a `margin`, an `id`) are kept in `record.extra`.
    A source that cannot be read at all, or holds no records, raises a one-line `PrefalignError`.
    """
    if format not in FORMATS:
        raise PrefalignError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    name, rows = open_source(source, split)
    report = ValidationReport(source=name)
    records = []
    for row in rows:
        report.read += 1
        try:
            if row.problem is not None:
                raise row.problem
            records.append(parse_record(row.value, row.location, format))
        except RecordRejected as rejected:
            rejection = Rejection(row.location, rejected.reason, rejected.detail)
            if strict:
                raise DataError(rejection.location, rejection.description) from None
            report.rejections.append(rejection)
    report.kept = len(records)
    if report.read == 0:
        raise PrefalignError(f"{name}: no records (the source is empty)")
    if max_bad_fraction is not None:
        report.check(max_bad_fraction)
    return PreferenceData(records=records, report=report)


def save_preferences(records: Iterable[PreferenceRecord], path: str | os.PathLike[str]) -> int:
    """Write records as normalised JSON Lines (prompt, chosen, rejected, then extras); return how many were written.

    The file is written to a temporary name beside `path` and renamed into place, so a crash never leaves half a file
    under the real name. A name ending in .gz is gzip-compressed. Extras JSON cannot encode are written as strings.
    """
    path = Path(path)
    if not path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        raise PrefalignError(f"{path}: preference output must be .jsonl or .jsonl.gz")
    if not path.parent.is_dir():
        raise PrefalignError(f"{path}: no such directory {path.parent}")
    return write_jsonl_atomic(path, (record.to_json() for record in records), default=str)
