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

import bisect
import csv
import io
import json
from collections.abc import Callable, Iterator
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
    _raw: Callable[[int], str] | None = None
    """Line-based formats: a record's original line by its ``number`` (rejects keep what the file held)."""

    def raw(self, number: int) -> str | None:
        """The record's text exactly as the file held it (jsonl, csv), else None."""
        return self._raw(number) if self._raw is not None else None

    def where(self, number: int) -> str:
        """The location of a record, e.g. ``data.jsonl:7`` or ``data.parquet:row 3``."""
        return f"{self.path}:{self.place}{number}"

    def record(self, i: int) -> Any:
        """Row ``i`` of ``frame`` as the file holds it (JSON formats: as parsed, with its own types)."""
        return self._record(i) if self._record is not None else self.frame.row(i, named=True)


def _numbers(values: list[int]) -> pl.Series:
    return pl.Series("number", values, dtype=pl.Int64)


# What polars raises when records' values do not fit one column type: its own errors, TypeError from building a
# Series of mixed Python values, OverflowError for integers beyond 64 bits.
_SCHEMA_ERRORS = (pl.exceptions.PolarsError, TypeError, OverflowError)


def _frame_of(path: Path, records: list[Any], options: ReadOptions,
              read: Callable[[list[int]], pl.DataFrame], bad: list[Bad], numbers: list[int]
              ) -> tuple[pl.DataFrame, list[int]]:
    """Columns of the records at ``numbers``; when their types do not fit one schema, refuse records with
    ``options.accept`` and retry, else raise an error naming the file."""
    try:
        return read(list(range(len(numbers)))), numbers
    except _SCHEMA_ERRORS as err:
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
        except _SCHEMA_ERRORS as err2:
            raise InputError(f"{path}: the records' fields do not fit one column type each ({err2})") from err2


def read_text(path: Path, *, universal_newlines: bool = True) -> str:
    """The file as UTF-8 text (a leading BOM dropped; ``\r\n`` and ``\r`` read as ``\n`` unless
    ``universal_newlines`` is False), or an error naming the line of the first byte that is not UTF-8 and how to
    convert the file. Example: the latin-1 bytes
    ``b"a\\ncaf\\xe9\\n"`` give ``x.csv:2: not UTF-8 (byte 0xe9 at column 4); save the file as UTF-8, ...``.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(_BOM) else 0)
        raise _not_utf8(path, data.count(b"\n", 0, start) + 1, start - (data.rfind(b"\n", 0, start) + 1) + 1,
                        data[start]) from err
    return _universal(text) if universal_newlines else text


_BOM = b"\xef\xbb\xbf"


def _universal(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _not_utf8(path: Path, line: int, column: int, byte: int) -> InputError:
    return InputError(f"{path}:{line}: not UTF-8 (byte 0x{byte:02x} at column {column}); save the file as UTF-8, "
                      f"e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}` if it is latin-1")


def _json_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError as err:  # hostile nesting: an error, not a crash
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from err


def read_jsonl(path: Path, options: ReadOptions) -> Table:
    """One JSON object per line; blank lines are skipped, line numbers count them."""
    lines = read_text(path).split("\n")
    numbers = [n for n, line in enumerate(lines, 1) if line.strip()]
    return _jsonl_table(path, [lines[n - 1] for n in numbers], numbers, options)


def _jsonl_table(path: Path, body: list[str], numbers: list[int], options: ReadOptions) -> Table:
    """The Table of the non-blank lines ``body`` of a jsonl file, ``numbers`` their lines in the file (ascending):
    the whole file's (``read_jsonl``) or a slice's (``_jsonl_slices``)."""
    lines, at = body, numbers  # a line's text by its number, for rejects
    bad: list[Bad] = []
    try:
        frame = _read_lines(body)
    except pl.exceptions.PolarsError:
        # A malformed or non-object line (or a type clash): find the bad lines one by one, read the rest.
        good_numbers, good_body, parsed = [], [], []
        for n, line in zip(numbers, body, strict=True):
            try:
                rec = _json_loads(line)
            except json.JSONDecodeError as err:
                bad.append(Bad(n, f"invalid JSON ({err.msg} at column {err.colno})"))
                continue
            if not isinstance(rec, dict):
                bad.append(Bad(n, "a line must be a JSON object"))
                continue
            good_numbers.append(n)
            good_body.append(line)
            parsed.append(rec)
        frame, kept = _frame_of(path, parsed, options, lambda keep: _read_lines([good_body[i] for i in keep]),
                                bad, good_numbers)
        body = [lines[bisect.bisect_left(at, n)] for n in kept]
        numbers = kept

    def raw(number: int) -> str | None:
        i = bisect.bisect_left(at, number)
        return lines[i] if i < len(at) and at[i] == number else None

    return Table(path, frame, _numbers(numbers), "", bad, exact_types=False,
                 _record=lambda i: _json_loads(body[i]), _raw=raw)


# 256 KiB blocks: the 1M-row jsonl's ingest peaked at 306 MB, 369 with 1 MiB blocks and 418 with 4 MiB (freed blocks'
# memory is not all reused; bench/RESULTS.md Scale).
def _jsonl_lines(path: Path, block: int = 1 << 18) -> Iterator[tuple[int, str]]:
    """Each non-blank line of a jsonl file with its number, read ``block`` bytes at a time: the lines and numbers
    ``read_text(path).split("\\n")`` gives (a leading BOM dropped; ``\\r\\n``, ``\\r`` and ``\\n`` end a line; the
    same error for a byte that is not UTF-8). Example: ``b"\\xef\\xbb\\xbf{}\\r\\n\\r\\n {} \\r{}"`` gives
    ``(1, "{}")``, ``(3, " {} ")``, ``(4, "{}")``."""
    number = 0
    offset = 0  # of the next piece in the file
    newlines = 0  # b"\n" before the next piece: read_text counts those for the line of a bad byte
    line_start = 0  # offset in the file after the last b"\n" before the next piece (a BOM counts in columns)
    pending: list[bytes] = []  # read, not yet a piece: a list, so a line longer than a block is joined once
    with path.open("rb") as fh:
        head = fh.read(len(_BOM))
        if head == _BOM:
            offset = len(_BOM)
        else:
            pending.append(head)
        eof = False
        while not eof:
            chunk = fh.read(block)
            eof = not chunk
            # Complete lines only: up to the chunk's last line end, a b"\r" at its end held back (a b"\n" may
            # follow in the next chunk).
            cut = 0 if eof else max(chunk.rfind(b"\n"), chunk.rfind(b"\r", 0, len(chunk) - 1)) + 1
            if not eof and cut == 0:
                pending.append(chunk)
                continue
            pending.append(chunk[:cut] if cut else chunk)
            piece = b"".join(pending)
            pending = [chunk[cut:]] if cut else []
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as err:
                nl = piece.rfind(b"\n", 0, err.start)
                column = err.start - nl if nl >= 0 else offset + err.start - line_start + 1
                raise _not_utf8(path, newlines + piece.count(b"\n", 0, err.start) + 1, column,
                                piece[err.start]) from err
            lines = _universal(text).split("\n")
            if not eof:
                lines.pop()  # the empty text after the piece's last line end
            for line in lines:
                number += 1
                if line.strip():
                    yield number, line
            newlines += piece.count(b"\n")
            nl = piece.rfind(b"\n")
            if nl >= 0:
                line_start = offset + nl + 1
            offset += len(piece)


def _jsonl_slices(path: Path, options: ReadOptions, rows: int) -> Iterator[Table]:
    """The jsonl file's records as Tables of at most ``rows`` non-blank lines, each read as ``read_jsonl`` reads
    the whole file (``_jsonl_table``; field types inferred per slice, so a field may be Int64 in one slice and
    String in another where the whole read has String throughout: the caller compares the slices' types); only
    the slice in hand is in memory. Example: lines ``{"a": 1}``, blank, ``{"a": 2}``, ``{"a": 3}`` with ``rows=2``
    give slices numbered [1, 3] and [4]."""
    body: list[str] = []
    numbers: list[int] = []
    yielded = False
    for number, line in _jsonl_lines(path):
        body.append(line)
        numbers.append(number)
        if len(body) == rows:
            yield _jsonl_table(path, body, numbers, options)
            body, numbers, yielded = [], [], True
    if body or not yielded:  # a file of blank lines is one empty Table, as read whole
        yield _jsonl_table(path, body, numbers, options)


def _read_lines(lines: list[str]) -> pl.DataFrame:
    if not lines:
        return pl.DataFrame()
    return pl.read_ndjson(io.BytesIO("\n".join(lines).encode()), infer_schema_length=None)


def read_json(path: Path, options: ReadOptions) -> Table:
    """A list of objects, or ``{"data": [...]}``; an item's number is its 0-based index."""
    try:
        data = _json_loads(read_text(path))
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
    # Checked UTF-8 (polars' own error names no file or line); line ends left to polars (quoted fields keep theirs).
    text = read_text(path, universal_newlines=False)
    data = io.BytesIO(text.encode())
    try:
        if options.infer_types:
            frame = pl.read_csv(data, has_header=options.has_header, infer_schema_length=None)
        else:
            frame = pl.read_csv(data, has_header=options.has_header, infer_schema=False)
    except (pl.exceptions.PolarsError, pl.exceptions.NoDataError) as err:
        raise InputError(f"{path}: not a readable CSV ({str(err).splitlines()[0]}); every row needs the header's "
                         "number of fields, quoted where a field holds a comma or a newline") from err
    if not options.has_header:
        frame = frame.rename({c: f"column_{i}" for i, c in enumerate(frame.columns, 1)})
    first = 2 if options.has_header else 1
    records: list[str | None] = []

    def raw(number: int) -> str | None:
        if not records:  # computed on the first reject only
            try:
                spans = _csv_records(text)[1 if options.has_header else 0:]
            except csv.Error:  # a NUL byte, say: polars read it, Python's csv does not; the row's JSON stands in
                spans = []
            records.extend(spans if len(spans) == frame.height else [None] * frame.height)
        return records[number - first]

    return Table(path, frame, pl.int_range(first, first + frame.height, dtype=pl.Int64, eager=True).alias("number"),
                 "", _raw=raw)


def _csv_records(text: str) -> list[str]:
    """Each CSV record's text as the file holds it, line end excluded; a quoted field may span lines and a blank
    line is a record (polars reads it as a row of nulls). Example: ``'a,b\n"x\ny",3\n\n'`` gives
    ``['a,b', '"x\ny",3', '']``."""
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines)
    out, start = [], 0
    for _ in reader:
        out.append("".join(lines[start:reader.line_num]).rstrip("\r\n"))
        start = reader.line_num
    return out


def _unreadable_parquet(path: Path, err: Exception) -> InputError:
    return InputError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]}); a truncated or partly "
                      "copied file? Write it again")


def read_parquet(path: Path, options: ReadOptions) -> Table:
    try:
        return _rows(path, pl.read_parquet(path))
    except (pl.exceptions.PolarsError, OSError) as err:
        raise _unreadable_parquet(path, err) from err


def _parquet_slices(path: Path, rows: int) -> Iterator[Table]:
    """The parquet file's rows as Tables of at most ``rows`` rows, never crossing a row group (each row group is
    decoded once, and only the slice in hand is in memory); ``number`` counts rows from the file's start. Example:
    row groups of 5 and 3 rows with ``rows=2`` give slices of rows 0-1, 2-3, 4, 5-6, 7."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        scan = pl.scan_parquet(path)
        if meta.num_rows == 0:
            yield _rows(path, scan.head(0).collect())
            return
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise _unreadable_parquet(path, err) from err
    start = 0
    for group in range(meta.num_row_groups):
        end = start + meta.row_group(group).num_rows
        for offset in range(start, end, rows):
            try:
                frame = scan.slice(offset, min(rows, end - offset)).collect()
            except (pl.exceptions.PolarsError, OSError) as err:
                raise _unreadable_parquet(path, err) from err
            yield Table(path, frame, pl.int_range(offset, offset + frame.height, dtype=pl.Int64, eager=True)
                        .alias("number"), "row ")
        start = end


def read_hf_disk(path: Path, options: ReadOptions) -> Table:
    """A ``datasets`` ``save_to_disk`` directory holding one split."""
    from datasets import load_from_disk

    if not path.is_dir() or not ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        what = "a directory" if path.is_dir() else "a file"
        raise InputError(f"{path}: is {what} but not a `datasets` save_to_disk directory (no state.json); for a data "
                         f"file set `format:` to one of jsonl, json, csv, parquet and `path` to the file itself")
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
    fmt = EXTENSIONS.get(path.suffix.lower())
    if path.is_dir():
        if fmt is not None:
            raise InputError(f"{path}: is a directory, not a {fmt} file; name the file inside it (or set `{key}: "
                             "hf_disk` for a `datasets` save_to_disk directory)")
        return "hf_disk"
    if fmt is None:
        raise InputError(f"{path}: cannot infer the format from {path.suffix!r}; set `{key}:` to one of "
                         f"{', '.join(READERS)}")
    return fmt


def iter_tables(path: Path, fmt: str | None = None, options: ReadOptions | None = None, rows: int | None = None,
                missing: str = "does not exist") -> Iterator[Table]:
    """``read_table`` at most ``rows`` records at a time where the format allows it (parquet, jsonl; a JSON or CSV
    file is read whole), so a large input is never in memory whole. The Tables' ``number``, ``where`` and ``bad``
    are those the whole read gives; a jsonl slice's types are inferred over its own lines (see ``_jsonl_slices``)."""
    fmt = fmt or infer_format(path)
    if rows is None or fmt not in ("parquet", "jsonl") or not path.is_file() or path.stat().st_size == 0:
        yield read_table(path, fmt, options, missing)
        return
    yield from _parquet_slices(path, rows) if fmt == "parquet" else _jsonl_slices(path, options or ReadOptions(), rows)


def read_table(path: Path, fmt: str | None = None, options: ReadOptions | None = None,
               missing: str = "does not exist") -> Table:
    """Read ``path`` with the reader of ``fmt`` (inferred from the extension when None)."""
    if not path.exists():
        raise MissingFileError(f"{path}: {missing}")
    fmt = fmt or infer_format(path)
    if path.is_dir() and fmt != "hf_disk":
        raise InputError(f"{path}: is a directory, not a {fmt} file; name the file inside it (format {fmt}), or "
                         "a `datasets` save_to_disk directory with `format: hf_disk`")
    if path.is_file() and path.stat().st_size == 0:
        return Table(path, pl.DataFrame(), _numbers([]), "")
    return READERS[fmt](path, options or ReadOptions())
