"""Reading input files into the data-contract frame.

Formats: jsonl, json (a list of objects, or ``{"data": [...]}``), csv, parquet, and a ``datasets``
``save_to_disk`` directory, read by ``gristmill.common.readers``. A record that cannot be read or mapped is an
error naming ``file:line`` (or ``file:row N``); with ``on_error: skip`` it becomes a reject with reason
``malformed_input`` instead. Ids: the record's own ``id`` when it has one, else ``<file name>:<line>`` — stable
across runs.

Columnar: the file is read as columns and mapped with polars expressions (``Mapping.columns``); the record mapper
runs only for the rows those cannot decide (see ``gristmill.mappings``) and for the rejects' text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.checkpoint import SchemaDrift
from gristmill.common import readers
from gristmill.common.contract import MESSAGES_DTYPE, RESERVED
from gristmill.common.errors import InputError, MissingFileError
from gristmill.mappings import MAPPINGS, RECHECK, Mapped, Mapping

Format = Literal["jsonl", "json", "csv", "parquet", "hf_disk"]
_N, _ERR, _TEXT, _MSGS = "\x00number", "\x00error", "\x00text", "\x00messages"


VERSION = "8"  # 2: columnar mappings; sharegpt/messages text skips empty turns (gristmill.common.text); 3: a BOM is
# not part of the first record (a BOM-prefixed jsonl's first line was rejected), hostile records rejected not crashing;
# 4: a rejected jsonl line keeps its original text (was its JSON re-encoded, cut at 2000 characters); 5: `source` is
# the input path as the recipe gives it (was the machine's absolute path), so a dataset moves between machines;
# 6: a rejected csv record keeps its text as in the file (was its fields as JSON); 7: the runner writes the checkpoint
# a slice at a time (a parquet input is read so too): the same rows, other row groups and bytes; 8: a jsonl input
# is read a slice at a time too: the same rows; a row group holds a slice's kept lines (was a fixed number of kept
# rows: other row groups where lines are rejected)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str = Field(json_schema_extra={"path": True})
    """Input file or `datasets` save_to_disk directory (relative paths are relative to the recipe file)."""
    format: Format | None = None
    """File format; inferred from the extension when omitted (a directory is a save_to_disk dataset)."""
    mapping: Literal["alpaca", "sharegpt", "messages", "text"] = "alpaca"
    """How records map to text + messages."""
    on_error: Literal["raise", "skip"] = "raise"
    """raise: stop at the first malformed record; skip: reject it with reason malformed_input."""
    max_reject_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """With `on_error: skip`, stop the run when more than this share of the file's records are rejected (a wrong
    `mapping` or `format` rejects them all); 1.0 never stops."""


class IngestError(InputError):
    """A malformed input record or file (the message names the file and line)."""


def infer_format(path: Path) -> str:
    try:
        return readers.infer_format(path)
    except InputError as err:
        raise IngestError(str(err)) from err


def fingerprint_path(path: Path) -> str:
    """sha256 over the bytes of a file, or of every file under a directory (sorted by relative path)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _tables(spec: InputSpec, path: Path, mapping: Mapping, rows: int | None) -> Iterator[readers.Table]:
    if not path.exists():
        raise MissingFileError(f"{path}: input file not found (inputs[].path is relative to the recipe file)")
    try:
        yield from readers.iter_tables(path, spec.format or readers.infer_format(path),
                                       readers.ReadOptions(accept=mapping.check), rows)
    except IngestError:
        raise
    except InputError as err:
        raise IngestError(str(err)) from err


def _decide(table: readers.Table, frame: pl.DataFrame, mapping: Mapping) -> tuple[list[readers.Bad], pl.DataFrame]:
    """Every record that does not map, in file order, and ``frame`` with the record mapper's text and messages on
    the ``RECHECK`` rows it accepts (the columns there may hold what polars made of mixed JSON types)."""
    bad = list(table.bad)
    fixed: dict[int, Mapped] = {}
    failed = frame.with_row_index("\x00i").filter(pl.col(_ERR).is_not_null()).select("\x00i", _N, _ERR)
    for i, number, error in failed.iter_rows():
        record = table.record(i)
        if error != RECHECK:
            bad.append(readers.Bad(number, error, record))
            continue
        try:
            fixed[i] = mapping.row(record)
        except ValueError as err:
            bad.append(readers.Bad(number, str(err), record))
    if fixed:
        fixes = pl.DataFrame({"\x00i": list(fixed), "\x00fix": True, "\x00t": [t for t, _ in fixed.values()],
                              "\x00m": pl.Series([m for _, m in fixed.values()], dtype=MESSAGES_DTYPE)},
                             schema_overrides={"\x00i": pl.UInt32})
        fix = pl.col("\x00fix").fill_null(False)
        frame = (
            frame.with_row_index("\x00i").join(fixes, on="\x00i", how="left", maintain_order="left")
            .with_columns(pl.when(fix).then(pl.col("\x00t")).otherwise(pl.col(_TEXT)).alias(_TEXT),
                          pl.when(fix).then(pl.col("\x00m")).otherwise(pl.col(_MSGS).cast(MESSAGES_DTYPE)).alias(_MSGS))
            .drop("\x00i", "\x00fix", "\x00t", "\x00m")
        )
    return sorted(bad, key=lambda b: b.number), frame


def _id(frame: pl.DataFrame, path: Path) -> pl.Expr:
    fallback = pl.format("{}:{}", pl.lit(path.name), pl.col(_N))
    dtype = frame.schema.get("id", pl.Null)
    if dtype == pl.Null:
        return fallback
    own = pl.col("id")
    if dtype == pl.Boolean:  # str(True) is "True"; polars' cast says "true"
        own = pl.when(own).then(pl.lit("True")).when(~own).then(pl.lit("False"))
    elif dtype.is_numeric() or dtype.to_python() is str:
        own = own.cast(pl.String)
    else:
        own = own.map_elements(str, return_dtype=pl.String)
    return pl.coalesce(own, fallback)


def _python_dtype(dtype: pl.DataType) -> pl.DataType:
    """The dtype polars infers for ``dtype``'s values once they are Python objects (the frame used to be built from
    Python rows, so pass-through columns keep that schema: Int32 -> Int64, Float32 -> Float64, ...)."""
    if dtype.is_integer():
        return pl.Int64()
    if dtype.is_float():
        return pl.Float64()
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.String()
    if isinstance(dtype, (pl.List, pl.Array)):
        return pl.List(_python_dtype(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pl.Struct({f.name: _python_dtype(f.dtype) for f in dtype.fields})
    return dtype


def _raw_column(table: readers.Table, kept: pl.Series, key: str) -> pl.Series:
    """A record's own ``source``/``meta`` field, renamed ``raw_<key>``; an object becomes its JSON text."""
    dtype = table.frame.schema[key]
    if table.exact_types and not isinstance(dtype, pl.Struct):
        return table.frame[key].gather(kept).cast(_python_dtype(dtype)).alias(f"raw_{key}")
    # Objects (and, for JSON formats, values polars may have coerced) come from the records as read.
    values = [table.record(i).get(key) for i in kept.to_list()]
    # A typed struct gives JSON text or null: String even in a slice where every value is null.
    dtype_out = pl.String if table.exact_types else None
    return pl.Series(f"raw_{key}", [json.dumps(v) if isinstance(v, dict) else v for v in values], dtype=dtype_out)


def _reject(path: Path, spec: InputSpec, table: readers.Table, bad: readers.Bad) -> dict[str, Any]:
    msg = f"{table.where(bad.number)}: {bad.reason} (mapping: {spec.mapping})"
    # The original line where the format has lines (a rejected row keeps what the file held, to fix and re-feed);
    # else the record as parsed.
    raw = table.raw(bad.number)
    text = raw if raw is not None else json.dumps(bad.record, default=str) if bad.record is not None else ""
    return {"id": f"{path.name}:{bad.number}", "text": text, "source": spec.path, "reason": "malformed_input",
            "detail": msg, "meta": {"source_line": bad.number}}


def ingest(spec: InputSpec, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read one input; returns ``(rows, rejects)``. ``path`` is ``spec.path`` resolved by the caller."""
    rows, rejects, _ = ingest_counted(spec, path, enforce_yield=False)
    return rows, rejects


def _guess_mapping(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key, name in (("conversations", "sharegpt"), ("messages", "messages"), ("instruction", "alpaca"),
                      ("text", "text")):
        if key in record:
            return name
    return None


def _check_yield(spec: InputSpec, path: Path, table: readers.Table, kept: int, rejected: int,
                 first: readers.Bad | None, records: int) -> None:
    """An input that holds nothing, or whose records are mostly rejected, stops the run with what to fix: a run
    that "succeeds" with zero rows hides a wrong path, format or mapping. ``first``: the first rejected record."""
    if records == 0:
        raise IngestError(f"{path}: the input holds no records (empty file?); fix inputs[].path or remove the input")
    share = rejected / records
    if kept == 0 or share > spec.max_reject_fraction:
        assert first is not None  # records > 0 and nothing kept, or a share rejected
        guess = _guess_mapping(first.record)
        hint = (f"the records look like `mapping: {guess}`" if guess and guess != spec.mapping
                else "check the input's `mapping` and `format`")
        raise IngestError(
            f"{path}: {rejected} of {records} records rejected ({share:.0%}, more than max_reject_fraction "
            f"{spec.max_reject_fraction}); first: {table.where(first.number)}: {first.reason} (mapping: "
            f"{spec.mapping}); {hint}, or raise the input's `max_reject_fraction`")


def ingest_counted(spec: InputSpec, path: Path, *, enforce_yield: bool = True
                   ) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """``ingest`` plus the number of records the file held (kept + rejected must add up to it). With
    ``enforce_yield`` (a recipe's inputs) an empty input, or one rejected beyond ``max_reject_fraction``, raises."""
    ((rows, rejects, records),) = ingest_slices(spec, path, None, enforce_yield=enforce_yield)
    return rows, rejects, records


def ingest_slices(spec: InputSpec, path: Path, rows: int | None, *, enforce_yield: bool = True
                  ) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, int]]:
    """``ingest_counted`` a slice of at most ``rows`` records at a time where the format allows (parquet, jsonl;
    see ``readers.iter_tables``; ``None``: the whole file in one slice): per slice its kept rows (``empty_frame()``
    when it kept none), rejects and records read. Concatenated, the slices are what one read gives (the same ids,
    order, columns and types) when every slice has the same columns and types (``SchemaDrift`` from the caller's
    ``SliceWriter`` otherwise), and this raises ``SchemaDrift`` where the difference would not show in those: a
    jsonl ``id`` field read as another type in another slice (a slice's ``true`` gives the id ``"True"``, the
    whole read's ``"true"`` where the file mixes types). A malformed record raises in its slice (``on_error:
    raise``); the yield check comes after the last slice."""
    mapping = MAPPINGS[spec.mapping]
    records = kept = rejected = 0
    first: readers.Bad | None = None
    table = None
    id_type: pl.DataType | None = None
    for table in _tables(spec, path, mapping, rows):
        own_id = table.frame.schema.get("id", pl.Null)
        if not table.exact_types and own_id != pl.Null:
            if id_type is not None and own_id != id_type:
                raise SchemaDrift(f"{path}: the id field is {id_type} in one slice, {own_id} in another")
            id_type = own_id
        out, bad, read = _map(spec, path, mapping, table)
        records, kept, rejected = records + read, kept + out.height, rejected + len(bad)
        if first is None and bad:
            first = bad[0]
        rejects = pl.DataFrame([_reject(path, spec, table, b) for b in bad], infer_schema_length=None) if bad \
            else pl.DataFrame()
        yield out, rejects, read
    if enforce_yield and table is not None:
        _check_yield(spec, path, table, kept, rejected, first, records)


def _map(spec: InputSpec, path: Path, mapping: Mapping, table: readers.Table
         ) -> tuple[pl.DataFrame, list[readers.Bad], int]:
    """One table's kept rows in the data contract, its bad records and how many records it held."""
    records = table.number.len() + len(table.bad)
    base = table.frame.with_columns(table.number.alias(_N)) if table.frame.width else pl.DataFrame(table.number
                                                                                                   .alias(_N))
    cols = mapping.columns(table.frame, table.exact_types)
    mapped = base.with_columns(cols.error.alias(_ERR), cols.text.alias(_TEXT), cols.messages.alias(_MSGS))
    bad, mapped = _decide(table, mapped, mapping)
    if bad and spec.on_error == "raise":
        first = bad[0]
        guess = _guess_mapping(first.record)
        hint = f"the record looks like `mapping: {guess}`; " if guess and guess != spec.mapping else ""
        raise IngestError(f"{table.where(first.number)}: {first.reason} (mapping: {spec.mapping}); {hint}fix the "
                          "record or set `on_error: skip` on this input")
    ok = pl.col(_ERR).is_null() | (pl.col(_ERR) == RECHECK)
    if bad:  # RECHECK rows the record mapper accepted stay; the rest of the errors go
        failed = pl.Series([b.number for b in bad], dtype=pl.Int64)
        ok = ok & ~pl.col(_N).is_in(failed.implode())
    kept_index = mapped.with_row_index("\x00i").filter(ok)["\x00i"]
    if kept_index.len() == 0:
        return empty_frame(), bad, records
    consumed = mapping.consumed | set(RESERVED)
    passing = [pl.col(c).cast(_python_dtype(t)) for c, t in table.frame.schema.items() if c not in consumed]
    rows = mapped.filter(ok).select(
        _id(table.frame, path).alias("id"),
        pl.col(_TEXT).alias("text"),
        pl.col(_MSGS).cast(MESSAGES_DTYPE).alias("messages"),
        pl.lit(spec.path).alias("source"),
        pl.struct(pl.col(_N).alias("source_line")).alias("meta"),
        *passing,
    )
    raw = [_raw_column(table, kept_index, key) for key in ("source", "meta") if key in table.frame.columns]
    return (rows.with_columns(raw) if raw else rows), bad, records


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"id": pl.String, "text": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String,
                "meta": pl.Struct({"source_line": pl.Int64})}
    )


def check_unique_ids(frame: pl.DataFrame | pl.LazyFrame) -> None:
    """Raise when an id occurs twice; ``frame`` needs ``id`` and ``source`` (a scan of the ingest checkpoint reads
    only those columns)."""
    dup = (frame.lazy().group_by("id").agg(pl.len(), pl.col("source").first()).filter(pl.col("len") > 1)
           .collect(engine="streaming"))
    if dup.height:
        first = dup.row(0, named=True)
        raise IngestError(
            f"{first['source']}: id {first['id']!r} occurs {first['len']} times ({dup.height} ids repeat); "
            "ids must be unique across inputs: fix the `id` field or remove it to get file:line ids"
        )
