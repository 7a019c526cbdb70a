"""Looking at runs: ``inspect``, ``explain``, ``show``, ``diff`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from gristmill.cli._common import clip, log, state

PANEL = "Inspect"
RunDir = Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]


def inspect(run_dir: RunDir) -> int:
    """Steps with rows in/kept/dropped, drop reasons and timings; synthetic yield, models, the gate, whether the
    adapter belongs to this run's data, and the lineage: the run this one continued and the data it added."""
    from gristmill.lineage import continued, continued_lines
    from gristmill.runinfo import summary

    info = summary(run_dir)
    console = state.console
    table = Table("step", "in", "added", "kept", "dropped", "reasons", "seconds",
                  title=f"{info['name']} ({info['status']}): {info['rows_final']} rows")
    for s in info["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items())
        secs = "resumed" if s["resumed"] else "" if s["seconds"] is None else f"{s['seconds']:.2f}"
        table.add_row(s["step"], str(s["rows_in"]), str(s["added"] or ""), str(s["kept"]), str(s["dropped"]),
                      Text(reasons), secs)
    console.print(table)
    for y in info["synthetic"]:
        share = f" ({y['yield']:.0%} of generated)" if y["yield"] is not None else ""
        console.print(Text(f"synthetic {y['step']}: {y['generated']} generated, {y['kept_by_step']} kept by the "
                           f"step, {y['in_dataset']} in the dataset{share}"))
    for role, path in info["models"].items():
        console.print(Text(f"model {role}: {path}"))
    gate = info["gate"]
    if "passed" in gate or gate.get("failures"):
        verdict = "passed" if gate.get("passed") else "FAILED"
        extra = " (overridden: --allow-audit-failure)" if gate.get("overridden") else ""
        console.print(Text(f"audit gate: {verdict}{extra}", style="green" if gate.get("passed") else "red"))
        for line in gate.get("failures", []):
            console.print(Text(f"  {line}"))
    if info["train"]:
        t = info["train"]
        console.print(Text(f"train: {t['steps']} steps, eval loss {t['eval_loss_before']} → {t['eval_loss_after']}"))
    adapter = info["adapter"]
    if adapter and adapter["current"] is None:
        console.print(Text(f"adapter: {run_dir / 'adapter'} does not record which data it was trained on (an older "
                           f"gristmill); retrain with `gristmill train {run_dir}` to be sure it fits this dataset",
                           style="yellow"))
    elif adapter and not adapter["current"]:
        console.print(Text(f"adapter: STALE — {run_dir / 'adapter'} was trained on other data (fingerprint "
                           f"{str(adapter['data_fingerprint'])[:12]}) than this run's dataset; retrain with "
                           f"`gristmill train {run_dir}` or delete it", style="yellow"))
    elif adapter:
        console.print(Text("adapter: trained on this run's dataset", style="green"))
    lineage = continued(run_dir, json.loads((run_dir / "manifest.json").read_text()))
    for line in continued_lines(lineage) if lineage else []:
        console.print(Text(f"lineage: {line}"), soft_wrap=True)
    return 0


def explain(run_dir: RunDir, row_id: Annotated[str, typer.Argument(metavar="ID", help="The row's id.",
                                                                   show_default=False)]) -> int:
    """One row's history: input file and line, every step it passed, the step that dropped or changed it and why,
    the row it duplicated, its scores, and for a synthetic row its provenance (seeds, template, model)."""
    from gristmill.runinfo import explain as row_history

    info = row_history(run_dir, row_id)
    console = state.console
    where = f"{info['source']}" + (f":{info['line']}" if info["line"] is not None else "")
    console.print(Text(f"{info['id']}  from {where}  → {info['outcome']}", style="bold"), soft_wrap=True)
    console.print(Text(clip(info["text"], 160)), soft_wrap=True)
    table = Table("step", "outcome", "why")
    for h in info["history"]:
        why = ""
        if h["outcome"] == "dropped":
            why = f"{h.get('reason')}" + (f": {h['detail']}" if h.get("detail") else "")
        elif h.get("changed"):
            why = f"text changed: {clip(h['before'], 50)!r} → {clip(h['after'], 50)!r}"
        elif h.get("added"):
            why = "generated here"
        table.add_row(h["step"], h["outcome"] + (" (changed)" if h.get("changed") else ""), Text(why))
    console.print(table)
    if info["duplicate"]:
        d = info["duplicate"]
        console.print(Text(f"duplicate of {d['id']} (kept at {d['step']}): {clip(d['text'], 140)}"), soft_wrap=True)
    if info["scores"]:
        console.print(Text("scores: " + json.dumps(info["scores"], default=str)), soft_wrap=True)
    if info["synth"]:
        console.print(Text("synthetic: " + json.dumps(info["synth"], default=str)), soft_wrap=True)
    return 0


def show(
    run_dir: RunDir,
    step: Annotated[str | None, typer.Option(help="A step name (dedup_exact) or label (03-dedup_exact); default: "
                                                  "the final dataset.")] = None,
    dropped: Annotated[bool, typer.Option("--dropped", help="Dropped rows (of the step, or of the whole run).")]
    = False,
    reason: Annotated[str | None, typer.Option(help="Only rows dropped for this reason.")] = None,
    n: Annotated[int, typer.Option("-n", help="How many rows.")] = 20,
) -> int:
    """Browse rows of a run: the dataset, a step's kept or dropped rows, or rows dropped for a reason."""
    from gristmill.runinfo import rows

    frame, path = rows(run_dir, step, dropped=dropped, reason=reason, limit=n)
    cols = [c for c in ("id", "step", "reason", "detail", "source", "text") if c in frame.columns]
    table = Table(*cols, title=f"{path} ({frame.height} rows shown)")
    for row in frame.select(cols).iter_rows(named=True):
        table.add_row(*(Text(clip(row[c], 70 if c == "text" else 40)) for c in cols))
    state.console.print(table)
    return 0


def diff(run_a: RunDir, run_b: RunDir,
         as_json: Annotated[bool, typer.Option("--json", help="Print the difference as JSON on stdout.")] = False
         ) -> int:
    """Two runs side by side: rows added/removed/changed (by id and content hash), counts per step and reason,
    and the recipe values that differ."""
    from gristmill.runinfo import diff as run_diff

    info = run_diff(run_a, run_b)
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return 0
    console = state.console
    if "rows" in info:
        r = info["rows"]
        console.print(Text(f"rows: {r['a']} → {r['b']}: {len(r['added'])} added, {len(r['removed'])} removed, "
                           f"{len(r['changed'])} changed text"))
        for label, ids in (("added", r["added"]), ("removed", r["removed"]), ("changed", r["changed"])):
            if ids:
                console.print(Text(f"  {label}: {', '.join(ids[:10])}" + (" …" if len(ids) > 10 else "")))
    table = Table("step", "kept A", "kept B", "dropped A", "dropped B", "reasons A → B", title="per step")
    for step, sides in info["steps"].items():
        a, b = sides.get("a") or {}, sides.get("b") or {}
        reasons = _reasons(a.get("reasons", {}), b.get("reasons", {}))
        table.add_row(step, *(str(x) if x is not None else "-" for x in
                              (a.get("kept"), b.get("kept"), a.get("dropped"), b.get("dropped"))), Text(reasons))
    console.print(table)
    if info["params"]:
        params = Table("recipe key", "A", "B", title="recipe changes")
        for key, (va, vb) in info["params"].items():
            params.add_row(key, Text(json.dumps(va)), Text(json.dumps(vb)))
        console.print(params)
    else:
        console.print(Text("recipe: no changes (besides output.dir)"))
    return 0


def _reasons(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(f"{k} {a.get(k, 0)}→{b.get(k, 0)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def report(run_dir: RunDir) -> int:
    """(Re)write RUN_DIR/report.html: funnel, drop examples, scores, clusters, synthetic yield, audit, training,
    timings (one file, opens offline)."""
    from gristmill.report import write_report

    path = write_report(run_dir)
    log.info(f"report → {path}")
    return 0


def register(app: typer.Typer) -> None:
    for command in (inspect, explain, show, diff, report):
        app.command(rich_help_panel=PANEL)(command)
