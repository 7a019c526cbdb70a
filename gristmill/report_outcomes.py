"""The later sections of ``report.html``: audit, training and evaluation, timings, versions and fingerprints."""

from __future__ import annotations

from typing import Any

from gristmill.report import Charts, RunData, esc, missing, table


def _audit_reports(run: RunData) -> list[tuple[str, dict[str, Any]]]:
    """(``NN-step``, report) of every audit report of the run, in step order."""
    out = []
    for file in sorted((run.run_dir / "reports").glob("*.json")):
        report = run.json(f"reports/{file.name}") or {}
        if "axes" in report:
            out.append((file.stem, report))
    return out


def _representation(report: dict[str, Any], charts: Charts) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for axis, entry in report["axes"].items():
        groups = entry.get("group_rows", {})
        fig.add_bar(name=f"{axis} (ratio {entry.get('representation_ratio', 'n/a')})",
                    x=[f"{axis}: {g}" for g in groups], y=list(groups.values()))
    fig.update_layout(yaxis_title="rows mentioning the group", legend={"orientation": "h", "y": -0.45},
                      xaxis_tickangle=-40)
    gaps = report.get("gaps") or []
    note = ("<p>Under-represented: " + esc(", ".join(f"{g['axis']}.{g['group']} ({g['rows']} of {g['target_rows']} "
                                                         "target rows)" for g in gaps)) + "</p>") if gaps else ""
    return "<h3>Representation per axis</h3>" + charts.html(fig, 460) + note


def _disparity(report: dict[str, Any], charts: Charts) -> str:
    """Heatmap: per step (columns) and group (rows) the group's drop rate over the step's overall drop rate."""
    import plotly.graph_objects as go

    steps = [s for s in (report.get("amplification") or {}).get("steps", []) if s.get("axes")]
    if not steps:
        return "<h3>Drop-rate disparity per step</h3>" + missing(
            "No step before the audit dropped rows that mention an audited group (or the audit had no trace).")
    groups = sorted({(axis, g) for s in steps for axis, entry in s["axes"].items() for g in entry})
    z, hover = [], []
    for axis, group in groups:
        cells = [s["axes"].get(axis, {}).get(group) for s in steps]
        z.append([c.get("ratio_to_overall") if c else None for c in cells])
        hover.append([f"{axis}.{group} at {s['step']}: drop rate {c['drop_rate']} (95% CI {c.get('ci95')}) vs "
                      f"{s['drop_rate']} overall, {c['rows']} rows" if c else "no rows"
                      for c, s in zip(cells, steps, strict=True)])
    fig = go.Figure(go.Heatmap(z=z, x=[s["step"] for s in steps], y=[f"{a}.{g}" for a, g in groups],
                               text=hover, hoverinfo="text", colorscale="RdBu_r", zmin=0, zmax=2,  # white at 1; 2x and more saturate
                               colorbar={"title": "× overall"}))
    flagged = (report.get("amplification") or {}).get("flagged", [])
    rows = [[f["step"], f"{f['axis']}.{f['group']}", f["drop_rate"], f["overall"], f["ratio"], f.get("ci95"),
             f["rows"]] for f in flagged]
    return ("<h3>Drop-rate disparity per step</h3><p class=muted>A group's drop rate divided by the step's overall "
            "drop rate (1 = dropped like everyone else).</p>" + charts.html(fig, 160 + 22 * len(groups))
            + (table(["step", "group", "drop rate", "overall", "ratio", "95% CI", "rows"], rows, {2, 3, 4, 6})
               if rows else ""))


def _gate(run: RunData, name: str, report: dict[str, Any]) -> str:
    gate = report.get("gate") or {}
    overridden = any(o.get("step") == name for o in run.manifest.get("audit_override", []))
    if gate.get("passed"):
        head = '<p>Gate <span class="passed">passed</span></p>'
    else:
        head = ('<p>Gate <span class="failed">FAILED</span>'
                + (" (overridden with --allow-audit-failure)" if overridden else "") + "</p>")
    cols = ["metric", "axis", "groups", "value", "threshold"]
    rows = [[r.get(c) for c in cols] for r in gate.get("table", [])]
    if not rows and gate.get("failures"):
        rows = [(line.split(" | ") + [""] * 5)[:5] for line in gate["failures"]]
    parity = [[axis, p.get("demographic_parity_difference"), p.get("demographic_parity_ratio"),
               ", ".join(f"{g} {r}" for g, r in p.get("selection_rate", {}).items())]
              for axis, p in (report.get("parity") or {}).items() if isinstance(p, dict)]
    return ("<h3>Gate</h3>" + head + (table(cols, rows) if rows else "<p class=muted>No threshold violated.</p>")
            + (table(["axis", "parity difference", "parity ratio", "selection rate of the label"], parity, {1, 2})
               if parity else ""))


def audit(run: RunData, charts: Charts) -> str:
    reports = _audit_reports(run)
    if not reports:
        return missing("No audit report in this run (no audit step, or the run stopped before it).")
    out = []
    for name, report in reports:
        out.append(f"<h3>{esc(name)}: {report.get('rows', '?')} rows audited</h3>"
                   + _representation(report, charts) + _disparity(report, charts) + _gate(run, name, report))
    return "".join(out)


def training(run: RunData, charts: Charts) -> str:
    """Loss curve and eval table from ``adapter/train_metrics.json`` and ``adapter/eval.json``."""
    import plotly.graph_objects as go

    metrics = run.json("adapter/train_metrics.json")
    if metrics is None:
        return missing("Training not run (no adapter/train_metrics.json in this run).")
    out = ""
    data_fp = (run.manifest.get("train") or {}).get("fingerprint")
    if data_fp is None or data_fp != metrics.get("fingerprint"):
        out += missing("This adapter is not the one this run's manifest records (trained on other data or "
                       "with other params): its numbers may not describe this dataset.")
    curve = metrics.get("loss_curve") or []
    if curve:
        fig = go.Figure(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers", name="train loss"))
        fig.update_layout(xaxis_title="step", yaxis_title="train loss")
        out += charts.html(fig, 320)
    evaluation = run.json("adapter/eval.json") or {}
    measures = sorted({k for side in ("base", "adapter") for k, v in (evaluation.get(side) or {}).items()
                       if isinstance(v, int | float)})
    if measures:
        out += table(["measure", "base", "adapter"],
                     [[k, evaluation["base"].get(k), evaluation["adapter"].get(k)] for k in measures], {1, 2})
    else:
        out += table(["measure", "before", "after"], [
            ["eval loss", metrics.get("eval_loss_before"), metrics.get("eval_loss_after")],
            ["eval perplexity", metrics.get("eval_perplexity_before"), metrics.get("eval_perplexity_after")]], {1, 2})
    keys = ["base_model", "train_rows", "eval_rows", "steps", "tokens_seen", "train_seconds", "eval_seconds",
            "tokens_per_s", "trainable_params", "overlength_rows"]
    out += table(["setting", "value"], [[k, metrics[k]] for k in keys if k in metrics])
    search = metrics.get("search")
    if search:
        out += "<h3>Hyperparameter search</h3>" + table(
            ["trial", "params", "eval loss", "train seconds"],
            [[t.get("trial"), t.get("params"), t.get("eval_loss"), t.get("train_seconds")]
             for t in search.get("trials", [])], {2, 3})
    return out


def timings(run: RunData, charts: Charts) -> str:
    import plotly.graph_objects as go

    rows = [(f"{i:02d} {s['step']}", s.get("seconds") or 0.0, s.get("resumed", False)) for i, s in enumerate(run.steps)]
    train = run.manifest.get("train") or {}
    if train.get("seconds") is not None:
        rows.append(("train", train["seconds"], train.get("resumed", False)))
    if not rows:
        return missing("No timings in the manifest.")
    fig = go.Figure(go.Bar(x=[r[1] for r in rows], y=[r[0] + (" (resumed)" if r[2] else "") for r in rows],
                           orientation="h", marker_color="#72b7b2"))
    fig.update_layout(xaxis_title="seconds (when the step last computed)", yaxis={"autorange": "reversed"})
    total = run.manifest.get("seconds")
    return charts.html(fig, 100 + 28 * len(rows)) + (f"<p class=muted>Whole run: {total:.1f}s.</p>" if total else "")


def provenance(run: RunData, charts: Charts) -> str:
    m = run.manifest
    steps = [[f"{i:02d} {s['step']}", s.get("version", "-"), s.get("fingerprint", "-")]
             for i, s in enumerate(run.steps)]
    models = [[k, v] for k, v in (m.get("models") or {}).items()]
    return ("<h3>Data fingerprint</h3><p><code>" + esc(m.get("fingerprint", "not recorded")) + "</code></p>"
            + "<h3>Steps</h3>" + table(["step", "version", "fingerprint"], steps)
            + ("<h3>Models</h3>" + table(["used by", "model"], models) if models else "")
            + "<h3>Versions</h3>" + table(["package", "version"], [[k, v] for k, v in m.get("versions", {}).items()]))
