"""Representation audit, fairlearn parity and the gate.

For each axis the audit counts rows that mention each group (a row may mention several), the share of rows that
mention any group, and the representation ratio = most-mentioned group count / least-mentioned group count (a
group with no mentions makes the ratio infinite). When the recipe names a binary label column, fairlearn's
``MetricFrame`` gives the selection rate (share of label == 1) per group over rows that mention exactly one group
of the axis, and ``demographic_parity_difference``-style max gap between groups.

The gate turns these into pass/fail; a failed gate stops the run before training. Groups below
``gap_ratio`` x the best-represented group are listed as gaps, the input of synthetic gap filling.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.audit.lexicon import lexicon_or_builtin
from gristmill.common.contract import Gate, StepResult, no_drops, require, with_meta
from gristmill.common.errors import InputError
from gristmill.common.lexicon import detect

VERSION = "1"


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_representation_ratio: float | None = Field(None, ge=1)
    """Fail when an axis's most/least mentioned group count ratio exceeds this."""
    min_group_rows: int | None = Field(None, ge=0)
    """Fail when a group of an audited axis is mentioned by fewer rows than this."""
    max_selection_rate_difference: float | None = Field(None, ge=0, le=1)
    """Fail when the label's selection rates of two groups differ by more than this (needs ``label_column``)."""


class AuditParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    axes: list[str] = ["gender", "race_ethnicity", "religion", "age"]
    """Demographic axes to audit (keys of the lexicon)."""
    lexicon: str | None = Field(None, json_schema_extra={"path": True})
    """A JSON lexicon of the built-in shape; default: the built-in English lexicon."""
    label_column: str | None = None
    """A binary (0/1 or bool) column whose selection rate per group fairlearn compares."""
    gate: GateParams = GateParams()
    """Conditions that stop the run before training."""
    gap_ratio: float = Field(0.5, gt=0, le=1)
    """A group mentioned less than this share of the best-represented group's count is listed as a gap."""


def _selection_rates(labels: pl.Series, groups: pl.Series) -> tuple[dict[str, float], float]:
    from fairlearn.metrics import MetricFrame, selection_rate

    y = labels.cast(pl.Int8).to_numpy()
    mf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=groups.to_numpy())
    rates = {str(k): float(v) for k, v in mf.by_group.items()}
    return rates, float(mf.difference(method="between_groups"))


def audit_rows(frame: pl.DataFrame, params: AuditParams) -> StepResult:
    """Annotate rows with ``meta.demographics`` and report; keeps every row (the gate acts on the run)."""
    lexicon = lexicon_or_builtin(params.lexicon)
    require(frame, ["text", *([params.label_column] if params.label_column else [])], "audit")
    unknown = [a for a in params.axes if a not in lexicon]
    if unknown:
        raise InputError(f"audit.axes: unknown axis {unknown}; the lexicon has {sorted(lexicon)}")
    hits = detect(frame["text"], lexicon, params.axes)
    report: dict[str, Any] = {"rows": frame.height, "axes": {}, "gaps": [], "gate": {"failures": []}}
    failures: list[str] = report["gate"]["failures"]
    for axis in params.axes:
        col = hits[axis]
        counts = {g: int(col.list.contains(g).sum()) for g in lexicon[axis]}
        low, high = min(counts.values()), max(counts.values())
        ratio = math.inf if low == 0 else high / low
        entry: dict[str, Any] = {
            "group_rows": counts,
            "rows_with_any": int((col.list.len() > 0).sum()),
            "representation_ratio": ratio if math.isfinite(ratio) else "inf",
        }
        gaps = [g for g, c in counts.items() if c < params.gap_ratio * high]
        report["gaps"] += [{"axis": axis, "group": g, "rows": counts[g], "target_rows": math.ceil(params.gap_ratio * high)} for g in gaps]
        if params.label_column:
            single = (col.list.len() == 1) & frame[params.label_column].is_not_null()
            if int(single.sum()) > 0:
                rates, diff = _selection_rates(frame[params.label_column].filter(single), col.filter(single).list.first())
                entry["selection_rate"] = rates
                entry["selection_rate_difference"] = diff
                limit = params.gate.max_selection_rate_difference
                if limit is not None and diff > limit:
                    failures.append(f"{axis}: selection-rate difference {diff:.3f} > {limit}")
        limit = params.gate.max_representation_ratio
        if limit is not None and ratio > limit:
            failures.append(f"{axis}: representation ratio {entry['representation_ratio']} > {limit} ({counts})")
        if params.gate.min_group_rows is not None:
            for g, c in counts.items():
                if c < params.gate.min_group_rows:
                    failures.append(f"{axis}.{g}: {c} rows < min_group_rows {params.gate.min_group_rows}")
        report["axes"][axis] = entry
    report["gate"]["passed"] = not failures
    demo = pl.struct([hits[a].alias(a) for a in params.axes])
    out = with_meta(frame, demographics=hits.select(demo).to_series())
    return StepResult(out, no_drops(out), {"gate_passed": not failures}, rows_in=frame.height, report=report,
                      gate=Gate(passed=not failures, failures=failures))
