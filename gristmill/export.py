"""Writing the curated dataset, the rejects file and the data card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.checkpoint import IO_ERRORS, ensure_dir, output_error, replace_dir, write_json_atomic


def write_rejects(path: Path, step_dirs: list[tuple[str, Path]]) -> dict[str, Any]:
    """One file with every dropped row of every step: id, step, reason, source, text, detail, meta (as JSON)."""
    parts = []
    for step, directory in step_dirs:
        file = directory / "dropped.parquet"
        if not file.exists():
            continue
        dropped = pl.read_parquet(file)
        if dropped.height == 0:
            continue
        cols = [
            pl.col("id").cast(pl.String),
            pl.lit(step).alias("step"),
            pl.col("reason").cast(pl.String),
            (pl.col("source").cast(pl.String) if "source" in dropped.columns else pl.lit(None, pl.String)).alias("source"),
            (pl.col("text").cast(pl.String) if "text" in dropped.columns else pl.lit(None, pl.String)).alias("text"),
            (pl.col("detail").cast(pl.String) if "detail" in dropped.columns else pl.lit(None, pl.String)).alias("detail"),
        ]
        meta = (
            [json.dumps(m, default=str) for m in dropped["meta"].to_list()]
            if "meta" in dropped.columns else [None] * dropped.height
        )
        parts.append(dropped.select(cols).with_columns(pl.Series("meta", meta, dtype=pl.String)))
    frame = pl.concat(parts) if parts else pl.DataFrame(
        schema={k: pl.String for k in ("id", "step", "reason", "source", "text", "detail", "meta")}
    )
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        frame.write_parquet(tmp)
        tmp.replace(path)
    except IO_ERRORS as err:
        tmp.unlink(missing_ok=True)
        raise output_error(err, path) from err
    counts = frame.group_by("step", "reason").len().sort("step", "reason").to_dicts()
    return {"path": str(path), "rows": frame.height, "by_step_reason": counts}


def _jsonl_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    cols = [c for c in ("id", "messages", "text", "source") if c in frame.columns]
    rows = frame.select(cols).to_dicts()
    for row in rows:
        if row.get("messages"):
            row.pop("text", None)
    return rows


def export_dataset(frame: pl.DataFrame, out: Path, recipe: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the final set in the recipe's formats plus README.md; returns what was written.

    Every file is written under a temporary name and renamed into place, so a killed or failed export (disk full,
    permission denied) never leaves a partial ``data.parquet``/``data.jsonl`` that looks complete; such a failure
    is an ``OutputError`` naming the file and the fix."""
    ensure_dir(out)
    written: dict[str, str] = {}
    tmps: list[Path] = []
    try:
        if "parquet" in recipe.output.formats:
            tmps.append(out / ".data.parquet.tmp")
            frame.write_parquet(tmps[-1])
            tmps[-1].replace(out / "data.parquet")
            written["parquet"] = str(out / "data.parquet")
        if "jsonl" in recipe.output.formats:
            tmps.append(out / ".data.jsonl.tmp")
            with tmps[-1].open("w", encoding="utf-8") as fh:
                for row in _jsonl_rows(frame):
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            tmps[-1].replace(out / "data.jsonl")
            written["jsonl"] = str(out / "data.jsonl")
        if "hf_disk" in recipe.output.formats:
            from datasets import Dataset

            tmps.append(out / ".hf.tmp")
            Dataset(frame.to_arrow()).save_to_disk(str(tmps[-1]))
            replace_dir(tmps[-1], out / "hf")
            written["hf_disk"] = str(out / "hf")
        tmps.append(out / ".README.md.tmp")
        tmps[-1].write_text(data_card(frame, recipe, manifest))
        tmps[-1].replace(out / "README.md")
    except IO_ERRORS as err:
        raise output_error(err, tmps[-1].with_name(tmps[-1].name.strip(".").removesuffix(".tmp"))) from err
    finally:
        for tmp in tmps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    info = {"rows": frame.height, "files": written, "columns": frame.columns}
    write_json_atomic(out / "dataset_info.json", info)
    return info


def _audit_lines(manifest: dict[str, Any]) -> list[str]:
    """The card's audit section: gate result (and any override), per axis the rows mentioning each group, the
    representation ratio (n/a when a group has no rows), and the steps that dropped a group at a higher rate."""
    out: list[str] = []
    overridden = {o["step"] for o in manifest.get("audit_override", [])}
    for name, path in manifest.get("reports", {}).items():
        report = json.loads(Path(path).read_text())
        if "axes" not in report or "gate" not in report:
            continue
        if report["gate"]["passed"]:
            gate = "passed"
        else:
            gate = "FAILED" + (" (overridden with --allow-audit-failure)" if name in overridden else "") + ":"
        out += ["", f"## Demographic audit ({name})", "", f"Gate {gate}", ""]
        for failure in report["gate"]["failures"]:
            out.append(f"- `{failure}`")
        out += ["", "Rows mentioning each group (lexicon; a row may mention several):", ""]
        for axis, entry in report["axes"].items():
            groups = ", ".join(f"{g} {c}" for g, c in entry["group_rows"].items())
            out.append(f"- {axis}: {groups} (max/min ratio {entry.get('representation_ratio', 'n/a')})")
        if report.get("gaps"):
            out.append("- under-represented: " + ", ".join(f"{g['axis']}.{g['group']}" for g in report["gaps"]))
        flagged = report.get("amplification", {}).get("flagged", [])
        if flagged:
            out += ["", "Steps that dropped a group's rows at a higher rate than the step's overall rate:", ""]
            out += [f"- {f['step']}: {f['axis']}.{f['group']} {f['drop_rate']} vs {f['overall']} "
                    f"(x{f['ratio']}, 95% CI {f['ci95']}, {f['rows']} rows)" for f in flagged]
    return out


def data_card(frame: pl.DataFrame, recipe: Any, manifest: dict[str, Any]) -> str:
    synthetic = int(frame["source"].str.starts_with("synth:").sum()) if "source" in frame.columns else 0
    lines = [
        f"# {recipe.name}",
        "",
        f"Curated with gristmill {manifest['versions'].get('gristmill')} from recipe `{Path(recipe.path).name}`.",
        "",
        f"- rows: **{frame.height}** ({synthetic} synthetic, {frame.height - synthetic} from inputs)",
        f"- inputs: {', '.join(f'`{i.path}` ({i.mapping})' for i in recipe.inputs)}",
        "- columns: " + ", ".join(f"`{c}`" for c in frame.columns),
        "",
        "## Steps",
        "",
        "| step | in | kept | dropped | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in manifest["steps"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in s.get("dropped_by_reason", {}).items()) or "-"
        added = f" (+{s['rows_added']} generated)" if s.get("rows_added") else ""
        lines.append(f"| {s['step']} | {s['rows_in']}{added} | {s['kept']} | {s['dropped']} | {reasons} |")
    lines += _audit_lines(manifest)
    lines += [
        "",
        "Every dropped row is in `../rejects.parquet` with its step and reason.",
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files="data.parquet")["train"]  # or data.jsonl (messages form)',
        "```",
        "",
    ]
    return "\n".join(lines)
