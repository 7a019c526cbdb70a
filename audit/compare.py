"""Before/after: what the steps between two audits of one recipe (a mitigation — ``reweigh``,
``counterfactual_augment`` — or ``gap_fill``) changed, per axis.

A recipe may carry several ``audit`` steps. A later audit finds the latest earlier one in its ``trace`` (the
checkpoint of each step before it, set by the runner), reads that audit's report from the checkpoint
(``stats.json``, key ``report``) and sets, per axis present in both: the rows (or, when the rows carry a
``weight``, the weight) per group, the shares, the max/min ratio and the total-variation distance from the
reference, before and after, plus the gate verdict, the gaps and the parity (selection rates, demographic parity
difference and ratio) before and after. "After" is the weighted figure
when the later audit weighed the rows (``reweigh`` changes no row, only how much each one counts in training).

Worked example: an audit counts f 3, m 1 (ratio 3.0); ``reweigh`` gives f's rows weight 2/3 and m's row 2; the
next audit's before/after for the axis is ``{"before": {"group_rows": {"f": 3, "m": 1}, "representation_ratio":
3.0, ...}, "after": {"group_rows": {"f": 2.0, "m": 2.0}, "representation_ratio": 1.0, "weighted": true, ...}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gristmill.audit.amplification import TraceStep

_FIELDS = ("group_rows", "shares", "representation_ratio")


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    source = entry.get("weighted", entry)
    out = {k: source[k] for k in _FIELDS if k in source}
    if "divergence" in source:
        out["tvd"] = source["divergence"]["tvd"]
    out["weighted"] = "weighted" in entry
    return out


def previous_audit(trace: list[TraceStep] | None) -> tuple[int, dict[str, Any]] | None:
    """(position in ``trace``, report) of the latest audit before this one, or ``None``."""
    for i in range(len(trace or []) - 1, -1, -1):
        step = trace[i]  # type: ignore[index]
        stats = Path(step.checkpoint) / "stats.json"
        if step.name == "audit" and stats.is_file():
            report = json.loads(stats.read_text()).get("report")
            if report and "axes" in report:
                return i, report
    return None


def before_after(trace: list[TraceStep] | None, report: dict[str, Any]) -> dict[str, Any] | None:
    """The comparison with the latest earlier audit of the recipe (``None`` when this is the first)."""
    found = previous_audit(trace)
    if found is None:
        return None
    index, earlier = found
    assert trace is not None
    steps = [s.name for s in trace[index + 1:]]
    axes = {axis: {"before": _summary(earlier["axes"][axis]), "after": _summary(entry)}
            for axis, entry in report["axes"].items() if axis in earlier["axes"]}
    return {"against": Path(trace[index].checkpoint).name, "steps_between": steps,
            "rows": {"before": earlier.get("rows"), "after": report.get("rows")},
            "gate_passed": {"before": earlier.get("gate", {}).get("passed"),
                            "after": report.get("gate", {}).get("passed")},
            "gaps": {"before": earlier.get("gaps", []), "after": report.get("gaps", [])},
            "axes": axes,
            "parity": {key: {"before": _parity_summary(earlier["parity"][key]), "after": _parity_summary(par)}
                       for key, par in report.get("parity", {}).items() if key in earlier.get("parity", {})}}


def _parity_summary(par: dict[str, Any]) -> dict[str, Any]:
    source = par.get("weighted", par)
    return {"selection_rate": source["selection_rate"],
            "demographic_parity_difference": source["demographic_parity_difference"],
            "demographic_parity_ratio": source["demographic_parity_ratio"], "weighted": "weighted" in par}
