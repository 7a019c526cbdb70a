"""Reading input files into the data-contract frame.

Formats: jsonl, json (a list of objects, or ``{"data": [...]}``), csv, parquet, and a ``datasets``
``save_to_disk`` directory. A record that cannot be read or mapped is an error naming ``file:line`` (or
``file:row N``); with ``on_error: skip`` it becomes a reject with reason ``malformed_input`` instead.
Ids: the record's own ``id`` when it has one, else ``<file name>:<line>`` — stable across runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.mappings import CONSUMED, MAPPERS

Format = Literal["jsonl", "json", "csv", "parquet", "hf_disk"]
RESERVED = {"id", "text", "messages", "source", "meta"}
MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
_EXT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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


class IngestError(ValueError):
    """A malformed input record (message names file and line)."""


def infer_format(path: Path) -> str:
    if path.is_dir():
        return "hf_disk"
    fmt = _EXT.get(path.suffix.lower())
    if fmt is None:
        raise IngestError(f"{path}: cannot infer the format from {path.suffix!r}; set `format:` to one of "
                          "jsonl, json, csv, parquet, hf_disk")
    return fmt


def _records(path: Path, fmt: str) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    """Yield ``(line_or_row, location, record-or-error-message)``."""
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    yield lineno, f"{path}:{lineno}", f"invalid JSON ({err.msg} at column {err.colno})"
                    continue
                yield lineno, f"{path}:{lineno}", rec if isinstance(rec, dict) else "a line must be a JSON object"
        return
    if fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); the file must be one JSON list") from err
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise IngestError(f"{path}: a .json input must be a list of objects (or {{\"data\": [...]}})")
        for i, rec in enumerate(data):
            yield i, f"{path}:item {i}", rec if isinstance(rec, dict) else "an item must be a JSON object"
        return
    if fmt == "csv":
        frame = pl.read_csv(path, infer_schema=False)
        for i, rec in enumerate(frame.iter_rows(named=True)):
            # Header is line 1; a row's line number assumes no embedded newlines.
            yield i + 2, f"{path}:{i + 2}", rec
        return
    if fmt == "parquet":
        frame = pl.read_parquet(path)
    elif fmt == "hf_disk":
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):
            raise IngestError(f"{path}: is a DatasetDict with splits {list(ds.keys())}; point `path` at one split")
        frame = pl.from_arrow(ds.data.table)
        assert isinstance(frame, pl.DataFrame)
    else:  # pragma: no cover - guarded by the schema
        raise IngestError(f"unknown format {fmt}")
    for i, rec in enumerate(frame.iter_rows(named=True)):
        yield i, f"{path}:row {i}", rec


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


def ingest(spec: InputSpec, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read one input; returns ``(rows, rejects)``. ``path`` is ``spec.path`` resolved by the caller."""
    if not path.exists():
        raise IngestError(f"{path}: input file not found (inputs[].path is relative to the recipe file)")
    fmt = spec.format or infer_format(path)
    mapper = MAPPERS[spec.mapping]
    consumed = CONSUMED[spec.mapping] | RESERVED
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for line, where, rec in _records(path, fmt):
        try:
            if isinstance(rec, str):
                raise ValueError(rec)
            text, messages = mapper(rec)
        except ValueError as err:
            msg = f"{where}: {err} (mapping: {spec.mapping})"
            if spec.on_error == "raise":
                raise IngestError(msg + "; fix the record or set `on_error: skip` on this input") from err
            rejects.append({"id": f"{path.name}:{line}", "text": json.dumps(rec)[:2000] if not isinstance(rec, str)
                            else "", "source": str(path), "reason": "malformed_input", "detail": msg,
                            "meta": {"source_line": line}})
            continue
        row: dict[str, Any] = {
            "id": str(rec["id"]) if rec.get("id") is not None else f"{path.name}:{line}",
            "text": text,
            "messages": messages,
            "source": str(path),
            "meta": {"source_line": line},
        }
        for key, value in rec.items():
            if key not in consumed:
                row[key] = value
        for key in ("source", "meta"):
            if key in rec:
                row[f"raw_{key}"] = rec[key] if not isinstance(rec[key], dict) else json.dumps(rec[key])
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None,
                         schema_overrides={"id": pl.String, "text": pl.String, "messages": MESSAGES_DTYPE}) \
        if rows else empty_frame()
    reject_frame = pl.DataFrame(rejects, infer_schema_length=None) if rejects else pl.DataFrame()
    return frame, reject_frame


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"id": pl.String, "text": pl.String, "messages": MESSAGES_DTYPE, "source": pl.String,
                "meta": pl.Struct({"source_line": pl.Int64})}
    )


def check_unique_ids(frame: pl.DataFrame) -> None:
    dup = frame.group_by("id").agg(pl.len(), pl.col("source").first()).filter(pl.col("len") > 1)
    if dup.height:
        first = dup.row(0, named=True)
        raise IngestError(
            f"{first['source']}: id {first['id']!r} occurs {first['len']} times ({dup.height} ids repeat); "
            "ids must be unique across inputs: fix the `id` field or remove it to get file:line ids"
        )
