"""File reading, in one place for every stage: a registry format -> reader, each reader one function.

A reader turns a file into a ``Table``: the records' fields as columns (``frame``), each record's position
(``number``: the line for jsonl and csv, the 0-based item or row otherwise), and the records it could not read
(``bad``: position and why). Columnar formats (parquet, csv, ``datasets`` save_to_disk) are read by polars or
arrow as they are; JSON formats are parsed by polars too, and line by line only when a line is malformed.

JSON values of mixed types in one field are coerced by polars: ``{"a": "x"}`` and ``{"a": 5}`` give a String
column holding ``"x"`` and ``"5"``. ``Table.exact_types`` is False for such formats so a caller that checks
types can ask ``Table.record(i)`` for the record as parsed. Adding a format is one function in ``READERS``.

Worked example: a jsonl file with lines ``{"a": 1}``, an empty line, ``{oops`` and ``{"a": 2}`` gives
``frame`` a = [1, 2], ``number`` = [1, 4] and ``bad`` = [Bad(3, "invalid JSON (Expecting property name
enclosed in double quotes at column 2)")].
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from gristmill.common.errors import InputError, MissingFileError

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file; the defaults read an input the way ingest does."""

    has_header: bool = True
    """csv: the first row names the columns (else they are ``column_1``, ``column_2``, ...)."""
    infer_types: bool = False
    """csv: infer column types (numbers, booleans); by default every cell is a string (or null when empty)."""
    accept: Callable[[Any], str | None] | None = None
    """JSON formats: a check of each parsed record (an error message or None) applied when the records' types
    do not fit one schema; records it refuses go to ``bad`` so the rest can be read as columns."""


class Bad(NamedTuple):
    """A record a reader could not turn into a row."""

    number: int
    reason: str
    record: Any = None
    """The parsed record when it parsed (``ReadOptions.accept`` refused it), else None."""


@dataclass
class Table:
    """One file's records as columns; see the module documentation."""

    path: Path
    frame: pl.DataFrame
    number: pl.Series
    """Int64 per row of ``frame``: the record's line (jsonl, csv) or its 0-based item/row index."""
    place: str
    """How ``number`` reads in a location: ``""`` (a line), ``"item "`` or ``"row "``."""
    bad: list[Bad] = field(default_factory=list)
    """Records that could not be read, in file order."""
    exact_types: bool = True
    """False where polars may have coerced a field's mixed JSON types to strings (see ``record``)."""
    _record: Callable[[int], Any] | None = None

    def where(self, number: int) -> str:
        """The location of a record, e.g. ``data.jsonl:7`` or ``data.parquet:row 3``."""
        return f"{self.path}:{self.place}{number}"

    def record(self, i: int) -> Any:
        """Row ``i`` of ``frame`` as the file holds it (JSON formats: as parsed, with its own types)."""
        return self._record(i) if self._record is not None else self.frame.row(i, named=True)


def _numbers(values: list[int]) -> pl.Series:
    return pl.Series("number", values, dtype=pl.Int64)


def _frame_of(path: Path, records: list[Any], options: ReadOptions,
              read: Callable[[list[int]], pl.DataFrame], bad: list[Bad], numbers: list[int]
              ) -> tuple[pl.DataFrame, list[int]]:
    """Columns of the records at ``numbers``; when their types do not fit one schema, refuse records with
    ``options.accept`` and retry, else raise an error naming the file."""
    try:
        return read(list(range(len(numbers)))), numbers
    except pl.exceptions.PolarsError as err:
        if options.accept is None:
            raise InputError(f"{path}: the records' fields do not fit one column type each ({err})") from err
        keep = []
        for i, rec in enumerate(records):
            reason = options.accept(rec)
            if reason is None:
                keep.append(i)
            else:
                bad.append(Bad(numbers[i], reason, rec))
        bad.sort()
        try:
            return read(keep), [numbers[i] for i in keep]
        except pl.exceptions.PolarsError as err2:
            raise InputError(f"{path}: the records' fields do not fit one column type each ({err2})") from err2


def read_jsonl(path: Path, options: ReadOptions) -> Table:
    """One JSON object per line; blank lines are skipped, line numbers count them."""
    # Text mode reads \r\n and \r as line ends, as iterating the open file always did.
    with path.open(encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    numbers = [n for n, line in enumerate(lines, 1) if line.strip()]
    body = [lines[n - 1] for n in numbers]
    bad: list[Bad] = []
    try:
        frame = _read_lines(body)
    except pl.exceptions.PolarsError:
        # A malformed or non-object line (or a type clash): find the bad lines one by one, read the rest.
        good_numbers, good_body, parsed = [], [], []
        for n, line in zip(numbers, body, strict=True):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(Bad(n, f"invalid JSON ({err.msg} at column {err.colno})"))
                continue
            if not isinstance(rec, dict):
                bad.append(Bad(n, "a line must be a JSON object"))
                continue
            good_numbers.append(n)
            good_body.append(line)
            parsed.append(rec)
        frame, numbers = _frame_of(path, parsed, options, lambda keep: _read_lines([good_body[i] for i in keep]),
                                   bad, good_numbers)
        body = [lines[n - 1] for n in numbers]
    return Table(path, frame, _numbers(numbers), "", bad, exact_types=False,
                 _record=lambda i: json.loads(body[i]))


def _read_lines(lines: list[str]) -> pl.DataFrame:
    if not lines:
        return pl.DataFrame()
    return pl.read_ndjson(io.BytesIO("\n".join(lines).encode()), infer_schema_length=None)


def read_json(path: Path, options: ReadOptions) -> Table:
    """A list of objects, or ``{"data": [...]}``; an item's number is its 0-based index."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); the file must be one JSON list") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(f"{path}: a .json input must be a list of objects (or {{\"data\": [...]}})")
    bad = [Bad(i, "an item must be a JSON object") for i, rec in enumerate(data) if not isinstance(rec, dict)]
    numbers = [i for i, rec in enumerate(data) if isinstance(rec, dict)]
    records = [data[i] for i in numbers]
    # The file is parsed whole already (the {"data": ...} shape needs it): columns come from the records.
    frame, numbers = _frame_of(
        path, records, options,
        lambda keep: pl.from_dicts([records[i] for i in keep], infer_schema_length=None) if keep else pl.DataFrame(),
        bad, numbers,
    )
    return Table(path, frame, _numbers(numbers), "item ", bad, exact_types=False, _record=lambda i: data[numbers[i]])


def read_csv(path: Path, options: ReadOptions) -> Table:
    """A header row then one record per line; a record's number is its line (assuming no embedded newlines)."""
    if options.infer_types:
        frame = pl.read_csv(path, has_header=options.has_header, infer_schema_length=None)
    else:
        frame = pl.read_csv(path, has_header=options.has_header, infer_schema=False)
    if not options.has_header:
        frame = frame.rename({c: f"column_{i}" for i, c in enumerate(frame.columns, 1)})
    first = 2 if options.has_header else 1
    return Table(path, frame, pl.int_range(first, first + frame.height, dtype=pl.Int64, eager=True).alias("number"),
                 "")


def read_parquet(path: Path, options: ReadOptions) -> Table:
    return _rows(path, pl.read_parquet(path))


def read_hf_disk(path: Path, options: ReadOptions) -> Table:
    """A ``datasets`` ``save_to_disk`` directory holding one split."""
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):
        raise InputError(f"{path}: is a DatasetDict with splits {list(ds.keys())}; point `path` at one split")
    frame = pl.from_arrow(ds.data.table)
    assert isinstance(frame, pl.DataFrame)
    return _rows(path, frame)


def _rows(path: Path, frame: pl.DataFrame) -> Table:
    return Table(path, frame, pl.int_range(frame.height, dtype=pl.Int64, eager=True).alias("number"), "row ")


Reader = Callable[[Path, ReadOptions], Table]
READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "parquet": read_parquet,
    "hf_disk": read_hf_disk,
}


def infer_format(path: Path, key: str = "format") -> str:
    """The format of ``path`` from its extension (a directory is a save_to_disk dataset); ``key`` names the
    setting that overrides it in the error."""
    if path.is_dir():
        return "hf_disk"
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: cannot infer the format from {path.suffix!r}; set `{key}:` to one of "
                         f"{', '.join(READERS)}")
    return fmt


def read_table(path: Path, fmt: str | None = None, options: ReadOptions | None = None,
               missing: str = "does not exist") -> Table:
    """Read ``path`` with the reader of ``fmt`` (inferred from the extension when None)."""
    if not path.exists():
        raise MissingFileError(f"{path}: {missing}")
    return READERS[fmt or infer_format(path)](path, options or ReadOptions())
