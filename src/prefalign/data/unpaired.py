"""`load_unpaired`: KTO's data, single completions labelled desirable or not, from an unpaired file or from pairs.

Rows are read by the one source reader (`prefalign.data.sources`) and checked like every preference record: a row
holding `label` is parsed by `parse_unpaired`, any other row as a pair (`parse_record`, in the given format) and
converted into its chosen completion (desirable) and its rejected one (undesirable). Rejections are counted in the same
`ValidationReport`, with the same limit on the fraction of bad rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PrefalignError
from .formats import FORMATS, UnpairedRecord, is_unpaired, parse_record, parse_unpaired, to_unpaired
from .sources import open_source
from .validation import RecordRejected, Rejection, ValidationReport


@dataclass(repr=False)  # the default repr would print every record
class UnpairedData:
    """The labelled completions a source yielded, in source order (a pair's two together), and the report."""

    records: list[UnpairedRecord]
    report: ValidationReport

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        report = self.report
        return f"UnpairedData({len(self.records)} completions from {report.source}; {report.rejected} rejected)"


def load_unpaired(source: Any, format: str = "auto", *, max_bad_fraction: float = 0.05) -> UnpairedData:
    """Read labelled completions from `source` (any source `load_preferences` reads); rows may be unpaired
    `{"prompt", "completion", "label"}` records or pairs in `format`. Bad rows are skipped and reported; more than
    `max_bad_fraction` of them, or no rows at all, raises a one-line `PrefalignError`."""
    if format not in FORMATS:
        raise PrefalignError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    name, rows = open_source(source)
    report = ValidationReport(source=name)
    records: list[UnpairedRecord] = []
    for row in rows:
        report.read += 1
        try:
            if row.problem is not None:
                raise row.problem
            if is_unpaired(row.value):
                records.append(parse_unpaired(row.value, row.location))
            else:
                records.extend(to_unpaired(parse_record(row.value, row.location, format)))
            report.kept += 1
        except RecordRejected as rejected:
            report.rejections.append(Rejection(row.location, rejected.reason, rejected.detail))
    if report.read == 0:
        raise PrefalignError(f"{name}: no records (the source is empty)")
    report.check(max_bad_fraction)
    return UnpairedData(records, report)
