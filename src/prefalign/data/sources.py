"""Where preference rows come from: files, saved `datasets` directories, and in-memory data.

Every source yields `RawRow`s: a location a person can find ("pairs.jsonl:3" for a line of a text file,
"x.parquet:row 7" for a 0-based row, as `dataset[7]` indexes it) and the decoded row, or the reason it could not be
decoded. A problem with the source as a whole (missing, unknown type, unreadable) raises a one-line `PrefalignError`.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PrefalignError
from ..fileio import jsonl_lines
from .validation import Reason, RecordRejected

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
# What reading a damaged gzip stream, or a file that is not one, raises part way through.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


@dataclass(frozen=True)
class RawRow:
    """One row of a source: its value, or (`problem` set) why it could not be decoded."""

    location: str
    value: Any = None
    problem: RecordRejected | None = None


def open_source(source: Any, split: str | None = None) -> tuple[str, Iterator[RawRow]]:
    """Check that `source` can be read and return (its name for messages, an iterator over its rows).

    `source` is a path (str or PathLike) to a .jsonl, .jsonl.gz, .json, .json.gz, .parquet or .csv file or to a
    directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`; or an in-memory `datasets.Dataset`,
    `datasets.DatasetDict`, or list of dicts. `split` picks the split of a DatasetDict (default: "train", or the only
    one there is).
    """
    if isinstance(source, list):
        _no_split(split, "a list of records")
        return "records", (RawRow(f"row {i}", row) for i, row in enumerate(source))
    if _is_datasets_object(source):
        return _open_dataset(source, "dataset", split, name_rows=False)
    if not isinstance(source, (str, os.PathLike)):
        raise PrefalignError(
            f"cannot read preference data from {type(source).__name__}: pass a path, a list or a Dataset"
        )
    path = Path(source)
    name = str(source)
    if path.is_dir():
        return _open_dataset_dir(path, split)
    if not path.exists():
        raise PrefalignError(f"{name}: no such file")
    suffix = next((s for s in SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise PrefalignError(
            f"{name}: unknown file type; expected {', '.join(SUFFIXES)} or a saved `datasets` directory"
        )
    _no_split(split, name)
    if suffix in (".jsonl", ".jsonl.gz"):
        return name, _read_json_lines(path, name)
    if suffix in (".json", ".json.gz"):
        return name, _read_json(path, name)
    if suffix == ".parquet":
        return name, _read_parquet(path, name)
    return name, _read_csv(path, name)


def _no_split(split: str | None, name: str) -> None:
    if split is not None:
        raise PrefalignError(f"{name}: split={split!r} only applies to a `datasets` DatasetDict")


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decode_line(raw: bytes, location: str) -> RawRow | None:
    """One line of JSON Lines as a row, or the reason it is not one; None for a blank line (not a record).

    Unlike `fileio.parse_json_line`, which stops a read, a bad line here becomes a rejected row: user data is
    reported record by record."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        problem = RecordRejected(Reason.INVALID_JSON, f"not UTF-8 text at byte offset {exc.start}")
        return RawRow(location, problem=problem)
    if not text.strip():
        return None
    try:
        return RawRow(location, json.loads(text))
    except json.JSONDecodeError as exc:
        return RawRow(location, problem=RecordRejected(Reason.INVALID_JSON, f"{exc.msg} at column {exc.colno}"))


def _read_json_lines(path: Path, name: str) -> Iterator[RawRow]:
    try:
        for number, raw in jsonl_lines(path):
            row = _decode_line(raw, f"{name}:{number}")
            if row is not None:
                yield row
    except _GZIP_ERRORS as exc:
        raise PrefalignError(f"{name}: not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise PrefalignError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _read_json(path: Path, name: str) -> Iterator[RawRow]:
    """A .json file: a list of objects (rows "row N"), one object, or JSON Lines that were given a .json name."""
    try:
        with _open_text(path) as stream:
            data = stream.read()
    except _GZIP_ERRORS as exc:
        raise PrefalignError(f"{name}: not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise PrefalignError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise PrefalignError(f"{name}: not UTF-8 text at byte offset {exc.start}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            # A broken array cannot be cut into records, so the whole file is unreadable.
            raise PrefalignError(f"{name}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}") from None
        yield from _read_json_lines(path, name)
        return
    if isinstance(document, list):
        for index, value in enumerate(document):
            yield RawRow(f"{name}:row {index}", value)
    elif isinstance(document, dict):
        yield RawRow(f"{name}:1", document)
    else:
        raise PrefalignError(f"{name}: expected a list of records or JSON Lines, found a single JSON value")


def _read_parquet(path: Path, name: str) -> Iterator[RawRow]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                yield RawRow(f"{name}:row {index}", value)
                index += 1
    except (pyarrow.ArrowException, OSError) as exc:
        raise PrefalignError(f"{name}: not a readable Parquet file ({' '.join(str(exc).split())})") from None


def _read_csv(path: Path, name: str) -> Iterator[RawRow]:
    """A CSV file with a header row; each row's location is the line it starts on (quoted cells may span lines)."""
    # Dialogues can be longer than csv's default 128 KiB cell limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            start = reader.line_num + 2  # after the header (read lazily on the first row)
            for value in reader:
                yield RawRow(f"{name}:{start}", value)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise PrefalignError(f"{name}: not UTF-8 text at byte offset {exc.start}") from None
    except csv.Error as exc:
        raise PrefalignError(f"{name}: not valid CSV ({exc})") from None
    except OSError as exc:
        raise PrefalignError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _is_datasets_object(source: Any) -> bool:
    # Checked without importing `datasets` (slow to import): an object of it exists only once it is imported.
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict))


def _open_dataset_dir(path: Path, split: str | None) -> tuple[str, Iterator[RawRow]]:
    name = str(path)
    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise PrefalignError(
            f"{name}: a directory, but not one saved by `datasets` save_to_disk (no dataset_dict.json or state.json)"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise PrefalignError(f"{name}: cannot load the saved dataset ({' '.join(str(exc).split())})") from None
    return _open_dataset(loaded, name, split)


def _open_dataset(dataset: Any, name: str, split: str | None, name_rows: bool = True) -> tuple[str, Iterator[RawRow]]:
    """Rows of a Dataset (or of one split of a DatasetDict), located as "NAME:row N", or "row N" without `name_rows`
    (an in-memory Dataset has no name a person would recognise; a split always names itself)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        if split is None:
            if "train" in splits:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise PrefalignError(
                    f"{name}: has splits {', '.join(splits)} and none is 'train'; pick one with split (--split)"
                )
        elif split not in splits:
            raise PrefalignError(f"{name}: no split {split!r}; it has {', '.join(splits)}")
        dataset, name, name_rows = dataset[split], f"{name}[{split}]", True
    else:
        _no_split(split, name)
    prefix = f"{name}:" if name_rows else ""
    return name, (RawRow(f"{prefix}row {index}", value) for index, value in enumerate(dataset))
