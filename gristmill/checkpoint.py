"""Step checkpoints: ``<run>/steps/NN-name/{kept,dropped}.parquet + stats.json``, written atomically.

A checkpoint is complete only when its directory exists under the final name; it is assembled in a temporary
sibling and renamed into place, so a killed run never leaves a half-written step that a resume would trust.
``stats.json`` records the sha256 of ``kept.parquet``: a resume re-hashes the file and recomputes the step when it
differs (a corrupted or swapped file is never read as complete), and the runner chains that hash into the next
step's fingerprint, so a step whose input rows changed is never reused (``chain``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.common.errors import UserError

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """sha256 over the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


_FIXABLE = {errno.ENOSPC: "the disk is full: free space", errno.EDQUOT: "the disk quota is used up: free space",
            errno.EACCES: "permission denied: make it writable", errno.EPERM: "permission denied: make it writable",
            errno.EROFS: "the file system is read-only: choose a writable `output.dir`",
            errno.ENOTDIR: "a regular file stands where a directory must be: choose another `output.dir`"}


class OutputError(UserError, OSError):
    """The run directory cannot be written (disk full, permission denied, read-only, a file in the way)."""


IO_ERRORS = (OSError, pl.exceptions.ComputeError)  # polars reports a failed write as ComputeError("... os error 28")


def output_error(err: Exception, path: Path) -> Exception:
    """``err`` (an ``OSError``, or polars' error around one) as an ``OutputError`` naming ``path`` and the fix when
    the user can fix it, else ``err`` itself (a bug keeps its traceback)."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None and (found := re.search(r"os error (\d+)", str(err))):
        code = int(found.group(1))
    fix = _FIXABLE.get(code or 0)
    if fix is None:
        return err
    return OutputError(f"cannot write {path}: {os.strerror(code or 0)} — {fix} (at or under {path.parent}) and run "
                       "again; finished steps resume from their checkpoints")


def ensure_dir(path: Path) -> None:
    """``mkdir -p`` with an ``OutputError`` naming the problem (a file in the way, permissions, a full disk)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, path) from err


def chain(step_fingerprint: str, kept_sha256: str) -> str:
    """What the next step's fingerprint builds on: this step's fingerprint and the content of the rows it kept."""
    return fingerprint(step_fingerprint, kept_sha256)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:  # in blocks: a million-row checkpoint is never read into memory whole
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: Path) -> None:
    """Give ``path`` the permissions a plain ``open()``/``mkdir`` would have (``0o666``/``0o777`` less the umask):
    ``mkstemp``/``mkdtemp`` create private 0600/0700 entries, which would leave a run unreadable to the group that
    shares it once they are renamed into place."""
    base = 0o777 if path.is_dir() else 0o666
    path.chmod(base & ~_umask())


def write_json_atomic(path: Path, data: Any) -> None:
    ensure_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise output_error(err, path) from err


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` under a temporary name, renamed into place (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except IO_ERRORS as err:
        tmp.unlink(missing_ok=True)
        raise output_error(err, path) from err


def write_parquet_atomic(frame: Any, path: Path) -> None:
    """``frame`` (a polars DataFrame) to ``path`` under a temporary name, renamed into place with the umask's mode."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise output_error(err, path) from err
    finally:
        Path(tmp).unlink(missing_ok=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished ``tmp`` directory to ``target``, replacing any older one."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    public_mode(tmp)  # made by mkdtemp (0700)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_step(target: Path, kept: pl.DataFrame | Path, dropped: pl.DataFrame | Path, stats: dict[str, Any]) -> None:
    """Publish a checkpoint. ``kept``/``dropped`` are frames, or parquet files already written (a streamed step's,
    ``SliceWriter``) on the same file system, which are moved in."""
    ensure_dir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    except OSError as err:
        raise output_error(err, target) from err
    try:
        _write_step(tmp, target, kept, dropped, stats)
    except IO_ERRORS as err:  # the half-written temporary directory goes; the old checkpoint (if any) stays
        raise output_error(err, target) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_step(tmp: Path, target: Path, kept: pl.DataFrame | Path, dropped: pl.DataFrame | Path,
                stats: dict[str, Any]) -> None:
    for frame, name in ((kept, "kept.parquet"), (dropped, "dropped.parquet")):
        if isinstance(frame, Path):
            os.replace(frame, tmp / name)
        else:
            frame.write_parquet(tmp / name, row_group_size=ROW_GROUP_ROWS)
    stats["kept_sha256"] = file_sha256(tmp / "kept.parquet")  # the caller chains it (and sees it)
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
    for name in ("kept.parquet", "dropped.parquet", "stats.json"):
        _fsync(tmp / name)
    replace_dir(tmp, target)


ROW_GROUP_ROWS = 50_000
"""Rows per row group of a checkpoint polars writes whole (ingest, a step without a plan, held dropped rows): polars'
default (~262k rows) made the write's own memory grow with the frame (bench/scale.py's 500k-row ingest checkpoint:
+147 MB with the default, +81 MB with this; 100k rows: +66 MB either way)."""


class SchemaDrift(Exception):
    """A slice's output has other columns or types than the first slice's (a column all null in one slice, say):
    the step cannot be streamed, and the runner runs it on the whole frame instead."""


def iter_slices(path: Path, rows: int, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """The rows of the parquet file ``path``, ``rows`` at a time (the last slice fewer; the same slices whatever the
    file's row groups), typed as ``pl.read_parquet`` types them; only the slice in hand and the row groups it is read
    from are in memory, never the whole file. ``columns``: only these (in the file's order).

    polars reads each slice (``scan_parquet(...).slice``: only the row groups it overlaps are read). pyarrow's
    ``iter_batches`` did the same with growing memory: over a 1M-row checkpoint its peak was 428 MB above the start
    and 239 MB stayed allocated, against 87 MB with polars. A file with row groups much larger than ``rows`` (an
    older checkpoint) is read with pyarrow, which decodes each row group once."""
    import pyarrow.parquet as pq

    schema = pl.Schema(pl.read_parquet_schema(path))
    if columns is not None:
        schema = pl.Schema({k: v for k, v in schema.items() if k in columns})
        columns = list(schema)
    meta = pq.read_metadata(path)
    if all(meta.row_group(i).num_rows <= 2 * rows for i in range(meta.num_row_groups)):
        scan = pl.scan_parquet(path)
        if columns is not None:
            scan = scan.select(columns)
        for start in range(0, meta.num_rows, rows):
            yield scan.slice(start, rows).collect()
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield frame if frame.schema == schema else frame.cast(dict(schema))


def compact(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with buffers of its own, holding only its rows' values.

    A polars string (or binary) column is a list of views into shared buffers, and ``filter``/``slice`` copy the
    views, not the bytes: 1,000 rows filtered from a 50,000-row slice keep all 50,000 texts in memory. A streamed
    step holding each slice's dropped rows held every slice's text this way (heuristics at 1M rows: +25 MB a
    slice, 930 MB at the end). A round trip through polars' IPC format writes only the bytes the views reach and
    keeps every type. ``compact(big.filter(...))`` equals the filtered frame, at the size of its own rows.
    """
    import io

    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    buffer.seek(0)
    return pl.read_ipc(buffer)


class SliceWriter:
    """Appends frames (a streamed step's kept or dropped slices) to one parquet file, a row group per slice; every
    frame must have the first one's columns and types (else ``SchemaDrift``).

    ``hold``: keep the frames and write them at ``close`` in one polars write, as a step run on the whole frame
    writes them (the same bytes, so ``rejects.parquet`` does not depend on streaming); for dropped rows, which
    are few in the steps that stream. Each held frame is a ``compact`` copy: a frame filtered from a slice would
    keep the whole slice's text alive."""

    def __init__(self, path: Path, hold: bool = False) -> None:
        self.path = path
        self.rows = 0
        self._schema: pl.Schema | None = None
        self._writer: Any = None
        self._held: list[pl.DataFrame] | None = [] if hold else None

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        if self._schema is None:
            self._schema = frame.schema
            if self._held is None:
                self._writer = pq.ParquetWriter(self.path, frame.to_arrow().schema, compression="zstd")
        elif frame.schema != self._schema:
            raise SchemaDrift(f"{self.path.name}: slice schema {dict(frame.schema)} != {dict(self._schema)}")
        if self._held is not None:
            self._held.append(compact(frame))
        elif frame.height:
            try:
                self._writer.write_table(frame.to_arrow())
            except ValueError as err:  # pyarrow: "Table schema does not match schema used to create file"
                raise SchemaDrift(f"{self.path.name}: {err}") from err
        self.rows += frame.height

    def close(self, complete: bool = True) -> None:
        """Finish the file (``complete=False``: a failed step, only release it)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._held and complete:
            pl.concat(self._held).rechunk().write_parquet(self.path, row_group_size=ROW_GROUP_ROWS)
        self._held = None


def _fsync(path: Path) -> None:
    # Data on disk before the rename publishes the directory: a power cut must not leave a complete-looking step
    # with empty files.
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def checkpoint_stats(target: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The stats of a complete checkpoint with this fingerprint whose ``kept.parquet`` still has the recorded hash,
    else ``None``; the rows are not read (the runner reads them when a step needs them)."""
    stats_path = target / "stats.json"
    if not stats_path.exists():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        log.warning(f"{stats_path}: unreadable, recomputing the step")
        return None
    if stats.get("fingerprint") != expected_fingerprint:
        return None
    try:
        digest = file_sha256(target / "kept.parquet")
    except OSError:
        log.warning(f"{target}: kept.parquet is missing, recomputing the step")
        return None
    if digest != stats.get("kept_sha256"):
        log.warning(f"{target}: kept.parquet does not match its recorded hash, recomputing the step")
        return None
    return stats


def adapter_state(adapter_dir: Path, data_fingerprint: str) -> dict[str, Any] | None:
    """Which data the adapter in ``adapter_dir`` was trained on, against the run's current data: None when there
    is no adapter, else ``{"data_fingerprint", "current"}`` (``current`` None when the adapter does not record its
    data: trained by an older gristmill). A ``--no-train`` run after a trained one leaves the old adapter in place;
    this is what the manifest records so ``gristmill inspect`` can say it is stale."""
    metrics_path = adapter_dir / "train_metrics.json"
    if not metrics_path.is_file():
        return None
    try:
        trained_on = json.loads(metrics_path.read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        trained_on = None
    return {"data_fingerprint": trained_on, "current": None if trained_on is None else trained_on == data_fingerprint}
