"""The audit's gate: thresholds on every measure; each violation is one row of a table (metric, axis, groups,
value, threshold) that the CLI prints when the run stops (exit code 3)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

COLUMNS = ("metric", "axis", "groups", "value", "threshold")
SEP = " | "


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_representation_ratio: float | None = Field(None, ge=1)
    """Fail when an axis's most/least mentioned group row-count ratio exceeds this (a group with 0 rows fails)."""
    min_group_rows: int | None = Field(None, ge=0)
    """Fail when a group of an audited axis is mentioned by fewer rows than this."""
    max_divergence: float | None = Field(None, ge=0, le=1)
    """Fail when an axis's total-variation distance from the reference distribution exceeds this."""
    max_selection_rate_difference: float | None = Field(None, ge=0, le=1)
    """Fail when the demographic parity difference (max - min selection rate of the label) exceeds this."""
    min_demographic_parity_ratio: float | None = Field(None, ge=0, le=1)
    """Fail when min/max selection rate of the label is below this (the four-fifths rule: 0.8)."""
    max_equalized_odds_difference: float | None = Field(None, ge=0, le=1)
    """Fail when fairlearn's equalized odds difference (needs ``prediction_column``) exceeds this."""
    max_drop_rate_ratio: float | None = Field(None, ge=1)
    """Fail when a step drops a group's rows at this many times (or more) its overall drop rate."""


def failure(metric: str, axis: str, groups: Any, value: Any, threshold: Any) -> dict[str, str]:
    return {"metric": metric, "axis": axis, "groups": str(groups), "value": str(value), "threshold": str(threshold)}


def as_line(row: dict[str, str]) -> str:
    """One failure as a line ``metric | axis | groups | value | threshold`` (what ``Gate.failures`` holds)."""
    return SEP.join(row[c] for c in COLUMNS)


def check(report: dict[str, Any], gate: GateParams) -> list[dict[str, str]]:
    """The violated thresholds of ``report`` (the audit's report without its gate)."""
    rows: list[dict[str, str]] = []
    for axis, entry in report["axes"].items():
        # With a training weight per row (reweigh) the shares training sees are the weighted ones; a row count
        # (min_group_rows) cannot be weighted into existence, so that check stays on rows.
        shown = entry.get("weighted", entry)
        tag = " (weighted)" if "weighted" in entry else ""
        ratio, limit = shown.get("representation_ratio"), gate.max_representation_ratio
        counts = shown.get("ratio_counts", {})
        pair = f"{counts.get('max', {}).get('group')} {counts.get('max', {}).get('rows')} / " \
               f"{counts.get('min', {}).get('group')} {counts.get('min', {}).get('rows')}"
        if limit is not None and ratio is not None and (ratio == "n/a" or ratio > limit):
            rows.append(failure("representation_ratio" + tag, axis, pair, ratio, f"<= {limit}"))
        if gate.min_group_rows is not None:
            for g, c in entry["group_rows"].items():
                if c < gate.min_group_rows:
                    rows.append(failure("min_group_rows", axis, g, c, f">= {gate.min_group_rows}"))
        tvd = shown.get("divergence", {}).get("tvd")
        if gate.max_divergence is not None and tvd is not None and tvd > gate.max_divergence:
            rows.append(failure("divergence_tvd" + tag, axis, shown["divergence"]["reference"], tvd,
                                f"<= {gate.max_divergence}"))
    for key, unweighted in report.get("parity", {}).items():
        par = unweighted.get("weighted", unweighted)  # the selection rates training sees (reweigh)
        wtag = " (weighted)" if "weighted" in unweighted else ""
        rates = par["selection_rate"]
        span = f"{max(rates, key=rates.get)} {max(rates.values())} / {min(rates, key=rates.get)} {min(rates.values())}"
        if gate.max_selection_rate_difference is not None and par["demographic_parity_difference"] > gate.max_selection_rate_difference:
            rows.append(failure("demographic_parity_difference" + wtag, key, span, par["demographic_parity_difference"],
                                f"<= {gate.max_selection_rate_difference}"))
        dpr = par["demographic_parity_ratio"]
        if gate.min_demographic_parity_ratio is not None and dpr != "n/a" and dpr < gate.min_demographic_parity_ratio:
            rows.append(failure("demographic_parity_ratio" + wtag, key, span, dpr, f">= {gate.min_demographic_parity_ratio}"))
        eod = unweighted.get("equalized_odds_difference")
        if gate.max_equalized_odds_difference is not None and eod is not None and eod > gate.max_equalized_odds_difference:
            rows.append(failure("equalized_odds_difference", key, "all", eod, f"<= {gate.max_equalized_odds_difference}"))
    if gate.max_drop_rate_ratio is not None:
        for f in report.get("amplification", {}).get("flagged", []):
            if f["ratio"] >= gate.max_drop_rate_ratio:
                rows.append(failure(f"drop_rate_ratio@{f['step']}", f["axis"], f"{f['group']} {f['drop_rate']} vs all "
                                    f"{f['overall']} (ci95 {f['ci95']})", f["ratio"], f"< {gate.max_drop_rate_ratio}"))
    return rows
