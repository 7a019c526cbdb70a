"""The ``reweigh`` step: a per-row training ``weight`` that balances one axis's groups (the trainer's weighted loss
reads it), keeping every row.

With a label column, Kamiran–Calders reweighing (Kamiran & Calders 2012): each (group g, label y) cell gets

    w(g, y) = P(g) P(y) / P(g, y)

so that, weighted, the label is independent of the group (every group gets the overall label rate). Without a
label, representation weights: w(g) = r(g) / P(g), so that every group's rows weigh the same in total (``r``
uniform) or follow a reference distribution ``r``.

Which rows are weighed: a row that mentions exactly one group of the axis. A row that mentions none (it says
nothing about the axis) or several (``he`` and ``she``: moving its weight would move two groups at once), and a
row whose label is null, keeps weight 1 and does not enter the probabilities. Over the weighed rows the weights
already average 1 (sum over cells of P(g,y) w(g,y) = sum of P(g)P(y) = 1), so the unweighed rows at 1 fit; the
whole column is then normalised to mean 1 (which only matters when a (group, label) cell is empty, or with
``max_weight``). An existing ``weight`` column (an earlier reweigh on another axis) is multiplied in.

Worked example (Kamiran–Calders), 8 single-group rows: f with labels [1, 1, 1, 0], m with [1, 0, 0, 0]:
P(f) = P(m) = 0.5, P(1) = P(0) = 0.5, P(f, 1) = 3/8, so w(f, 1) = 0.25 / 0.375 = 2/3, w(f, 0) = 0.25 / 0.125 = 2,
w(m, 1) = 2, w(m, 0) = 2/3. Weighted, f's label rate is (3 x 2/3) / (3 x 2/3 + 2) = 0.5 = m's.
Representation example: 3 rows of f and 1 of m, uniform reference: w(f) = 0.5 / 0.75 = 2/3, w(m) = 0.5 / 0.25 =
2; each group then weighs 2 in total.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field, model_validator

from gristmill.audit.detection import DetectionParams, detect_groups, resolve_lexicon
from gristmill.common.contract import StepResult, no_drops, require
from gristmill.common.errors import InputError

VERSION = "1"

WEIGHT = "weight"
"""The column the trainer reads (train/formatting.py)."""


class ReweighParams(DetectionParams):
    axis: str | None = None
    """The lexicon axis whose detected groups are balanced (e.g. ``gender``); or give ``column``."""
    column: str | None = None
    """A column holding each row's group (tabular-style data), instead of a lexicon ``axis``."""
    label_column: str | None = None
    """A label column (any discrete values): Kamiran–Calders weights making the label independent of the group.
    Without it, representation weights (groups weigh equally, or as ``reference``)."""
    reference: dict[str, float] | None = None
    """Representation weights only: each group's target share (normalised over the groups present); default
    uniform."""
    max_weight: float | None = Field(None, gt=0)
    """Clip each row's weight to at most this before normalising (a tiny cell can give a huge weight)."""

    @model_validator(mode="after")
    def _one_source(self) -> ReweighParams:
        if (self.axis is None) == (self.column is None):
            raise ValueError("give exactly one of `axis` (a lexicon axis) or `column` (a column of groups)")
        if self.reference is not None and self.label_column is not None:
            raise ValueError("`reference` is for representation weights; with `label_column` the weights are "
                             "Kamiran–Calders (remove one of the two)")
        if self.axes is not None or self.sensitive_columns:
            raise ValueError("reweigh takes one `axis` or one `column`, not `axes`/`sensitive_columns`")
        return self


def kamiran_calders(groups: list[str], labels: list[Any]) -> dict[tuple[str, Any], float]:
    """w(g, y) = P(g) P(y) / P(g, y) for each (group, label) cell present (one group and label per row).

    >>> w = kamiran_calders(["f", "f", "f", "f", "m", "m", "m", "m"], [1, 1, 1, 0, 1, 0, 0, 0])
    >>> round(w[("f", 1)], 4), w[("f", 0)], w[("m", 1)], round(w[("m", 0)], 4)
    (0.6667, 2.0, 2.0, 0.6667)
    """
    n = len(groups)
    frame = pl.DataFrame({"g": groups, "y": labels})
    pg = dict(frame.group_by("g").len().iter_rows())
    py = dict(frame.group_by("y").len().iter_rows())
    return {(g, y): (pg[g] / n) * (py[y] / n) / (c / n) for g, y, c in frame.group_by("g", "y").len().iter_rows()}


def representation_weights(groups: list[str], reference: dict[str, float] | None = None) -> dict[str, float]:
    """w(g) = r(g) / P(g), ``r`` uniform over the groups present or ``reference`` normalised over them.

    >>> representation_weights(["f", "f", "f", "m"])
    {'f': 0.6666666666666666, 'm': 2.0}
    """
    n = len(groups)
    counts = dict(pl.Series(groups, dtype=pl.String).value_counts().iter_rows())
    if reference is None:
        target = {g: 1 / len(counts) for g in counts}
    else:
        total = sum(reference.get(g, 0.0) for g in counts)
        if total <= 0:
            raise InputError(f"reweigh.reference: no positive share for the groups present ({sorted(counts)})")
        target = {g: reference.get(g, 0.0) / total for g in counts}
    return {g: target[g] / (counts[g] / n) for g in sorted(counts)}


def reweigh(frame: pl.DataFrame, params: ReweighParams) -> StepResult:
    """Write a ``weight`` column (mean 1) balancing ``params.axis`` (or ``params.column``); keeps every row."""
    require(frame, ["text"] if params.axis else [params.column], "reweigh")  # type: ignore[list-item]
    if params.label_column:
        require(frame, [params.label_column], "reweigh")
    if params.axis:
        lexicon = resolve_lexicon(params)
        if params.axis not in lexicon:
            raise InputError(f"reweigh.axis: unknown axis {params.axis!r}; the lexicon has {sorted(lexicon)}")
        found = detect_groups(frame, params.model_copy(update={"axes": [params.axis]}), lexicon)[params.axis]
        absent = sorted(g for g, terms in lexicon[params.axis].items() if terms and not found.list.contains(g).any())
    else:
        value = frame[params.column].cast(pl.String)  # type: ignore[index]
        found = pl.Series([[v] if v is not None else [] for v in value], dtype=pl.List(pl.String))
        absent = []
    one = found.list.len() == 1
    labels = frame[params.label_column] if params.label_column else pl.Series([0] * frame.height)
    weighed = one & labels.is_not_null()
    g_rows = found.filter(weighed).list.first().to_list()
    y_rows = labels.filter(weighed).to_list()
    raw = [1.0] * frame.height
    idx = weighed.arg_true().to_list()
    per_group: dict[str, Any]
    if not g_rows:
        per_group = {}
    elif params.label_column:
        cells = kamiran_calders(g_rows, y_rows)
        for i, g, y in zip(idx, g_rows, y_rows, strict=True):
            raw[i] = cells[(g, y)]
        per_group = {}
        for (g, y), w in sorted(cells.items(), key=lambda c: (c[0][0], str(c[0][1]))):
            per_group.setdefault(g, {})[str(y)] = round(w, 6)
    else:
        weights = representation_weights(g_rows, params.reference)
        for i, g in zip(idx, g_rows, strict=True):
            raw[i] = weights[g]
        per_group = {g: round(w, 6) for g, w in weights.items()}
    w = pl.Series(WEIGHT, raw, dtype=pl.Float64)
    if params.max_weight is not None:
        w = w.clip(upper_bound=params.max_weight)
    if WEIGHT in frame.columns:
        w = w * frame[WEIGHT].cast(pl.Float64).fill_null(1.0)
    mean = w.mean() if frame.height else 1.0
    w = w / mean if mean else w  # type: ignore[operator]
    out = frame.with_columns(w.alias(WEIGHT))
    single = found.filter(one).list.first()
    stats: dict[str, Any] = {
        "axis": params.axis or params.column,
        "method": "kamiran_calders" if params.label_column else "representation",
        "weights": per_group,
        "rows_weighed": len(idx), "rows_no_group": int((found.list.len() == 0).sum()),
        "rows_several_groups": int((found.list.len() > 1).sum()),
        "rows_null_label": int((one & labels.is_null()).sum()) if params.label_column else 0,
        "groups_without_rows": absent,
        "group_rows": {g: int(c) for g, c in sorted(single.value_counts().iter_rows())} if len(single) else {},
        "group_weight": {g: round(float(s), 4) for g, s in sorted(
            pl.DataFrame({"g": single, "w": w.filter(one)}).group_by("g").agg(pl.col("w").sum()).iter_rows())}
        if len(single) else {},
    }
    return StepResult(out, no_drops(out), stats, rows_in=frame.height)
