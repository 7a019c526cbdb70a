"""The audit step: detection, representation, parity, exclusion amplification, associations, the gate.

It keeps every row (annotating ``meta.demographics``) and writes a report; a failed gate stops the run before
training. Groups below ``gap_ratio`` x the best-represented group are listed as ``gaps`` (gap filling's input).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from gristmill.audit.amplification import TraceStep, amplification
from gristmill.audit.associations import AssociationParams, associations_of, attribute_hits, attribute_words
from gristmill.audit.compare import before_after
from gristmill.audit.detection import (
    DetectionParams,
    audited_axes,
    detect_groups,
    group_names,
    resolve_lexicon,
)
from gristmill.audit.gate import GateParams, as_line, check
from gristmill.audit.parity import parity, single_group
from gristmill.audit.representation import gaps, representation
from gristmill.common.contract import Gate, StepResult, TwoPass, no_drops, require, run_two_pass, with_meta

VERSION = "3"  # 3: weighted representation (a `weight` column), before/after against an earlier audit

__all__ = ["Audit", "AuditParams", "GateParams", "TraceStep", "audit_rows"]


class AuditParams(DetectionParams):
    label_column: str | None = None
    """A binary (0/1 or bool) column whose selection rate per group fairlearn compares."""
    prediction_column: str | None = None
    """A binary prediction column: adds the equalized odds difference (needs ``label_column``)."""
    intersections: list[list[str]] = Field(default_factory=list)
    """Pairs of axes whose combined groups (e.g. ``female+black``) are also compared for parity."""
    reference: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per axis, the expected share of each group (normalized); default: uniform over the axis's groups."""
    gate: GateParams = GateParams()
    """Conditions that stop the run before training."""
    gap_ratio: float = Field(0.5, gt=0, le=1)
    """A group mentioned less than this share of the best-represented group's count is listed as a gap."""
    drop_rate_ratio: float = Field(1.5, ge=1)
    """Name a step in the report when it drops a group at this many times its overall drop rate."""
    min_rows_for_drop_rate: int = Field(10, ge=1)
    """Judge a group's drop rate at a step only when at least this many of its rows entered the step."""
    associations: AssociationParams = AssociationParams()
    """Group x attribute-word co-occurrence (PMI) settings."""
    weight_column: str | None = "weight"
    """A per-row training weight (what ``reweigh`` writes): when the frame has it, each axis also reports the
    weighted representation (a group's weight sum), which the gate's ratio and divergence checks use."""
    n_boot: int = Field(200, ge=0)
    """Bootstrap resamples for confidence intervals (0: none)."""
    seed: int = 0
    """Seed of the bootstrap."""
    trace: list[TraceStep] | None = Field(None, exclude=True)
    """Checkpoints of the steps before the audit, set by the runner (exclusion amplification, and the earlier
    audit's report for the before/after comparison)."""


class Audit(TwoPass):
    """The audit in two passes: the first keeps per row only the groups it mentions (a list per axis), its
    attribute words (associations) and the label, prediction and weight columns when the audit uses them, never
    its text; ``decide`` writes the report from those; the second pass annotates each slice's rows."""

    def __init__(self, params: AuditParams, schema: pl.Schema, rows: int = 0) -> None:
        require(pl.DataFrame(schema=schema),
                ["text", *[c for c in (params.label_column, params.prediction_column) if c]], "audit")
        self.params = params
        self.lexicon = resolve_lexicon(params)
        self.axes = [*audited_axes(params, self.lexicon), *params.sensitive_columns]
        self.weighted = bool(params.weight_column and params.weight_column in schema)
        extra = [c for c in (params.label_column, params.prediction_column) if c]
        self.kept_columns = list(dict.fromkeys([*extra, *([params.weight_column] if self.weighted else [])]))
        self.columns = tuple(dict.fromkeys(["text", *params.sensitive_columns, *self.kept_columns]))
        self.words = attribute_words(params.associations) if params.associations.enabled else []
        self._hits: list[pl.DataFrame] = []
        self._found: list[pl.Series] = []
        self._kept: list[pl.DataFrame] = []
        self.rows = 0

    def scan(self, part: pl.DataFrame) -> None:
        self.rows += part.height
        self._hits.append(detect_groups(part, self.params, self.lexicon))
        if self.params.associations.enabled:
            self._found.append(attribute_hits(part["text"], self.words))
        self._kept.append(part.select(self.kept_columns))

    def decide(self) -> None:
        params, axes = self.params, self.axes
        hits = pl.concat(self._hits)
        frame = pl.concat(self._kept)  # label, prediction, weight: what the report reads besides the groups
        found = pl.concat(self._found) if self._found else None
        self._hits, self._found, self._kept = [], [], []
        report: dict[str, Any] = {"rows": self.rows, "axes": {}, "gaps": []}
        weights = None
        if self.weighted:
            assert params.weight_column is not None
            weights = frame[params.weight_column].cast(pl.Float64).fill_null(1.0).to_numpy()
            report["weight_column"] = params.weight_column
        for axis in axes:
            names = group_names(hits, axis, self.lexicon, params.sensitive_columns)
            entry = representation(hits[axis], names, params.reference.get(axis), params.n_boot, params.seed)
            if weights is not None:
                entry["weighted"] = representation(hits[axis], names, params.reference.get(axis), params.n_boot,
                                                   params.seed, weights=weights)
            report["axes"][axis] = entry
            report["gaps"] += gaps(axis, entry["group_rows"], params.gap_ratio)
        if params.label_column:
            report["parity"] = _parity(frame, hits, axes, params, weights)
        if params.trace:
            lexicon = self.lexicon

            def detect(rows: pl.DataFrame) -> pl.DataFrame:
                return detect_groups(rows, params, lexicon).select(axes)

            report["amplification"] = amplification(params.trace, detect, axes, params.drop_rate_ratio,
                                                     params.min_rows_for_drop_rate, params.n_boot, params.seed)
        if found is not None:
            report["associations"] = associations_of(found, hits, axes, params.associations)
        table = check(report, params.gate)
        failures = [as_line(row) for row in table]
        report["gate"] = {"passed": not failures, "failures": failures, "table": table}
        compared = before_after(params.trace, report)
        if compared is not None:
            report["before_after"] = compared
        demo = pl.struct([hits[a].alias(a) for a in axes]) if axes else None
        self.demographics = hits.select(demo).to_series() if demo is not None else None
        self.report, self.failures = report, failures

    def apply(self, part: pl.DataFrame, start: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        demo = self.demographics.slice(start, part.height) if self.demographics is not None else pl.lit(None)
        out = with_meta(part, demographics=demo)
        return out, no_drops(out)

    def finish(self) -> tuple[dict[str, Any], dict[str, Any], Gate]:
        stats = {"gate_passed": not self.failures,
                 "rows_mentioning": {a: self.report["axes"][a]["rows_with_any"] for a in self.axes}}
        return stats, self.report, Gate(passed=not self.failures, failures=self.failures)


def audit_rows(frame: pl.DataFrame, params: AuditParams) -> StepResult:
    """Annotate rows with ``meta.demographics`` and report; keeps every row (the gate acts on the run)."""
    return run_two_pass(Audit(params, frame.schema, frame.height), frame)


def _parity(frame: pl.DataFrame, hits: pl.DataFrame, axes: list[str], params: AuditParams,
            weights: np.ndarray | None = None) -> dict[str, Any]:
    """Parity per axis over rows that mention exactly one group, and per requested intersection of two axes
    (also weighted when the rows carry a weight)."""
    out: dict[str, Any] = {}
    label, pred = frame[params.label_column], frame[params.prediction_column] if params.prediction_column else None
    known = label.is_not_null()
    w = pl.Series(weights if weights is not None else np.ones(frame.height)).filter(known)

    def weighted(mask: pl.Series) -> np.ndarray | None:
        return w.filter(mask).to_numpy() if weights is not None else None

    for axis in axes:
        mask, groups = single_group(hits[axis].filter(known))
        if groups.n_unique() >= 2:
            out[axis] = parity(label.filter(known).filter(mask), groups,
                               pred.filter(known).filter(mask) if pred is not None else None, params.n_boot, params.seed,
                               weighted(mask))
    for a, b in params.intersections:
        ma, ga = single_group(hits[a].filter(known))
        mb, gb = single_group(hits[b].filter(known))
        both = ma & mb
        combo = hits.filter(known).filter(both).select(pl.concat_str(pl.col(a).list.first(), pl.col(b).list.first(),
                                                                     separator="+")).to_series()
        if combo.n_unique() >= 2:
            out[f"{a}+{b}"] = parity(label.filter(known).filter(both), combo,
                                     pred.filter(known).filter(both) if pred is not None else None, params.n_boot,
                                     params.seed, weighted(both))
    return out
