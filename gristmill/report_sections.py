"""The sections of ``report.html``: each is ``builder(run, charts) -> html`` over what the run directory holds, and
says so when its inputs are missing (a recipe without the step, a run stopped by the gate, no training)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.report import Charts, RunData, esc, missing, table

EXAMPLES_PER_REASON = 3
TEXT_CHARS = 400


def _label(run: RunData, index: int) -> str:
    return f"{index:02d} {run.steps[index]['step']}"


def _short(text: Any, limit: int = TEXT_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + " …"


def _meta_field(frame: pl.DataFrame | None, name: str) -> pl.Series | None:
    if frame is None or "meta" not in frame.columns or not isinstance(frame.schema["meta"], pl.Struct):
        return None
    if name not in [f.name for f in frame.schema["meta"].fields]:
        return None
    return frame["meta"].struct.field(name)


def overview(run: RunData) -> str:
    m = run.manifest
    steps = run.steps
    status = m.get("status", "unknown")
    css = "passed" if status == "ok" else "failed"
    parts = [f'status <span class="{css}">{esc(status)}</span>']
    if steps:
        parts.append(f"{steps[0].get('rows_in', '?')} records read → {m.get('rows_final', '?')} rows")
    if m.get("seconds") is not None:
        parts.append(f"{m['seconds']:.1f}s")
    parts.append(f"recipe <code>{esc(m.get('recipe_path', '?'))}</code>")
    out = f'<p class="muted">{" · ".join(parts)}</p>'
    if m.get("gate_failures"):
        out += ('<p class="failed">The audit gate stopped this run before the dataset was exported: '
                + esc("; ".join(m["gate_failures"])) + "</p>")
    return out


def added_kept(run: RunData, index: int) -> int:
    """How many of the rows step ``index`` added (synthesized candidates, counterfactual copies) it kept: its kept
    ids that were not among the previous step's kept ids. Without the checkpoints, the drops are taken to be of
    added rows (what synthesis does): ``max(0, added - dropped)``.

    Example: 10 rows in, 4 copies added, 1 input row dropped: kept 13, of which 4 are added rows."""
    s = run.steps[index]
    added = s.get("rows_added", 0)
    if not added:
        return 0
    here, before = run.folder(index) / "kept.parquet", run.folder(index - 1) / "kept.parquet" if index else None
    if before is not None and here.is_file() and before.is_file():
        ids = pl.read_parquet(here, columns=["id"])["id"]
        return int((~ids.is_in(pl.read_parquet(before, columns=["id"])["id"].implode())).sum())
    return max(0, added - s.get("dropped", 0))


def funnel(run: RunData, charts: Charts) -> str:
    """Per step the rows that went in, split into kept input rows, kept added rows (synthesis, counterfactual
    copies: not drops of anything) and each drop reason (stacked, so a bar's height is the step's input plus what
    it added)."""
    import plotly.graph_objects as go

    if not run.steps:
        return missing("The manifest lists no steps.")
    labels = [_label(run, i) for i in range(len(run.steps))]
    new = [added_kept(run, i) for i in range(len(run.steps))]
    fig = go.Figure(go.Bar(name="kept", x=labels, y=[s.get("kept", 0) - n for s, n in zip(run.steps, new, strict=True)],
                           marker_color="#4c78a8"))
    if any(new):
        fig.add_bar(name="added and kept", x=labels, y=new, marker_color="#54a24b")
    reasons = sorted({r for s in run.steps for r in s.get("dropped_by_reason", {})})
    for reason in reasons:
        fig.add_bar(name=f"dropped: {reason}", x=labels, y=[s.get("dropped_by_reason", {}).get(reason, 0)
                                                            for s in run.steps])
    fig.update_layout(barmode="stack", yaxis_title="rows", legend={"orientation": "h", "y": -0.25})
    rows = [[label, s.get("rows_in"), s.get("rows_added", 0), s.get("kept"), s.get("dropped"),
             ", ".join(f"{k}: {v}" for k, v in s.get("dropped_by_reason", {}).items()) or "-"]
            for label, s in zip(labels, run.steps, strict=True)]
    note = "" if run.manifest.get("status") == "ok" else missing("The run stopped before all steps ran.")
    return charts.html(fig, 420) + table(["step", "in", "added", "kept", "dropped", "reasons"], rows,
                                         {1, 2, 3, 4}) + note


def drop_examples(run: RunData, charts: Charts) -> str:
    """A few rows per (step, reason) from rejects.parquet, collapsed. The step and reason columns are read to count
    and pick the examples, then only the examples' texts (a 1M-row run rejects ~136k rows)."""
    file = run.run_dir / "rejects.parquet"
    if not file.is_file():
        return missing("No rejects.parquet in this run.")
    keys = pl.scan_parquet(file).select("step", "reason").with_row_index("\x00i").collect()
    if keys.height == 0:
        return missing("No row was dropped.")
    order = {s["step"]: i for i, s in reversed(list(enumerate(run.steps)))}
    groups = keys.group_by("step", "reason", maintain_order=True).agg(
        pl.len().alias("n"), pl.col("\x00i").head(EXAMPLES_PER_REASON).alias("examples"))
    groups = groups.sort(pl.col("step").replace_strict(order, default=len(order)), "reason")
    by_index = _rows_at(file, groups["examples"].explode().to_list(), ["id", "text", "detail"])
    out = []
    for step, reason, n, examples in groups.iter_rows():
        rows = "".join(f'<tr><td>{esc(r["id"])}</td><td class="text">{esc(_short(r["text"]))}</td>'
                       f'<td>{esc(r["detail"])}</td></tr>' for r in (by_index[i] for i in examples))
        out.append(f"<details><summary><b>{esc(step)}</b> · {esc(reason)} · {n} rows</summary>"
                   f"<table><thead><tr><th>id</th><th>text</th><th>detail</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table></details>")
    return (f'<p class="muted">{EXAMPLES_PER_REASON} examples per reason; every dropped row is in '
            "<code>rejects.parquet</code>.</p>" + "".join(out))


def _rows_at(file: Path, indices: list[int], columns: list[str]) -> dict[int, dict[str, Any]]:
    """Rows ``indices`` of a parquet file by their index, each run of consecutive indices read as one slice (only
    the row groups a slice overlaps are read; a scan filtered on a row index decodes every row group, and pyarrow's
    ``read_row_group`` kept +110 MB for three of rejects.parquet's at 1M rows). Example: ``indices`` [4, 1, 2]
    reads rows 1-2 and row 4 and gives ``{1: {...}, 2: {...}, 4: {...}}``."""
    scan = pl.scan_parquet(file).select(columns)
    out: dict[int, dict[str, Any]] = {}
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        out.update(zip(run, scan.slice(run[0], len(run)).collect().iter_rows(named=True), strict=True))
    return out


def _threshold(run: RunData, index: int, kept: pl.Series) -> tuple[float | None, str]:
    keep = (run.steps[index].get("params") or {}).get("keep") or {}
    if keep.get("min_score") is not None:
        return float(keep["min_score"]), f"min_score {keep['min_score']}"
    if keep.get("top_fraction") is not None and kept.len():
        return float(kept.min()), f"cut keeping the top {keep['top_fraction']}"
    return None, ""


def quality(run: RunData, charts: Charts) -> str:
    """Histogram of the quality step's scores, kept and dropped overlaid, with the threshold drawn."""
    import plotly.graph_objects as go

    index = run.find("quality")
    if index is None:
        return missing("No quality step in this recipe.")
    kept, dropped = (scan.select("meta").collect() if (scan := run.scan(index, which)) is not None
                     and "meta" in scan.collect_schema() else None for which in ("kept", "dropped"))
    name = next((n for n in ("quality_score", "reference_similarity") if _meta_field(kept, n) is not None), None)
    if name is None:
        return missing(f"The quality step's checkpoint ({run.folder(index).name}) holds no scores.")
    kept_scores = _meta_field(kept, name).drop_nulls()
    dropped_scores = _meta_field(dropped, name)
    dropped_scores = dropped_scores.drop_nulls() if dropped_scores is not None else pl.Series([], dtype=pl.Float64)
    both = pl.concat([kept_scores.cast(pl.Float64), dropped_scores.cast(pl.Float64)])
    if both.len() == 0:
        return missing("The quality step scored no rows.")
    lo, hi = float(both.min()), float(both.max())
    bins = {"start": lo, "end": hi, "size": (hi - lo) / 40 or 1.0}  # one grid for both, so the bars line up
    fig = go.Figure()
    fig.add_histogram(x=kept_scores.to_list(), name=f"kept ({kept_scores.len()})", xbins=bins, marker_color="#4c78a8")
    fig.add_histogram(x=dropped_scores.to_list(), name=f"dropped ({dropped_scores.len()})", xbins=bins,
                      marker_color="#e45756")
    threshold, how = _threshold(run, index, kept_scores)
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#222",
                      annotation_text=f"threshold {threshold:.4g} ({how})", annotation_position="top left")
    fig.update_layout(barmode="overlay", xaxis_title=f"meta.{name}", yaxis_title="rows")
    fig.update_traces(opacity=0.75)
    return charts.html(fig)


def _marked(words: list[str], spans: list[tuple[int, int]]) -> str:
    marked = [False] * len(words)
    for start, end in spans:
        for i in range(start, end):
            marked[i] = True
    return " ".join(f"<mark>{esc(w)}</mark>" if m else esc(w) for w, m in zip(words, marked, strict=True))


def word_diff(a: str, b: str) -> tuple[str, str]:
    """Both texts as escaped HTML with the words that differ between them in ``<mark>``."""
    wa, wb = a.split(), b.split()
    ops = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes()
    changed = [op for op in ops if op[0] != "equal"]
    return (_marked(wa, [(i1, i2) for _, i1, i2, _, _ in changed]),
            _marked(wb, [(j1, j2) for _, _, _, j1, j2 in changed]))


def _has_meta_field(scan: pl.LazyFrame, name: str) -> bool:
    meta = scan.collect_schema().get("meta")
    return isinstance(meta, pl.Struct) and name in [f.name for f in meta.fields]


def clusters(run: RunData, charts: Charts) -> str:
    """Cluster-size distribution of the MinHash step and its two largest clusters, a kept row beside a dropped
    near-duplicate with the differing words marked. Only the ids and cluster ids of clustered rows are read, and the
    texts of the rows shown (the whole checkpoint was ~500 MB at 1M rows)."""
    import plotly.graph_objects as go

    index = run.find("dedup_minhash")
    if index is None:
        return missing("No dedup_minhash step in this recipe.")
    scans = {which: scan for which in ("kept", "dropped") if (scan := run.scan(index, which)) is not None}
    parts = [scan.select("id", pl.col("meta").struct.field("cluster_id").alias("cluster"),
                         pl.lit(which == "dropped").alias("dropped"))
             for which, scan in scans.items() if _has_meta_field(scan, "cluster_id")]
    if not parts:
        return missing("The MinHash step's checkpoint holds no cluster ids (meta.cluster_id).")
    rows = pl.concat(parts).filter(pl.col("cluster").is_not_null()).collect(engine="streaming")
    if rows.height == 0:
        return missing("The MinHash step found no near-duplicates.")
    sizes = rows.group_by("cluster").len().sort("len", "cluster", descending=[True, False])
    dist = sizes.group_by("len").agg(pl.len().alias("clusters")).sort("len")
    fig = go.Figure(go.Bar(x=dist["len"].to_list(), y=dist["clusters"].to_list(), marker_color="#4c78a8"))
    fig.update_layout(xaxis_title="rows in cluster", yaxis_title="clusters", xaxis={"dtick": 1})
    pairs = []
    for cluster, size in sizes.head(2).iter_rows():
        members = rows.filter(pl.col("cluster") == cluster)
        keep = members.filter(~pl.col("dropped"))
        keeper = (keep if keep.height else members)["id"][0]
        other = members.filter(pl.col("id") != keeper)
        if other.height:
            pairs.append((cluster, size, keeper, other["id"][0]))
    wanted = [i for _, _, keeper, dup in pairs for i in (keeper, dup)]
    texts = dict(pl.concat([scan.select("id", "text") for scan in scans.values()])
                 .filter(pl.col("id").is_in(wanted)).collect().iter_rows()) if wanted else {}
    examples = []
    for cluster, size, keeper, dup in pairs:
        left, right = word_diff(texts.get(keeper) or "", texts.get(dup) or "")
        examples.append(
            f"<h3>cluster <code>{esc(cluster)}</code> ({size} rows)</h3><div class=side>"
            f"<div><b>kept</b> <code>{esc(keeper)}</code>\n{left}</div>"
            f"<div><b>dropped</b> <code>{esc(dup)}</code>\n{right}</div></div>")
    return (f'<p class="muted">{sizes.height} clusters, {rows.height} rows in them '
            f"({run.steps[index].get('dropped', 0)} dropped).</p>" + charts.html(fig, 300) + "".join(examples))


def synthesis(run: RunData, charts: Charts) -> str:
    """Yield of the synthesize step: requested → generated → parsed → past the post-filter → kept, its cost per
    kept row and why candidates were dropped."""
    import plotly.graph_objects as go

    index = run.find("synthesize")
    if index is None:
        return missing("No synthesize step in this recipe.")
    s = run.steps[index]
    kept = s.get("rows_added", 0) - s.get("dropped", 0)
    parsed = s.get("parsed")
    stages = [("requested", s.get("requested")), ("generated", s.get("generated")), ("parsed", parsed),
              ("past the post-filter", parsed - s.get("post_filtered", 0) if parsed is not None else None),
              ("kept", kept)]
    stages = [(k, v) for k, v in stages if v is not None]
    fig = go.Figure(go.Funnel(y=[k for k, _ in stages], x=[v for _, v in stages], textinfo="value+percent initial"))
    out = charts.html(fig, 320)
    reasons = s.get("dropped_by_reason", {})
    if reasons:
        bars = go.Figure(go.Bar(x=list(reasons.values()), y=list(reasons), orientation="h", marker_color="#e45756"))
        bars.update_layout(xaxis_title="candidates dropped", yaxis={"autorange": "reversed"})
        out += charts.html(bars, 80 + 40 * len(reasons))
    keys = ["prompt_tokens", "output_tokens", "output_tokens_per_kept_row", "seconds_per_kept_row", "seconds",
            "output_tokens_per_s", "cache_hits", "cache_misses"]
    out += table(["measure", "value"], [[k, s[k]] for k in keys if k in s], {1})
    params = s.get("params") or {}
    model = run.manifest.get("models", {}).get("synthesize") or params.get("model")
    out += f'<p class="muted">method {esc(params.get("method"))}, model {esc(model)}</p>'
    return out
