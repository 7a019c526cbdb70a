"""Reading a run directory back: its summary (``gristmill inspect``), one row's history (``explain``), rows of a
step (``show``) and the difference between two runs (``diff``).

Everything here reads what the runner wrote (``manifest.json``, ``steps/NN-name/{kept,dropped}.parquet``,
``dataset/data.parquet``); nothing is recomputed. The manifest's ``steps`` list decides which checkpoint folders
belong to the run (a folder left by an earlier recipe with other steps is ignored).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.common.errors import MissingFileError, UserError


def load_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: give the directory of a run (`gristmill run` writes it)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err}); rerun the recipe to rewrite it") from err


def step_dirs(run_dir: Path, manifest: dict[str, Any]) -> list[tuple[str, Path]]:
    """``(label, folder)`` of every step the manifest lists, in order (``00-ingest``, ``01-normalize``, ...)."""
    out = []
    for i, stats in enumerate(manifest.get("steps", [])):
        label = f"{i:02d}-{stats['step']}"
        out.append((label, run_dir / "steps" / label))
    return out


def summary(run_dir: Path) -> dict[str, Any]:
    """What ``gristmill inspect`` shows: per step rows in/added/kept/dropped, reasons and seconds; synthetic yield;
    models; the gate; whether the adapter belongs to this run's data."""
    manifest = load_manifest(run_dir)
    steps = []
    for (label, _), stats in zip(step_dirs(run_dir, manifest), manifest.get("steps", []), strict=True):
        steps.append({"step": label, "rows_in": stats.get("rows_in", 0), "added": stats.get("rows_added", 0),
                      "kept": stats.get("kept", 0), "dropped": stats.get("dropped", 0),
                      "reasons": stats.get("dropped_by_reason", {}), "seconds": stats.get("seconds"),
                      "resumed": bool(stats.get("resumed"))})
    synth = []
    final_sources = _final_sources(run_dir)
    for label, stats in zip((s["step"] for s in steps), manifest.get("steps", []), strict=True):
        if stats.get("step") == "synthesize" and stats.get("rows_added"):
            in_final = final_sources.get(f"synth:{(stats.get('params') or {}).get('method')}")
            synth.append({"step": label, "generated": stats["rows_added"],
                          # the step drops generated candidates only (it keeps every row it was given)
                          "kept_by_step": max(stats["rows_added"] - stats.get("dropped", 0), 0),
                          "in_dataset": in_final,
                          "yield": round(in_final / stats["rows_added"], 4) if in_final is not None else None})
    adapter = manifest.get("adapter")
    if adapter is None and (run_dir / "adapter" / "train_metrics.json").is_file():
        adapter = {"data_fingerprint": None, "current": None}  # a manifest older than the adapter record
    gate: dict[str, Any] = {"status": manifest.get("status")}
    if manifest.get("gate_failures"):
        gate["failures"] = manifest["gate_failures"]
    if manifest.get("audit_override"):
        gate["overridden"] = manifest["audit_override"]
    gated = [s for s in manifest.get("steps", []) if "gate" in s]
    if gated:
        gate["passed"] = all(s["gate"]["passed"] for s in gated)
    return {"run": str(run_dir), "name": manifest.get("name"), "status": manifest.get("status"),
            "rows_final": manifest.get("rows_final"), "seconds": manifest.get("seconds"), "steps": steps,
            "synthetic": synth, "models": manifest.get("models", {}), "gate": gate, "adapter": adapter,
            "train": {k: manifest["train"].get(k) for k in ("steps", "eval_loss_before", "eval_loss_after")}
            if manifest.get("train") else None}


def _final_sources(run_dir: Path) -> dict[str, int]:
    data = run_dir / "dataset" / "data.parquet"
    if not data.is_file():
        return {}
    counts = pl.scan_parquet(data).group_by("source").len().collect()
    return dict(zip(counts["source"].to_list(), counts["len"].to_list(), strict=True))


def _find(path: Path, row_id: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    hit = pl.scan_parquet(path).filter(pl.col("id") == row_id).collect()
    return hit.row(0, named=True) if hit.height else None


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    """A row's meta as a dict without empty fields (rejects.parquet stores it as JSON text)."""
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return {"meta": meta}
    return {k: v for k, v in (meta or {}).items() if v is not None}


def explain(run_dir: Path, row_id: str) -> dict[str, Any]:
    """One row's history through the run.

    Walks the checkpoints in order: a step whose ``kept.parquet`` holds the id passed it (``changed`` when its text
    differs from the step before: normalize, scrub_pii), one whose ``dropped.parquet`` holds it dropped it (reason,
    detail). A dedup drop names the row it duplicated (``meta.duplicate_of``); that row's text is looked up in the
    same step. Example: a sample row that is an exact copy of ``exact-12`` reads ingest passed → normalize passed →
    filter passed → dedup_exact dropped (exact_duplicate, duplicate of exact-12, with its text).
    """
    manifest = load_manifest(run_dir)
    history: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    prev_text: str | None = None
    duplicate: dict[str, Any] | None = None
    for label, folder in step_dirs(run_dir, manifest):
        kept = _find(folder / "kept.parquet", row_id)
        dropped = None if kept else _find(folder / "dropped.parquet", row_id)
        row = kept or dropped
        if row is None:
            if first is not None:
                break  # gone without a drop record: the run stopped (gate) before it
            continue
        entry: dict[str, Any] = {"step": label, "outcome": "kept" if kept else "dropped"}
        if first is None:
            first = row
            if label != "00-ingest":
                entry["added"] = True  # generated by this step (synthesis)
        elif prev_text is not None and row.get("text") != prev_text:
            entry["changed"] = True
            entry["before"] = prev_text
            entry["after"] = row.get("text")
        if dropped:
            entry["reason"] = dropped.get("reason")
            entry["detail"] = dropped.get("detail")
            dup = _meta(dropped).get("duplicate_of")
            if dup:
                other = _find(folder / "kept.parquet", dup) or _find(folder / "dropped.parquet", dup)
                duplicate = {"id": dup, "step": label, "text": other.get("text") if other else None}
        history.append(entry)
        prev_text = row.get("text")
        last = row
        if dropped:
            break
    if first is None or last is None:
        raise UserError(f"{run_dir}: no row with id {row_id!r} in any step of this run; ids are shown by "
                        f"`gristmill show {run_dir}` (an input row without its own id is `<file name>:<line>`)")
    meta = _meta(last)
    final = history[-1]["outcome"] == "kept" and history[-1]["step"] == step_dirs(run_dir, manifest)[-1][0]
    return {"id": row_id, "source": first.get("source"), "line": _meta(first).get("source_line"),
            "text": last.get("text"), "history": history,
            "outcome": "in the dataset" if final and manifest.get("status") == "ok" else history[-1]["outcome"],
            "duplicate": duplicate, "synth": meta.pop("synth", None),
            "scores": {k: v for k, v in meta.items() if k not in ("source_line", "duplicate_of")}}


def rows(run_dir: Path, step: str | None = None, *, dropped: bool = False, reason: str | None = None,
         limit: int = 20) -> tuple[pl.DataFrame, str]:
    """Rows to browse and where they come from: the final dataset by default; ``step`` (a name such as
    ``dedup_exact`` or a label ``03-dedup_exact``) its kept rows, or with ``dropped`` its dropped rows; ``dropped``
    without a step: every rejected row (``rejects.parquet``). ``reason`` filters dropped rows."""
    manifest = load_manifest(run_dir)
    if step is None:
        path = run_dir / ("rejects.parquet" if dropped or reason else "dataset/data.parquet")
    else:
        labels = step_dirs(run_dir, manifest)
        match = [f for label, f in labels if step in (label, label[3:])]
        if not match:
            raise UserError(f"{run_dir}: no step {step!r}; this run's steps: "
                            f"{', '.join(label for label, _ in labels)}")
        path = match[-1] / ("dropped.parquet" if dropped or reason else "kept.parquet")
    if not path.is_file():
        raise MissingFileError(f"{path} not found (a dataset is written only when the run finished with parquet "
                               "among output.formats)")
    scan = pl.scan_parquet(path)
    if reason:
        if "reason" not in scan.collect_schema().names():
            return pl.DataFrame(), str(path)
        scan = scan.filter(pl.col("reason") == reason)
    return scan.head(limit).collect(), str(path)


def _hashes(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("id", pl.col("text").fill_null("").map_elements(
        lambda t: hashlib.sha256(t.encode()).hexdigest()[:16], return_dtype=pl.String).alias("hash"))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) and len(v) == 1 for v in value):
        # the steps list: key each step by its position and name, so a changed parameter reads steps[3].dedup...
        out = {}
        for i, v in enumerate(value):
            (name, params), = v.items()
            out |= _flat(params if isinstance(params, dict) else {"": params}, f"{prefix}[{i}].{name}")
        return out
    return {prefix: value}


def diff(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Rows added/removed between two runs' datasets (by id, and by content hash: a row whose id stayed but whose
    text changed counts as changed), the per-step counts and reasons side by side, and the recipe keys whose value
    differs. Example: B drops 3 more rows at ``filter`` (``too_few_words``) -> ``removed`` 3, ``steps`` shows
    filter dropped 5 -> 8, and ``params`` ``steps[2].filter.min_words: 5 -> 8``."""
    ma, mb = load_manifest(run_a), load_manifest(run_b)
    out: dict[str, Any] = {"a": str(run_a), "b": str(run_b)}
    data_a, data_b = run_a / "dataset" / "data.parquet", run_b / "dataset" / "data.parquet"
    if data_a.is_file() and data_b.is_file():
        ha = _hashes(pl.read_parquet(data_a, columns=["id", "text"]))
        hb = _hashes(pl.read_parquet(data_b, columns=["id", "text"]))
        both = ha.join(hb, on="id", how="inner", suffix="_b")
        out["rows"] = {"a": ha.height, "b": hb.height,
                       "added": hb.join(ha, on="id", how="anti")["id"].to_list(),
                       "removed": ha.join(hb, on="id", how="anti")["id"].to_list(),
                       "changed": both.filter(pl.col("hash") != pl.col("hash_b"))["id"].to_list(),
                       "same_content_new_id": hb.join(ha, on="id", how="anti").join(ha, on="hash", how="semi")
                       .height}
    steps: dict[str, dict[str, Any]] = {}
    for side, manifest in (("a", ma), ("b", mb)):
        for i, s in enumerate(manifest.get("steps", [])):
            key = f"{i:02d}-{s['step']}"
            steps.setdefault(key, {})[side] = {"kept": s.get("kept"), "dropped": s.get("dropped"),
                                              "reasons": s.get("dropped_by_reason", {})}
    out["steps"] = steps
    fa, fb = _flat(ma.get("recipe", {})), _flat(mb.get("recipe", {}))
    out["params"] = {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb))
                     if fa.get(k) != fb.get(k) and k not in ("output.dir",)}
    return out
