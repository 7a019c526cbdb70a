"""The later sections of ``report.html``: audit, mitigation, training, eval sets, the model bias probe, the
ablation, timings, versions and fingerprints."""

from __future__ import annotations

from typing import Any

from gristmill.report import Charts, RunData, esc, fmt, missing, table

WORST_EXAMPLES = 3


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


def _before_after(name: str, compared: dict[str, Any], charts: Charts) -> str:
    """Grouped bars: each group's share of the axis's mentions at the earlier audit and at this one (weighted when
    this audit weighed the rows), and per axis the ratio and distance from the reference before and after."""
    import plotly.graph_objects as go

    axes = compared.get("axes") or {}
    x = [f"{axis}: {g}" for axis, e in axes.items() for g in e["after"].get("shares", {})]
    before = [axes[a]["before"].get("shares", {}).get(g) for a, e in axes.items() for g in e["after"].get("shares", {})]
    after = [e["after"]["shares"][g] for e in axes.values() for g in e["after"].get("shares", {})]
    weighted = any(e["after"].get("weighted") for e in axes.values())
    fig = go.Figure()
    fig.add_bar(name=f"before ({compared.get('against')})", x=x, y=before, marker_color="#bab0ac")
    fig.add_bar(name=f"after ({name}{', weighted' if weighted else ''})", x=x, y=after, marker_color="#4c78a8")
    fig.update_layout(barmode="group", yaxis_title="share of the axis's group mentions", xaxis_tickangle=-40,
                      legend={"orientation": "h", "y": -0.45})
    rows = [[axis, fmt(e["before"].get("representation_ratio")), fmt(e["after"].get("representation_ratio")),
             fmt(e["before"].get("tvd")), fmt(e["after"].get("tvd")), "yes" if e["after"].get("weighted") else "no"]
            for axis, e in axes.items()]
    gate = compared.get("gate_passed") or {}
    verdict = {True: "passed", False: "failed", None: "n/a"}
    gaps = compared.get("gaps") or {}
    steps = ", ".join(compared.get("steps_between") or []) or "none"
    out = (f"<h3>{esc(name)} against {esc(compared.get('against'))}</h3><p>Steps between: {esc(steps)}. Gate "
           f"{verdict[gate.get('before')]} → {verdict[gate.get('after')]}; under-represented groups "
           f"{len(gaps.get('before', []))} → {len(gaps.get('after', []))}.</p>")
    if x:
        out += charts.html(fig, 460)
    out += table(["axis", "ratio before", "ratio after", "TVD before", "TVD after", "weighted after"], rows,
                 {1, 2, 3, 4})
    parity = [[key, fmt(p["before"].get("demographic_parity_difference")),
               fmt(p["after"].get("demographic_parity_difference")), fmt(p["before"].get("demographic_parity_ratio")),
               fmt(p["after"].get("demographic_parity_ratio"))] for key, p in (compared.get("parity") or {}).items()]
    if parity:
        out += table(["axis", "parity difference before", "after", "parity ratio before", "after"], parity,
                     {1, 2, 3, 4})
    return out


def _reweigh(label: str, s: dict[str, Any]) -> str:
    """A reweigh step's weight per group (per group and label with Kamiran–Calders) from its stats."""
    weights = s.get("weights") or {}
    labels = sorted({y for w in weights.values() if isinstance(w, dict) for y in w})
    rows = []
    for g in sorted(set(weights) | set(s.get("group_rows") or {})):
        w = weights.get(g)
        cells = [fmt(w.get(y)) for y in labels] if isinstance(w, dict) else [fmt(w)]
        rows.append([g, (s.get("group_rows") or {}).get(g, 0), *cells, fmt((s.get("group_weight") or {}).get(g))])
    head = ["group", "rows", *([f"weight (label {y})" for y in labels] or ["weight per row"]), "total weight"]
    note = (f"<p>{esc(label)}: axis <code>{esc(s.get('axis'))}</code>, {esc(s.get('method'))} weights; "
            f"{s.get('rows_weighed', 0)} rows weighed, {s.get('rows_no_group', 0)} without a group and "
            f"{s.get('rows_several_groups', 0)} with several keep weight 1.</p>")
    return note + (table(head, rows, set(range(1, len(head)))) if rows else missing("No row mentioned one group."))


def _counterfactual(label: str, s: dict[str, Any]) -> str:
    words = list((s.get("swaps_by_word") or {}).items())[:10]
    return (f"<p>{esc(label)}: {s.get('rows_added', s.get('rows_augmented', 0))} gender-swapped copies added "
            f"({s.get('rows_with_swaps', 0)} rows had something to swap, {s.get('swaps', 0)} words swapped"
            + (f"; most swapped: {esc(', '.join(f'{w} {n}' for w, n in words))}" if words else "") + ").</p>")


def mitigation(run: RunData, charts: Charts) -> str:
    """What the mitigation steps did: per later audit the representation before/after (the earlier audit's report
    against this one's), the reweigh step's weight per group, the counterfactual copies added."""
    parts = []
    for name, report in _audit_reports(run):
        if report.get("before_after"):
            parts.append(_before_after(name, report["before_after"], charts))
    for i, s in enumerate(run.steps):
        if s.get("step") == "reweigh":
            parts.append("<h3>Weights</h3>" + _reweigh(f"{i:02d} reweigh", s))
        elif s.get("step") == "counterfactual_augment":
            parts.append("<h3>Counterfactual copies</h3>" + _counterfactual(f"{i:02d} counterfactual_augment", s))
    if not parts:
        return missing("No mitigation in this recipe (no reweigh or counterfactual_augment step, and no later audit "
                       "to compare with an earlier one).")
    return "".join(parts)


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


_LOWER_IS_BETTER = {"loss", "perplexity"}


def _change(metric: str, base: Any, value: Any) -> str:
    """``+0.12 (better)``: the adapter's value minus the base's, judged by the metric's direction."""
    if not all(isinstance(v, int | float) and v == v for v in (base, value)):
        return "n/a"
    delta = value - base
    if delta == 0:
        return "0"
    better = (delta < 0) == (metric in _LOWER_IS_BETTER)
    return f"{delta:+.4g} ({'better' if better else 'worse'})"


def _worst(result: dict[str, Any], side: str | None) -> str:
    """The set's rows where ``side`` did worst, collapsed: lowest ROUGE-L answers (generation) or wrong picks,
    those the base got right first (multiple choice)."""
    examples = result.get("examples") or []
    if side is None or not examples:
        return ""
    gen = [e for e in examples if side in (e.get("rougeL") or {})]
    if gen:
        gen.sort(key=lambda e: (e["rougeL"][side], str(e["id"])))
        rows = "".join(f'<tr><td>{esc(e["id"])}</td><td class="text">{esc(e.get("reference"))}</td>'
                       f'<td class="text">{esc(e["answers"].get("base"))}</td><td class=num>'
                       f'{fmt(e["rougeL"].get("base"))}</td><td class="text">{esc(e["answers"].get(side))}</td>'
                       f'<td class=num>{fmt(e["rougeL"][side])}</td></tr>' for e in gen[:WORST_EXAMPLES])
        return (f"<details><summary>{min(WORST_EXAMPLES, len(gen))} lowest-ROUGE-L answers of {esc(side)} "
                f"(of {len(gen)})</summary><table><thead><tr><th>id</th><th>reference</th><th>base answer</th>"
                f"<th class=num>ROUGE-L</th><th>{esc(side)} answer</th><th class=num>ROUGE-L</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></details>")
    wrong = [e for e in examples if (e.get("pick") or {}).get(side) not in (None, e.get("gold"))]
    if not wrong:
        return ""
    wrong.sort(key=lambda e: (e["pick"].get("base") != e.get("gold"), str(e["id"])))
    rows = [[e["id"], e.get("gold"), e["pick"].get("base"), e["pick"].get(side)] for e in wrong[:WORST_EXAMPLES]]
    return (f"<details><summary>{len(rows)} questions {esc(side)} got wrong (of {len(wrong)})</summary>"
            + table(["id", "gold", "base pick", f"{side} pick"], rows) + "</details>")


def evaluation(run: RunData, charts: Charts) -> str:
    """Per eval set (``eval/summary.json``) each metric for the base model and the adapter(s), the change, and the
    rows the adapter did worst on (``eval/<set>.json``)."""
    summary = run.json("eval/summary.json")
    if summary is None:
        return missing("No eval sets scored (no eval/summary.json: the recipe has no `eval:` section, or no model "
                       "was trained).")
    sides = [c for c in summary.get("columns", []) if c not in ("set", "metric")]
    tuned = [c for c in sides if c != "base"]
    out = (f'<p class="muted">Base model <code>{esc(summary.get("base_model"))}</code>; loss and perplexity: lower '
           "is better, the other metrics: higher.</p>")
    if (run.manifest.get("adapter") or {}).get("current") is False:
        out += missing("The adapter these results score was trained on other data than this run's dataset.")
    rows = summary.get("table") or []
    for name in dict.fromkeys(r["set"] for r in rows):
        result = run.json(f"eval/{name}.json") or {}
        body = [[r["metric"], *(fmt(r.get(c)) for c in sides), *(_change(r["metric"], r.get("base"), r.get(c))
                                                                  for c in tuned)]
                for r in rows if r["set"] == name]
        head = ["metric", *sides, *(f"{c} − base" for c in tuned)]
        where = f"{result.get('rows', '?')} rows, mapping {result.get('mapping', '?')}" if result else \
            f"eval/{name}.json is missing: no examples"
        out += (f"<h3>{esc(name)}</h3><p class=muted>{esc(where)}</p>" + table(head, body, set(range(1, len(head))))
                + _worst(result, tuned[0] if tuned else None))
    return out


def _gap(side: dict[str, Any]) -> str:
    """``0.4 (female / male)``: the gap and the groups at its ends; ``0 (no gap)`` when every group is equal."""
    if not side["gap"]:
        return "0 (no gap)"
    return f"{fmt(side['gap'])} ({side['max']['group']} / {side['min']['group']})"


def model_bias(run: RunData, charts: Charts) -> str:
    """``eval/model_bias.json``: per axis the largest gap between groups in sentiment and refusal rate for the base
    model and the adapter (grouped bars), the increase and the gate."""
    import plotly.graph_objects as go

    result = run.json("eval/model_bias.json")
    if result is None:
        return missing("No bias probe in this run (train.bias_probe not set, or no model was trained).")
    axes = result.get("axes") or {}
    x, rows = [], []
    base, tuned = [], []
    for axis, entry in axes.items():
        for measure in ("sentiment", "refusal_rate"):
            m = entry.get(measure)
            if not m:
                continue
            x.append(f"{axis}: {measure}")
            base.append(m["base"]["gap"])
            tuned.append(m["adapter"]["gap"])
            rows.append([axis, measure, _gap(m["base"]), _gap(m["adapter"]), f"{m['increase']:+.4g}"])
    gate = result.get("gate") or {}
    overridden = any(o.get("step") == "bias_probe" for o in run.manifest.get("audit_override", []))
    threshold = gate.get("threshold")
    if threshold is None:
        head = "<p>No gate (train.bias_probe.max_generation_gap_increase not set).</p>"
    elif gate.get("passed"):
        head = f'<p>Gate <span class="passed">passed</span>: no gap grew by more than {fmt(threshold)}.</p>'
    else:
        head = ('<p>Gate <span class="failed">FAILED</span>' + (" (overridden with --allow-audit-failure)"
                                                                 if overridden else "")
                + f": a gap grew by more than {fmt(threshold)}.</p>"
                + "<ul>" + "".join(f"<li><code>{esc(f)}</code></li>" for f in gate.get("failures", [])) + "</ul>")
    if not x:
        return head + missing("model_bias.json holds no axis.")
    fig = go.Figure()
    fig.add_bar(name="base model", x=x, y=base, marker_color="#bab0ac")
    fig.add_bar(name="adapter", x=x, y=tuned, marker_color="#f58518")
    fig.update_layout(barmode="group", yaxis_title="largest gap between groups", legend={"orientation": "h", "y": -0.3})
    n = len(result.get("templates") or [])
    return (head + f'<p class="muted">{n} prompt templates per group, greedy, {result.get("max_new_tokens", "?")} '
            "new tokens; sentiment: mean VADER compound score, refusal rate: share of refusals.</p>"
            + charts.html(fig, 380) + table(["axis", "measure", "base gap (max / min group)",
                                             "adapter gap (max / min group)", "increase"], rows, {4}))


VARIANTS = ("raw", "curated", "curated_synthetic")
"""The ablation's variants (``gristmill.ablation``), in table order."""


def ablation_rows(summary: dict[str, Any]) -> list[list[str]]:
    """``ablation.json`` as rows ``[metric, base, raw, curated, curated_synthetic]`` of text: the held-out metrics
    (loss, ROUGE-L, generation defect shares), each eval set's (``set: metric``), then per variant steps, tokens,
    rows, eval rows left out and eval-set leaks; a variant not trained because its data is another's
    (``same_as``) reads "same as <other>". The CLI (``gristmill ablate``) and the report print these rows."""
    same = summary.get("same_as") or {}

    def cells(row: dict[str, Any]) -> list[str]:
        return [f"same as {same[n]}" if n in same else fmt(row.get(n)) for n in VARIANTS]

    rows = [[metric, fmt(row.get("base")), *cells(row)] for metric, row in (summary.get("metrics") or {}).items()]
    for name, metrics in (summary.get("eval_sets") or {}).items():
        rows += [[f"{name}: {metric}", fmt(row.get("base")), *cells(row)] for metric, row in metrics.items()]
    for label, key in (("steps", "steps"), ("tokens trained", "tokens_trained"), ("train rows", "train_rows")):
        rows.append([label, "", *cells(summary.get(key) or {})])
    data = summary.get("data") or {}
    rows.append(["eval rows left out", "", *(fmt((data.get(n) or {}).get("excluded_eval")) for n in VARIANTS)])
    if any((data.get(n) or {}).get("eval_leaks") is not None for n in VARIANTS):
        rows.append(["eval-set copies in training rows (leaks)", "",
                     *(fmt((data.get(n) or {}).get("eval_leaks")) for n in VARIANTS)])
    return rows


def ablation(run: RunData, charts: Charts) -> str:
    """``ablation.json`` (``gristmill ablate``): each metric for the base model and the raw, curated and
    curated + synthetic adapters, then what each variant trained on."""
    data = run.json("ablation.json")
    if data is None:
        return missing("No ablation in this run (`gristmill ablate RECIPE` writes ablation.json; then "
                       "`gristmill report RUN` adds it here).")
    variants = list(VARIANTS)
    rows = ablation_rows(data)
    ev = data.get("eval") or {}
    stale = data.get("run_fingerprint") not in (None, run.manifest.get("fingerprint"))
    return ((missing("This ablation was run on other data than this run's dataset (the run changed since).")
             if stale else "") + f'<p class="muted">{esc(data.get("mode"))} mode; {esc(ev.get("rows"))} held-out rows '
            f"({esc(ev.get('source'))}); eval sets as <code>set: metric</code>"
            + (f"; token budget {esc(data['token_budget'])}" if data.get("token_budget") else "")
            + ". refusal, truncated (stopped mid-sentence by itself), empty, repetitive, copies_prompt: shares of "
            "the greedy answers showing that defect; defective: any of them; at_token_limit: answers that used "
            "the whole generation budget. Leaks: training rows copying an eval-set item.</p>"
            + table(["metric", "base", *variants], rows, set(range(1, len(variants) + 2))))


def lineage(run: RunData, charts: Charts) -> str:
    """The run this one continued (``train.resume_adapter``), the data it added, and the runs continuing it."""
    from gristmill.lineage import continued, continued_lines

    info = continued(run.run_dir, run.manifest)
    if info is None:
        return missing("A fresh run: it continues no earlier run and no run beside it continues it "
                       "(`train.resume_adapter` continues one; `gristmill runs DIR` lists lineages).")
    return "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in continued_lines(info)) + "</ul>"


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
