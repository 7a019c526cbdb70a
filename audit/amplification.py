"""Exclusion amplification: what each step of the recipe did to each group.

Groups are detected once, on the rows as ingested (and on rows a step generated, when it adds them). For every
step that drops rows, each group's drop rate (fairlearn ``MetricFrame``, ``selection_rate`` over a dropped
indicator, the group as the sensitive feature, bootstrap interval) is compared with the step's overall drop
rate; a group dropped at >= ``ratio`` x the overall rate (with at least ``min_rows`` rows entering the step) is
named. A row that mentions two groups of an axis counts in both.

The runner hands the audit a ``trace``: the checkpoint folder of each step before it (``kept.parquet`` and
``dropped.parquet`` with an ``id`` column, the first one with ``text``), so nothing is recomputed.

Worked example: 10 rows of group f and 10 of m enter a filter that drops 4 f rows and 2 m rows: overall rate
6/20 = 0.3, f 0.4 (ratio 1.333), m 0.2 (ratio 0.667); with ``ratio: 1.3`` the filter is named for f.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from gristmill.audit.bootstrap import group_rate_ci
from gristmill.audit.representation import ratio_or_na


class TraceStep(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """The step's name (``ingest`` first)."""
    checkpoint: str
    """Its checkpoint folder: ``kept.parquet`` and ``dropped.parquet`` (``id``, and ``text`` for new rows)."""


def _ids(path: Path) -> pl.Series:
    if not path.exists():
        return pl.Series("id", [], dtype=pl.String)
    return pl.read_parquet(path, columns=["id"])["id"].cast(pl.String)


def _texts(path: Path, ids: pl.Series) -> pl.DataFrame:
    if not path.exists() or "text" not in pl.read_parquet_schema(path):
        return pl.DataFrame(schema={"id": pl.String, "text": pl.String})
    frame = pl.read_parquet(path, columns=["id", "text"]).with_columns(pl.col("id").cast(pl.String))
    return frame.filter(pl.col("id").is_in(ids.implode()))


def drop_rates(dropped: np.ndarray, groups: pl.Series, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per group: rows, dropped rows, drop rate and its 95% interval (``groups``: list of groups per row)."""
    from fairlearn.metrics import MetricFrame, selection_rate

    pairs = pl.DataFrame({"d": dropped, "g": groups}).explode("g").drop_nulls("g")
    if pairs.height == 0:
        return {}
    y, g = pairs["d"].to_numpy().astype(int), pairs["g"].to_numpy()
    mf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=g)
    ci = group_rate_ci(y, g, n_boot, seed)
    counts = pairs.group_by("g").agg(pl.len().alias("n"), pl.col("d").sum().alias("k"))
    out = {r["g"]: {"rows": int(r["n"]), "dropped": int(r["k"])} for r in counts.iter_rows(named=True)}
    for key, rate in mf.by_group.items():
        out[str(key)]["drop_rate"] = round(float(rate), 4)
        if str(key) in ci:
            out[str(key)]["ci95"] = [round(v, 4) for v in ci[str(key)]]
    return dict(sorted(out.items()))


def amplification(trace: list[TraceStep], detect: Any, axes: list[str], ratio: float, min_rows: int,
                  n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per step: overall drop rate, per axis and group the drop rate vs overall, the flagged groups, and for
    steps that add rows the groups of the added rows. ``detect(frame with id/text) -> frame of axis columns``."""
    if not trace:
        return {"steps": [], "flagged": []}
    first = Path(trace[0].checkpoint) / "kept.parquet"
    base = pl.read_parquet(first, columns=["id", "text"]).with_columns(pl.col("id").cast(pl.String))
    groups = pl.concat([base.select("id"), detect(base)], how="horizontal")
    before = {a: _counts(groups[a]) for a in axes}
    steps, flagged = [], []
    entering = groups["id"]
    for step in trace[1:]:
        folder = Path(step.checkpoint)
        kept, dropped = _ids(folder / "kept.parquet"), _ids(folder / "dropped.parquet")
        new_ids = pl.concat([kept, dropped]).filter(~pl.concat([kept, dropped]).is_in(entering.implode()))
        entry: dict[str, Any] = {"step": step.name, "rows_in": len(entering), "dropped": len(dropped)}
        if len(new_ids):
            new = pl.concat([_texts(folder / "kept.parquet", new_ids), _texts(folder / "dropped.parquet", new_ids)])
            new_groups = pl.concat([new.select("id"), detect(new)], how="horizontal")
            groups = pl.concat([groups, new_groups], how="vertical_relaxed")
            added_kept = new_groups.filter(pl.col("id").is_in(kept.implode()))
            entry["added"] = {"rows": len(new_ids), "kept": added_kept.height,
                              "groups": {a: _counts(added_kept[a]) for a in axes}}
        rows = groups.filter(pl.col("id").is_in(entering.implode()))
        is_dropped = rows["id"].is_in(dropped.implode()).to_numpy()
        n_dropped = int(is_dropped.sum())
        if n_dropped and rows.height:
            overall = n_dropped / rows.height
            entry["drop_rate"] = round(overall, 4)
            entry["axes"] = {}
            for axis in axes:
                per = drop_rates(is_dropped, rows[axis], n_boot, seed)
                for group, stats in per.items():
                    stats["ratio_to_overall"] = ratio_or_na(stats["drop_rate"], overall)
                    if stats["rows"] >= min_rows and isinstance(stats["ratio_to_overall"], float) \
                            and stats["ratio_to_overall"] >= ratio:
                        flagged.append({"step": step.name, "axis": axis, "group": group,
                                        "drop_rate": stats["drop_rate"], "overall": round(overall, 4),
                                        "ratio": stats["ratio_to_overall"], "ci95": stats.get("ci95"),
                                        "rows": stats["rows"]})
                entry["axes"][axis] = per
        steps.append(entry)
        entering = kept
    final = groups.filter(pl.col("id").is_in(entering.implode()))
    after = {a: _counts(final[a]) for a in axes}
    return {"steps": steps, "flagged": flagged,
            "before_after": {a: {"ingest": before[a], "now": after[a]} for a in axes}}


def _counts(col: pl.Series) -> dict[str, int]:
    exploded = col.explode().drop_nulls()
    return {str(k): int(v) for k, v in sorted(exploded.value_counts().iter_rows())} if len(exploded) else {}
