"""Continuous fine-tuning: a run that continues an earlier run (``train.resume_adapter``) and the lineage of runs.

A continued run (generation n+1) differs from a fresh one in four places, all decided here and recorded in its
manifest under ``continues``:

- training starts from the earlier adapter and its global step count (``resume_plan``; the trainer loads it);
- ``train.replay_fraction`` of the earlier run's curated rows are mixed into the training rows (``replay_rows``);
- the new batch is checked against everything the lineage (the earlier run, the run it continued, ...) curated
  and evaluated, without the user listing files (``continuation``): each ``dedup_minhash`` step gets the lineage's
  curated sets appended to its ``against`` (a recipe without that step is not deduplicated against them: adding a
  step the user did not write would surprise more than it helps), and the lineage's eval files join the eval
  decontamination (the implicit ``eval_decontaminate`` step, or a new one where the recipe has none);
- its eval sets are its own plus the lineage's, so ``gristmill runs`` shows each generation on every earlier set
  (did a round help, did it forget?).

The curated set of a run is ``<run>/dataset/data.parquet`` (else its last step's ``kept.parquet``). Its MinHash
sketch is persisted in ``<run>/index/minhash-<key>.parquet`` (``key`` = the params that shape signatures,
``minhash.sketch_key``) with a JSON sidecar holding the curated file's sha256: a later round reads it instead of
re-hashing those rows (``earlier_sketches``; stats ``earlier_rows_from_index`` / ``earlier_rows_hashed``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gristmill.checkpoint import write_json_atomic
from gristmill.common.errors import InputError, MissingFileError, UserError
from gristmill.curation import minhash
from gristmill.eval_params import EVAL_DECONTAM_STEP, EvalSet, eval_decontamination
from gristmill.ingest import fingerprint_path
from gristmill.recipe import Recipe, Step

log = logging.getLogger(__name__)
RESUME_KEY = "train.resume_adapter"


@dataclass
class RunRef:
    """A finished run directory and its manifest."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.dir.name)

    @property
    def parent(self) -> Path | None:
        """The run this one continued (manifest ``continues.run``), if any."""
        earlier = (self.manifest.get("continues") or {}).get("run")
        return Path(earlier) if earlier else None

    def train_metrics(self) -> dict[str, Any]:
        path = self.dir / "adapter" / "train_metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def global_step(self) -> int:
        """Optimizer steps behind this run's adapter, counting the generations before it."""
        metrics = self.train_metrics()
        return int(metrics.get("global_step") or metrics.get("steps") or 0)


def open_run(path: Path, key: str = RESUME_KEY, need_adapter: bool = True) -> RunRef:
    """The finished run at ``path`` (an error naming ``key`` when it is not one, or has no trained adapter)."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise MissingFileError(f"{key}: {path} is not a run directory (no manifest.json); name the output.dir of the "
                               "earlier run to continue from (relative to the recipe file)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != "ok":
        raise UserError(f"{key}: the run {path} has status {manifest.get('status')!r}; only a finished run can be "
                        "continued (run it to the end first)")
    if need_adapter and not (path / "adapter" / "adapter_config.json").is_file():
        raise MissingFileError(f"{key}: the run {path} has no trained adapter ({path / 'adapter'}); train it first "
                               f"(`gristmill train {path}`)")
    return RunRef(path.resolve(), manifest)


def ancestry(run: RunRef) -> list[RunRef]:
    """``run``, the run it continued, that run's, ... (newest first). A run listed twice is a loop: an error."""
    line, seen = [run], {run.dir}
    while (parent := line[-1].parent) is not None:
        if not (parent / "manifest.json").is_file():
            log.warning(f"lineage: {line[-1].dir} continued {parent}, which no longer exists; the lineage stops there")
            break
        ref = open_run(parent, key=f"{line[-1].dir}: continues", need_adapter=False)
        if ref.dir in seen:
            raise UserError(f"lineage: {ref.dir} continues itself through {[str(r.dir) for r in line]}")
        seen.add(ref.dir)
        line.append(ref)
    return line


def curated_file(run: RunRef) -> Path:
    """The run's curated rows: its dataset export, else the last step's checkpoint."""
    data = run.dir / "dataset" / "data.parquet"
    if data.is_file():
        return data
    steps = run.manifest.get("steps") or []  # ingest first, then the recipe's steps: NN-name folders
    if steps and (last := run.dir / "steps" / f"{len(steps) - 1:02d}-{steps[-1]['step']}" / "kept.parquet").is_file():
        return last
    raise MissingFileError(f"{run.dir}: neither dataset/data.parquet nor the last step's kept.parquet exists; rerun "
                           "that run (its curated rows are what a continued run replays and deduplicates against)")


def eval_sets(run: RunRef) -> list[EvalSet]:
    """The run's recipe eval sets with absolute paths (relative paths are relative to its recipe file)."""
    base = Path(run.manifest.get("recipe_path") or run.dir).parent
    out = []
    for raw in (run.manifest.get("recipe") or {}).get("eval") or []:
        spec = EvalSet.model_validate(raw)
        path = Path(spec.path).expanduser()
        out.append(spec.model_copy(update={"path": str(path if path.is_absolute() else base / path)}))
    return out


def continuation(recipe: Recipe, run_dir: Path) -> tuple[Recipe, dict[str, Any] | None]:
    """The recipe a continued run executes (see the module docstring) and its manifest record ``continues``;
    ``(recipe, None)`` when the recipe does not set ``train.resume_adapter``. Applying it twice changes nothing."""
    if recipe.train is None or recipe.train.resume_adapter is None:
        return recipe, None
    earlier_dir = recipe.resolve(recipe.train.resume_adapter)
    if earlier_dir.resolve() == Path(run_dir).resolve():
        raise UserError(f"{RESUME_KEY}: {earlier_dir} is this run's own output.dir; a continued run needs its own "
                        "output.dir (e.g. runs/<name>-2) and resume_adapter naming the earlier one")
    line = ancestry(open_run(earlier_dir))
    curated = [curated_file(r) for r in line]
    steps = list(recipe.steps)
    dedup_added: list[str] = []
    for i, step in enumerate(steps):
        if step.name != "dedup_minhash":
            continue
        have = {recipe.resolve(a).resolve() for a in step.params.against}  # type: ignore[attr-defined]
        add = [str(c) for c in curated if c.resolve() not in have]
        if add:
            against = [*step.params.against, *add]  # type: ignore[attr-defined]
            steps[i] = Step(step.name, step.params.model_copy(update={"against": against}))
            dedup_added += add
    lineage_sets = [s for r in line for s in eval_sets(r)]
    decontam_added: list[str] = []
    implicit = eval_decontamination([(s.name, s.params) for s in steps], lineage_sets, recipe.resolve)
    if implicit is not None:
        at, params = implicit
        decontam_added = list(params.eval_sets)
        existing = [i for i, s in enumerate(steps) if s.name == EVAL_DECONTAM_STEP]
        if existing and steps[existing[-1]].params.has_header == params.has_header:  # type: ignore[attr-defined]
            old = steps[existing[-1]].params
            steps[existing[-1]] = Step(EVAL_DECONTAM_STEP, old.model_copy(
                update={"eval_sets": [*old.eval_sets, *params.eval_sets]}))  # type: ignore[attr-defined]
        else:
            steps.insert(at, Step(EVAL_DECONTAM_STEP, params))
    evals = list(recipe.eval)
    have_files = {recipe.resolve(s.path).resolve() for s in evals}
    names = {s.name for s in evals}
    eval_added = []
    for run, specs in ((r, eval_sets(r)) for r in line):
        for spec in specs:
            if Path(spec.path).resolve() in have_files:
                continue
            name = spec.name if spec.name not in names else f"{run.name}.{spec.name}"
            while name in names:
                name += "_"
            evals.append(spec.model_copy(update={"name": name}))
            have_files.add(Path(spec.path).resolve())
            names.add(name)
            eval_added.append(name)
    record = {
        "run": str(line[0].dir), "name": line[0].name, "lineage": [str(r.dir) for r in line],
        "start_step": line[0].global_step(), "replay_fraction": recipe.train.replay_fraction,
        "dedup_against": dedup_added, "decontaminate_against": decontam_added, "eval_sets_added": eval_added,
    }
    if not any(s.name == "dedup_minhash" for s in steps):
        record["note"] = "the recipe has no dedup_minhash step: the new batch is not near-deduplicated against the lineage"
    return dataclasses.replace(recipe, steps=steps, eval=evals), record


@dataclass
class ResumePlan:
    """What ``Runner.train`` needs to continue the earlier adapter."""

    run: RunRef
    adapter: Path
    start_step: int
    curated: Path
    fingerprint: dict[str, Any]
    """Folded into the training fingerprint: the earlier adapter and data it continues from."""


def resume_plan(recipe: Recipe) -> ResumePlan | None:
    if recipe.train is None or recipe.train.resume_adapter is None:
        return None
    run = open_run(recipe.resolve(recipe.train.resume_adapter))
    metrics = run.train_metrics()
    return ResumePlan(run, run.dir / "adapter", run.global_step(), curated_file(run),
                      {"run": str(run.dir), "adapter_fingerprint": metrics.get("fingerprint"),
                       "data_fingerprint": run.manifest.get("fingerprint")})


def replay_count(new_rows: int, earlier_rows: int, fraction: float) -> int:
    """Earlier rows replayed: ``fraction x new_rows`` rounded half up, at most ``earlier_rows``.

    Example: 25 new rows, fraction 0.1 -> 2.5 -> 3 (of any 3 or more earlier rows); 25 new rows, 2 earlier -> 2.
    """
    return min(earlier_rows, math.floor(fraction * new_rows + 0.5))


def replay_rows(earlier: pl.DataFrame, new_rows: int, fraction: float, seed: int) -> pl.DataFrame:
    """``replay_count`` rows of ``earlier`` drawn with ``seed`` (in their original order), ids prefixed
    ``replay:`` so they never collide with the new batch's."""
    k = replay_count(new_rows, earlier.height, fraction)
    picked = sorted(random.Random(seed).sample(range(earlier.height), k))
    out = earlier[picked]
    return out.with_columns(pl.format("replay:{}", pl.col("id").cast(pl.String)).alias("id")) if k else out


# --- the persisted MinHash index -------------------------------------------------------------------------------


def _index_paths(run_dir: Path, params: minhash.MinhashParams) -> tuple[Path, Path]:
    stem = run_dir / "index" / f"minhash-{minhash.sketch_key(params)}"
    return stem.with_suffix(".parquet"), stem.with_suffix(".json")


def write_index(run_dir: Path, data: Path, params: minhash.MinhashParams, slice_rows: int = 0) -> dict[str, Any]:
    """Sketch the curated rows in ``data`` (a file of ``run_dir``) and persist the sketch with the file's sha256,
    ``slice_rows`` rows at a time (default ``SLICE_ROWS``)."""
    from gristmill.checkpoint import iter_slices
    from gristmill.common.contract import SLICE_ROWS

    # A sketch is per row, so slice by slice gives the index of all rows at once, without ever holding the whole
    # set's texts and signatures (512 bytes a row at 128 permutations, plus the shingle sets).
    parts = ((part["id"], minhash.sketch(part["text"], params))
             for part in iter_slices(data, slice_rows or SLICE_ROWS, ["id", "text"]))
    return _persist_parts(run_dir, data, params, parts)


def _run_of(data: Path) -> Path | None:
    """The run directory a curated file belongs to (``<run>/dataset/data.parquet`` or
    ``<run>/steps/NN-x/kept.parquet``), if it is one."""
    for up in (data.parent.parent, data.parent.parent.parent):
        if (up / "manifest.json").is_file() and data.resolve().is_relative_to(up.resolve()):
            return up
    return None


def earlier_sketches(params: minhash.MinhashParams) -> tuple[pl.DataFrame | None, minhash.Sketch | None,
                                                              dict[str, int]]:
    """The ``against`` files' rows (``id`` prefixed with the file) and their sketch: read from the file's run index
    when it is current, else hashed here (and persisted when the file is a run's curated set, for the next round).
    Returns ``(ids, sketch, stats)``; ``(None, None, stats)`` when there are no earlier rows."""
    frames, sketches = [], []
    stats = {"earlier_rows_from_index": 0, "earlier_rows_hashed": 0}
    for path in map(Path, params.against):
        if path.is_dir():
            raise InputError(f"dedup_minhash.against: {path} is a directory; name its curated file, e.g. "
                             f"{path / 'dataset' / 'data.parquet'}")
        run_dir = _run_of(path)
        sk = None
        if run_dir is not None:
            table_path, meta_path = _index_paths(run_dir, params)
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
            if meta and table_path.is_file() and meta.get("sha256") == fingerprint_path(path):
                table = pl.read_parquet(table_path)
                ids, sk = table["id"], minhash.frame_sketch(table, params.num_perm)
                stats["earlier_rows_from_index"] += table.height
        if sk is None:
            old = pl.read_parquet(path, columns=["id", "text"])
            ids = old["id"]
            sk = minhash.sketch(old["text"], params)
            stats["earlier_rows_hashed"] += old.height
            if run_dir is not None:  # the next round reads it back
                _persist(run_dir, path, params, ids, sk)
        # Prefix ids with where they came from: an earlier run's "file:line" ids may repeat this run's.
        frames.append(pl.DataFrame({"id": ids.cast(pl.String)}).select(
            pl.format("{}:{}", pl.lit(str(path)), pl.col("id")).alias("id")))
        sketches.append(sk)
    if not frames:
        return None, None, stats
    merged = sketches[0]
    for sk in sketches[1:]:
        merged = merged.concat(sk)
    return pl.concat(frames), merged, stats


def _persist(run_dir: Path, data: Path, params: minhash.MinhashParams, ids: pl.Series,
             sk: minhash.Sketch) -> dict[str, Any]:
    table_path, meta_path = _index_paths(run_dir, params)
    meta = {"key": minhash.sketch_key(params), "file": str(data.resolve().relative_to(run_dir.resolve())),
            "rows": len(sk), "index": str(table_path)}
    try:
        table_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = table_path.with_suffix(".parquet.tmp")
        minhash.sketch_frame(ids, sk).write_parquet(tmp)
        tmp.replace(table_path)
        write_json_atomic(meta_path, meta | {"sha256": fingerprint_path(data)})
    except OSError as err:  # a read-only earlier run: the sketch is only not reused next time
        log.warning(f"could not persist the MinHash index of {data} under {run_dir / 'index'}: {err}")
    return meta


def _persist_parts(run_dir: Path, data: Path, params: minhash.MinhashParams,
                   parts: Iterator[tuple[pl.Series, minhash.Sketch]]) -> dict[str, Any]:
    """``_persist`` of the sketch of ``data``'s rows given in consecutive parts, a row group each (the run's own
    index, written after the run)."""
    from gristmill.checkpoint import SliceWriter

    table_path, meta_path = _index_paths(run_dir, params)
    tmp = table_path.with_suffix(".parquet.tmp")
    writer = SliceWriter(tmp)
    try:
        table_path.parent.mkdir(parents=True, exist_ok=True)
        complete = False
        try:
            for ids, sk in parts:
                writer.write(minhash.sketch_frame(ids, sk))
            complete = True
        finally:
            writer.close(complete)
        if writer.rows == 0:  # no rows: the empty table, with its columns
            minhash.sketch_frame(pl.Series("id", [], dtype=pl.String), minhash.Sketch(
                np.zeros((0, params.num_perm), dtype=np.uint32), np.zeros(1, dtype=np.int64),
                np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=bool))).write_parquet(tmp)
        tmp.replace(table_path)
        write_json_atomic(meta_path, _index_meta(run_dir, data, params, writer.rows) | {"sha256": fingerprint_path(data)})
    except OSError as err:  # as _persist: the sketch is only not reused next time
        tmp.unlink(missing_ok=True)
        log.warning(f"could not persist the MinHash index of {data} under {run_dir / 'index'}: {err}")
    return _index_meta(run_dir, data, params, writer.rows)


def _index_meta(run_dir: Path, data: Path, params: minhash.MinhashParams, rows: int) -> dict[str, Any]:
    return {"key": minhash.sketch_key(params), "file": str(data.resolve().relative_to(run_dir.resolve())),
            "rows": rows, "index": str(_index_paths(run_dir, params)[0])}


def index_run(run_dir: Path, recipe: Recipe, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """After a run: persist the sketch of its curated set for each distinct sketch key of its dedup_minhash steps
    (what a run continuing it will deduplicate against)."""
    out, seen = [], set()
    for step in recipe.steps:
        if step.name != "dedup_minhash":
            continue
        params: minhash.MinhashParams = step.params  # type: ignore[assignment]
        if minhash.sketch_key(params) in seen:
            continue
        seen.add(minhash.sketch_key(params))
        data = curated_file(RunRef(run_dir, manifest))
        table_path, meta_path = _index_paths(run_dir, params)
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        current = table_path.is_file() and meta.get("sha256") == fingerprint_path(data)
        out.append(meta if current else write_index(run_dir, data, params))
    return out


# --- reading a lineage back (`gristmill runs`, `inspect`, the report) ---------------------------------------------


def continued(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """One run's place in its lineage, for ``gristmill inspect`` and the report; None for a run that continues
    nothing and that no run beside it continues.

    From the manifest's ``continues``: the run it continued (``run``, ``name``; ``exists`` False once deleted),
    its ``generation`` (2 for a run continuing a fresh one), the adapter's steps before and after (``start_step``
    -> ``global_step``), and the data added: ``rows_added`` (this run's curated rows, the new batch), the earlier
    run's curated rows (``earlier_rows``), ``replay_rows`` mixed in, new rows dropped as near duplicates of the
    lineage's data or as copies of its eval sets, the files checked against and the eval sets taken over.
    ``continued_by``: runs in the same folder that continue this one (``gristmill runs`` lists whole lineages).
    """
    record = manifest.get("continues") or {}
    here = Path(run_dir).resolve()
    children = []
    for other in sorted(here.parent.glob("*/manifest.json")):
        if other.parent.resolve() == here:
            continue
        try:
            parent = (json.loads(other.read_text()).get("continues") or {}).get("run")
        except json.JSONDecodeError:  # a run being written: not ours to judge here
            continue
        if parent and Path(parent).resolve() == here:
            children.append(str(other.parent))
    if not record and not children:
        return None
    out: dict[str, Any] = {"continued_by": children}
    if not record:
        return out
    earlier = Path(record["run"])
    earlier_manifest = earlier / "manifest.json"
    earlier_rows = json.loads(earlier_manifest.read_text()).get("rows_final") if earlier_manifest.is_file() else None
    dropped: dict[str, int] = {}
    for step in manifest.get("steps") or []:
        for reason, n in (step.get("dropped_by_reason") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    train = manifest.get("train") or {}
    return out | {
        "run": record["run"], "name": record.get("name"), "exists": earlier_manifest.is_file(),
        "generation": len(record.get("lineage") or [record["run"]]) + 1, "lineage": record.get("lineage") or [],
        "start_step": record.get("start_step"), "global_step": train.get("global_step"),
        "rows_added": manifest.get("rows_final"), "earlier_rows": earlier_rows,
        "replay_fraction": record.get("replay_fraction"), "replay_rows": record.get("replay_rows"),
        "near_duplicates_of_lineage": dropped.get("near_duplicate_of_earlier", 0),
        "eval_copies_dropped": dropped.get("eval_contamination", 0),
        "dedup_against": record.get("dedup_against") or [],
        "decontaminate_against": record.get("decontaminate_against") or [],
        "eval_sets_added": record.get("eval_sets_added") or [], "note": record.get("note"),
    }


def continued_lines(info: dict[str, Any]) -> list[str]:
    """``continued`` as short lines of text (the CLI prints them; the report shows them as a list)."""
    lines = []
    if "run" in info:
        gone = "" if info["exists"] else " (no longer on disk)"
        lines.append(f"continues {info['name'] or Path(info['run']).name} ({info['run']}){gone}: generation "
                     f"{info['generation']}, adapter steps {info['start_step']} → {info['global_step']}")
        replay = "" if info["replay_rows"] is None else (f", {info['replay_rows']} earlier rows replayed "
                                                         f"(fraction {info['replay_fraction']})")
        earlier = "" if info["earlier_rows"] is None else f" (the earlier run curated {info['earlier_rows']})"
        lines.append(f"data added: {info['rows_added']} new curated rows{earlier}{replay}")
        lines.append(f"checked against the lineage: {info['near_duplicates_of_lineage']} near duplicates of its data "
                     f"dropped ({len(info['dedup_against'])} curated set(s)), {info['eval_copies_dropped']} copies "
                     f"of eval items dropped (its own eval sets and {len(info['decontaminate_against'])} earlier "
                     "eval file(s))")
        if info["eval_sets_added"]:
            lines.append(f"scored on the lineage's eval sets too: {', '.join(info['eval_sets_added'])}")
        if info.get("note"):
            lines.append(f"note: {info['note']}")
    for child in info.get("continued_by") or []:
        lines.append(f"continued by {child}")
    return lines


def find_runs(path: Path) -> list[RunRef]:
    """The run at ``path`` and its ancestors, or every run directly under ``path`` (and their ancestors)."""
    if (path / "manifest.json").is_file():
        return ancestry(RunRef(path.resolve(), json.loads((path / "manifest.json").read_text())))
    if not path.is_dir():
        raise MissingFileError(f"{path}: not a directory; give a run directory or the folder holding runs")
    runs: dict[Path, RunRef] = {}
    for manifest in sorted(path.glob("*/manifest.json")):
        for ref in ancestry(RunRef(manifest.parent.resolve(), json.loads(manifest.read_text()))):
            runs.setdefault(ref.dir, ref)
    return list(runs.values())


def describe(path: Path) -> dict[str, Any]:
    """The lineages found at ``path``: per run its generation (1 = a fresh run), the run it continued, rows
    curated (the new batch), rows trained (new + replayed), steps, and the adapter's metric on every eval set it was
    scored on (``eval/summary.json``), plus each lineage's table ``{set, metric, <run>: value, ...}``.

    Runs are ordered root first; a run continued by several runs starts a branch (each is listed once)."""
    runs = find_runs(path)
    by_dir = {r.dir: r for r in runs}
    children: dict[Path | None, list[RunRef]] = {}
    for r in runs:
        parent = r.parent.resolve() if r.parent is not None and r.parent.resolve() in by_dir else None
        children.setdefault(parent, []).append(r)
    rows: list[dict[str, Any]] = []

    def walk(ref: RunRef, generation: int) -> None:
        rows.append(_summarise(ref, generation))
        for child in sorted(children.get(ref.dir, []), key=lambda c: str(c.dir)):
            walk(child, generation + 1)

    for root in sorted(children.get(None, []), key=lambda c: str(c.dir)):
        walk(root, 1)
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        for key, value in row["eval"].items():
            set_name, metric = key.split("/", 1)
            entry = table.setdefault((set_name, metric), {"set": set_name, "metric": metric})
            entry.setdefault("base", row["eval_base"].get(key))
            entry[row["run"]] = value
    return {"runs": rows, "eval_table": list(table.values())}


def _summarise(ref: RunRef, generation: int) -> dict[str, Any]:
    metrics = ref.train_metrics()
    continues = ref.manifest.get("continues") or {}
    values, base = {}, {}
    summary_path = ref.dir / "eval" / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        for row in summary.get("table", []):
            key = f"{row['set']}/{row['metric']}"
            if row.get("adapter") is not None:
                values[key] = row["adapter"]
            base[key] = row.get("base")
    return {
        "run": ref.dir.name, "name": ref.name, "dir": str(ref.dir), "generation": generation,
        "continues": continues.get("run"), "rows_curated": ref.manifest.get("rows_final"),
        "rows_trained": metrics.get("train_rows"), "replay_rows": metrics.get("replay_rows", 0),
        "start_step": metrics.get("start_step", 0), "global_step": metrics.get("global_step", metrics.get("steps")),
        "eval_loss": metrics.get("eval_loss_after"), "eval": values, "eval_base": base,
    }
