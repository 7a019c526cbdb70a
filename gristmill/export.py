"""Writing the curated dataset, the rejects file and the data card."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.checkpoint import (
    IO_ERRORS,
    SliceWriter,
    ensure_dir,
    iter_slices,
    output_error,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)
from gristmill.common.contract import SLICE_ROWS

_REJECT_COLUMNS = ("id", "step", "reason", "source", "text", "detail", "meta")


def slices(rows: pl.DataFrame | Path, slice_rows: int = SLICE_ROWS) -> Iterator[pl.DataFrame]:
    """``rows`` (a frame, or a parquet file read a slice at a time) as ``slice_rows``-row slices, the same slices
    either way; a frame without rows is one empty slice (so a file written from them has the columns)."""
    if isinstance(rows, Path):
        empty = True
        for part in iter_slices(rows, slice_rows):
            empty = False
            yield part
        if empty:
            yield pl.DataFrame(schema=pl.read_parquet_schema(rows))
        return
    for start in range(0, max(rows.height, 1), slice_rows):
        yield rows.slice(start, slice_rows)


def _reject_rows(dropped: pl.DataFrame, step: str) -> pl.DataFrame:
    cols = [
        pl.col("id").cast(pl.String),
        pl.lit(step).alias("step"),
        pl.col("reason").cast(pl.String),
        *[(pl.col(c).cast(pl.String) if c in dropped.columns else pl.lit(None, pl.String)).alias(c)
          for c in ("source", "text", "detail")],
    ]
    meta = (
        [json.dumps(m, default=str) for m in dropped["meta"].to_list()]
        if "meta" in dropped.columns else [None] * dropped.height
    )
    return dropped.select(cols).with_columns(pl.Series("meta", meta, dtype=pl.String))


def write_rejects(path: Path, step_dirs: list[tuple[str, Path]]) -> dict[str, Any]:
    """One file with every dropped row of every step: id, step, reason, source, text, detail, meta (as JSON).
    Written a slice of a step's ``dropped.parquet`` at a time (a row group each): the rejects are never in memory
    together."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer = SliceWriter(tmp)
    counts: Counter[tuple[str, str]] = Counter()
    try:
        for step, directory in step_dirs:
            file = directory / "dropped.parquet"
            if not file.exists():
                continue
            for dropped in iter_slices(file, SLICE_ROWS):
                if dropped.height == 0:
                    continue
                part = _reject_rows(dropped, step)
                counts.update(zip(part["step"], part["reason"], strict=True))
                writer.write(part)
        writer.close()
        if writer.rows == 0:
            pl.DataFrame(schema=dict.fromkeys(_REJECT_COLUMNS, pl.String)).write_parquet(tmp)
        tmp.replace(path)
    except IO_ERRORS as err:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise output_error(err, path) from err
    by = [{"step": step, "reason": reason, "len": n} for (step, reason), n in sorted(counts.items())]
    return {"path": str(path), "rows": writer.rows, "by_step_reason": by}


def _jsonl_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    cols = [c for c in ("id", "messages", "text", "source") if c in frame.columns]
    rows = frame.select(cols).to_dicts()
    for row in rows:
        if row.get("messages"):
            row.pop("text", None)
    return rows


def _card_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """What the data card reads of each row (``source``, ``meta.language``, ``meta.synth``), not the text."""
    cols: list[pl.Expr] = [pl.col("source")] if "source" in frame.columns else []
    if "meta" in frame.columns and isinstance(frame.schema["meta"], pl.Struct):
        fields = [f.name for f in frame.schema["meta"].fields if f.name in ("language", "synth")]
        if fields:
            cols.append(pl.struct([pl.col("meta").struct.field(f) for f in fields]).alias("meta"))
    return frame.select(cols) if cols else pl.DataFrame({"_row": pl.Series([None] * frame.height, dtype=pl.Null)})


def export_dataset(rows: pl.DataFrame | Path, out: Path, recipe: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the final set (a frame, or the last checkpoint's parquet file, read a slice at a time) in the recipe's
    formats plus README.md; returns what was written. From a file, only a slice of the rows and what the card
    needs of each (``_card_rows``) are in memory (``hf_disk`` alone reads the whole file).

    Every file is written under a temporary name and renamed into place, so a killed or failed export (disk full,
    permission denied) never leaves a partial ``data.parquet``/``data.jsonl`` that looks complete; such a failure
    is an ``OutputError`` naming the file and the fix."""
    ensure_dir(out)
    written: dict[str, str] = {}
    tmps: list[Path] = []
    formats = recipe.output.formats
    try:
        parquet = SliceWriter(out / ".data.parquet.tmp") if "parquet" in formats else None
        jsonl = (out / ".data.jsonl.tmp").open("w", encoding="utf-8") if "jsonl" in formats else None
        tmps += [w.path for w in (parquet,) if w] + ([out / ".data.jsonl.tmp"] if jsonl else [])
        card_parts, columns = [], None
        try:
            for part in slices(rows):
                columns = part.columns
                if parquet is not None:
                    parquet.write(part)
                if jsonl is not None:
                    jsonl.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n"
                                     for row in _jsonl_rows(part))
                card_parts.append(_card_rows(part))
        finally:
            if parquet is not None:
                parquet.close()
            if jsonl is not None:
                jsonl.close()
        card_rows = pl.concat(card_parts)
        del card_parts
        if parquet is not None:
            parquet.path.replace(out / "data.parquet")
            written["parquet"] = str(out / "data.parquet")
        if jsonl is not None:
            (out / ".data.jsonl.tmp").replace(out / "data.jsonl")
            written["jsonl"] = str(out / "data.jsonl")
        if "hf_disk" in formats:
            from datasets import Dataset

            tmps.append(out / ".hf.tmp")
            whole = pl.read_parquet(rows) if isinstance(rows, Path) else rows
            Dataset(whole.to_arrow()).save_to_disk(str(tmps[-1]))
            del whole
            replace_dir(tmps[-1], out / "hf")
            written["hf_disk"] = str(out / "hf")
        tmps.append(out / ".README.md.tmp")
        tmps[-1].write_text(data_card(card_rows, recipe, manifest, columns=columns))
        tmps[-1].replace(out / "README.md")
    except IO_ERRORS as err:
        raise output_error(err, tmps[-1].with_name(tmps[-1].name.strip(".").removesuffix(".tmp"))) from err
    finally:
        for tmp in tmps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    info = {"rows": card_rows.height, "files": written, "columns": columns}
    write_json_atomic(out / "dataset_info.json", info)  # with the umask's mode (checkpoint.public_mode)
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
        compared = report.get("before_after")
        if compared:
            gate = {True: "passed", False: "failed", None: "n/a"}
            passed = compared.get("gate_passed") or {}
            out += ["", f"Before/after against the earlier audit `{compared.get('against')}` (steps between: "
                    + (", ".join(compared.get("steps_between") or []) or "none")
                    + f"; gate {gate[passed.get('before')]} -> {gate[passed.get('after')]}):", ""]
            for axis, entry in (compared.get("axes") or {}).items():
                b, a = entry["before"], entry["after"]
                out.append(f"- {axis}: max/min ratio {b.get('representation_ratio', 'n/a')} -> "
                           f"{a.get('representation_ratio', 'n/a')}, distance from the reference (TVD) "
                           f"{b.get('tvd', 'n/a')} -> {a.get('tvd', 'n/a')}" + (" (weighted)" if a.get("weighted") else ""))
        flagged = report.get("amplification", {}).get("flagged", [])
        if flagged:
            out += ["", "Steps that dropped a group's rows at a higher rate than the step's overall rate:", ""]
            out += [f"- {f['step']}: {f['axis']}.{f['group']} {f['drop_rate']} vs {f['overall']} "
                    f"(x{f['ratio']}, 95% CI {f['ci95']}, {f['rows']} rows)" for f in flagged]
    return out


def _mitigation_lines(manifest: dict[str, Any]) -> list[str]:
    """The card's mitigation section: what each reweigh and counterfactual_augment step did (from its stats)."""
    out: list[str] = []
    for i, s in enumerate(manifest["steps"]):
        if s.get("step") == "reweigh":
            weights = s.get("weights") or {}
            shown = ", ".join(f"{g} {w}" if not isinstance(w, dict) else
                              f"{g} " + "/".join(f"{w[y]} (label {y})" for y in sorted(w)) for g, w in weights.items())
            out.append(f"- {i:02d} reweigh ({s.get('method')}, axis `{s.get('axis')}`): a `weight` column for the "
                       f"trainer's loss; weight per row by group: {shown or 'none (no row mentions one group)'}; "
                       f"total weight per group: " + (", ".join(f"{g} {w}" for g, w in (s.get("group_weight") or {})
                                                              .items()) or "n/a") + ".")
        elif s.get("step") == "counterfactual_augment":
            out.append(f"- {i:02d} counterfactual_augment: {s.get('rows_added', 0)} gender-swapped copies added "
                       f"(ids `cf:<id>`, `meta.counterfactual`; {s.get('swaps', 0)} words swapped).")
    return ["", "## Bias mitigation", "", *out] if out else []


MODEL_BEGIN, MODEL_END = "<!-- gristmill:model-results -->", "<!-- /gristmill:model-results -->"


def _model_lines(manifest: dict[str, Any]) -> list[str]:
    """The card's model section: the eval sets' table (base vs adapter) and the bias probe's gate, from the manifest.
    The card is written before training, so the runner's ``write_report`` rewrites this part afterwards
    (``refresh_card``); it sits between two HTML comments so that can be done in place."""
    out = [MODEL_BEGIN, "## Model evaluation", ""]
    summary, probe = manifest.get("eval"), manifest.get("bias_probe")
    if not summary and not probe:
        out += ["No model trained on this dataset was evaluated in this run (no `train:` with `eval:` sets or "
                "`train.bias_probe`, or training had not run yet when this card was written)."]
    if summary:
        cols = [c for c in summary.get("columns", []) if c not in ("set", "metric")]

        def cell(v: Any) -> str:
            return "n/a" if v is None or v != v else f"{v:.4g}" if isinstance(v, float) else str(v)

        out += [f"Eval sets, base model `{Path(str(summary.get('base_model'))).name}` vs the adapter trained on this "
                "data (loss and perplexity: lower is better):", "",
                "| set | metric | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
        out += ["| " + " | ".join([str(r["set"]), str(r["metric"]), *(cell(r.get(c)) for c in cols)]) + " |"
                for r in summary.get("table", [])]
        out.append("")
    if probe:
        gate = probe.get("gate") or {}
        worst = gate.get("max_increase") or {}
        overridden = any(o.get("step") == "bias_probe" for o in manifest.get("audit_override", []))
        verdict = ("not gated" if gate.get("threshold") is None else "passed" if gate.get("passed") else
                   "FAILED" + (" (overridden with --allow-audit-failure)" if overridden else ""))
        out += [f"Model bias probe (base vs adapter on templated prompts per demographic group): gate {verdict}"
                + (f" (largest allowed gap increase {gate['threshold']})" if gate.get("threshold") is not None else "")
                + "; largest gap increase: " + ", ".join(f"{m} {v:+.3f}" for m, v in worst.items()) + "."]
        out += [f"- `{f}`" for f in gate.get("failures", [])]
        out.append("")
    return ["", *out, MODEL_END]


def refresh_card(run_dir: Path, manifest: dict[str, Any]) -> bool:
    """Rewrite the model section of ``<run_dir>/dataset/README.md`` from ``manifest`` (eval and bias probe results
    that came after the export). False, leaving the file alone, when there is no card, an older one without the
    section's markers, or one this manifest did not export (a run stopped by the audit gate before exporting
    leaves the previous run's card, which describes other data)."""
    path = run_dir / "dataset" / "README.md"
    if not path.is_file() or not manifest.get("dataset"):
        return False
    card = path.read_text(encoding="utf-8")
    start, end = card.find(MODEL_BEGIN), card.find(MODEL_END)
    if start < 0 or end < start or f"Data fingerprint: `{manifest.get('fingerprint')}`." not in card:
        return False
    new = card[:start] + "\n".join(_model_lines(manifest)[1:]) + card[end + len(MODEL_END):]
    if new != card:
        write_text_atomic(path, new)
    return True


# Hugging Face's size buckets (the `size_categories` tag).
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(rows: int) -> str:
    return next((label for bound, label in _SIZES if rows < bound), "n>1B")


def _meta_column(frame: pl.DataFrame, name: str) -> pl.Series | None:
    if "meta" not in frame.columns or not isinstance(frame.schema["meta"], pl.Struct):
        return None
    return frame["meta"].struct.field(name) if name in [f.name for f in frame.schema["meta"].fields] else None


def _front_matter(frame: pl.DataFrame, recipe: Any, synthetic: int) -> str:
    """The card's YAML header in the Hugging Face convention; ``configs`` points ``datasets`` at the data file, so
    ``load_dataset(<run>/dataset)`` loads the folder as it is."""
    import yaml

    meta: dict[str, Any] = {
        # A dataset whose terms the recipe does not state says so.
        "license": (getattr(recipe, "raw", None) or {}).get("license") or "unknown",
        "pretty_name": recipe.name,
        "size_categories": [size_category(frame.height)],
        "task_categories": ["text-generation"],
    }
    language = _meta_column(frame, "language")
    if language is not None:
        codes = language.drop_nulls().value_counts(sort=True)[language.name].to_list()
        if codes:
            meta["language"] = [c for c in codes if isinstance(c, str) and c.isalpha() and c.islower()]
    meta["tags"] = ["gristmill", "curated"] + (["synthetic"] if synthetic else [])
    formats = recipe.output.formats
    data = "data.parquet" if "parquet" in formats else "data.jsonl" if "jsonl" in formats else None
    if data:
        meta["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": data}]}]
    meta["source_datasets"] = [str(i.path) for i in recipe.inputs]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _synthetic_lines(frame: pl.DataFrame, synthetic: int, manifest: dict[str, Any]) -> list[str]:
    share = synthetic / frame.height if frame.height else 0.0
    out = ["", "## Synthetic share and provenance", "",
           f"{synthetic} of {frame.height} rows ({share:.1%}) are synthetic (`source` starts with `synth:`)."]
    synth = _meta_column(frame.filter(pl.col("source").str.starts_with("synth:")), "synth") if synthetic else None
    if synthetic and synth is not None and isinstance(synth.dtype, pl.Struct):
        fields = [f for f in ("method", "model", "engine", "template_hash") if f in [x.name for x in synth.dtype.fields]]
        prov = synth.struct.unnest().select(fields).group_by(fields).len().sort("len", descending=True)
        out += ["", "| " + " | ".join(fields) + " | rows |", "|" + "---|" * len(fields) + "---:|"]
        out += ["| " + " | ".join(f"`{v}`" for v in row[:-1]) + f" | {row[-1]} |" for row in prov.iter_rows()]
        out += ["", "Each synthetic row's `meta.synth` holds its seeds, prompt template hash, sampling, model and engine."]
    elif synthetic == 0:
        out += ["", "No synthesis step added rows."]
    models = manifest.get("models") or {}
    if models:
        out += ["", "Models used: " + ", ".join(f"{step}: `{'/'.join(Path(path).parts[-2:])}`" for step, path in models.items()) + "."]
    return out


def _limitations(frame: pl.DataFrame, recipe: Any, manifest: dict[str, Any], synthetic: int) -> list[str]:
    steps = {s["step"] for s in manifest["steps"]}
    out = ["", "## Known limitations", ""]
    if "audit" in steps:
        out.append("- The demographic audit finds groups by lexicon matching in English text: it misses groups that are "
                   "implied or named otherwise, and counts mentions, not who the text is about.")
    else:
        out.append("- No demographic audit was run on this data.")
    if not steps & {"decontaminate", "eval_decontaminate"}:
        out.append("- Not decontaminated against any evaluation set: check overlap before benchmarking on it.")
    else:
        out.append("- Decontaminated only against the evaluation sets the recipe names (n-gram overlap).")
    if synthetic:
        out.append("- Synthetic rows were written by a language model and filtered automatically, not reviewed by "
                   "people; they can be wrong or repeat the model's biases.")
    if "quality" in steps:
        out.append("- Quality scores measure similarity to a small reference set, not correctness.")
    out.append("- Language detection, filters and deduplication are heuristics; `../rejects.parquet` shows what they "
               "dropped, `../report.html` shows examples.")
    return out


def data_card(frame: pl.DataFrame, recipe: Any, manifest: dict[str, Any], columns: list[str] | None = None) -> str:
    """``README.md`` of the dataset folder: a Hugging Face dataset card (YAML front matter, then sources, curation
    steps with counts, synthetic share and provenance, the audit summary with before/after, the mitigation steps,
    the model's eval and bias probe results (``refresh_card`` fills them in after training), known limitations and
    how to load it). ``columns``: the dataset's columns, when ``frame`` holds only what the card reads of each row
    (``export_dataset``)."""
    synthetic = int(frame["source"].str.starts_with("synth:").sum()) if "source" in frame.columns else 0
    lines = [
        _front_matter(frame, recipe, synthetic),
        "",
        f"# {recipe.name}",
        "",
        f"Curated with gristmill {manifest['versions'].get('gristmill')} from recipe `{Path(recipe.path).name}`.",
        "",
        f"- rows: **{frame.height}** ({synthetic} synthetic, {frame.height - synthetic} from inputs)",
        "- columns: " + ", ".join(f"`{c}`" for c in (frame.columns if columns is None else columns)),
        "",
        "## Sources",
        "",
        "| input | mapping | rows in this dataset |",
        "|---|---|---:|",
    ]
    by_source = (frame.group_by("source").len().to_dicts() if "source" in frame.columns else [])
    for spec in recipe.inputs:
        n = sum(r["len"] for r in by_source if r["source"] and Path(str(r["source"])).name == Path(spec.path).name)
        lines.append(f"| `{spec.path}` | {spec.mapping} | {n} |")
    lines += [
        "",
        "## Curation steps",
        "",
        "| step | in | kept | dropped | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in manifest["steps"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in s.get("dropped_by_reason", {}).items()) or "-"
        added = f" (+{s['rows_added']} added)" if s.get("rows_added") else ""
        lines.append(f"| {s['step']} | {s['rows_in']}{added} | {s['kept']} | {s['dropped']} | {reasons} |")
    lines += ["", "Every dropped row is in `../rejects.parquet` with its step and reason; `../report.html` charts "
              "the run."]
    lines += _synthetic_lines(frame, synthetic, manifest)
    lines += _audit_lines(manifest)
    lines += _mitigation_lines(manifest)
    lines += _model_lines(manifest)
    lines += _limitations(frame, recipe, manifest, synthetic)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/folder")["train"]  # reads the data file named under configs above',
        "```",
        "",
        f"Data fingerprint: `{manifest.get('fingerprint')}`.",
        "",
    ]
    return "\n".join(lines)
