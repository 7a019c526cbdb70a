"""The data contract and the step result every stage returns.

A frame flowing through the pipeline has the reserved columns ``id``, ``text``, ``messages``, ``source`` and
``meta`` (a struct of per-step outputs); other columns pass through untouched. A stage needs only the columns it
reads (``require``) and adds the contract columns it writes (``with_meta`` creates ``meta`` when it is missing),
so ``dedup_minhash`` works on a bare ``id`` + ``text`` frame from a notebook.

A stage returns a ``StepResult``: kept rows, dropped rows (each with a ``reason``), its own numbers, and
optionally rows it generated (``added``), a report and a gate. ``rows_in + added == kept + dropped`` always; the
runner checks it with ``check``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from gristmill.common.errors import InputError

RESERVED = ("id", "text", "messages", "source", "meta")
MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


class AccountingError(RuntimeError):
    """A step lost or invented rows, or dropped one without a reason: a bug in the step, never bad input."""


@dataclass(frozen=True)
class Gate:
    """A pass/fail verdict that stops the run before training when it fails (the audit's gate)."""

    passed: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class StepResult:
    """What a stage function returns. Unpacks as ``kept, dropped, stats = result`` (stats with the counts)."""

    kept: pl.DataFrame
    dropped: pl.DataFrame
    stats: dict[str, Any]
    """The step's own numbers (JSON-serializable); the counts below are added by ``summary``."""
    rows_in: int
    """Rows the step received."""
    added: int = 0
    """Rows the step generated (synthesis candidates); they end up kept or dropped like input rows."""
    report: dict[str, Any] | None = None
    """A document written to ``<run>/reports/NN-<step>.json`` (the audit's report)."""
    gate: Gate | None = None
    """A verdict that stops the run when it fails."""

    def __post_init__(self) -> None:
        if "reason" not in self.dropped.columns:
            if self.dropped.height:
                raise AccountingError("dropped rows have no `reason` column")
            self.dropped = self.dropped.with_columns(pl.lit(None, dtype=pl.String).alias("reason"))

    def dropped_by_reason(self) -> dict[str, int]:
        return dict(Counter(self.dropped["reason"].to_list())) if self.dropped.height else {}

    def summary(self) -> dict[str, Any]:
        """Counts first, then the step's own numbers."""
        added = {"rows_added": self.added} if self.added else {}
        return {"rows_in": self.rows_in, **added, "kept": self.kept.height, "dropped": self.dropped.height,
                "dropped_by_reason": self.dropped_by_reason(), **self.stats}

    def check(self, step: str, frame_in: pl.DataFrame | None = None) -> None:
        """Raise ``AccountingError`` unless every row in (and every added row) is kept or dropped with a reason.

        With ``frame_in`` (the frame the step was given, as the runner passes it) the rows are checked by id too:
        ``rows_in`` must be its height, every input id must come out exactly as often as it went in (kept or
        dropped), and the ids that were not in the input are exactly ``added`` distinct new rows. So a step that
        loses one row and duplicates another, which the counts alone cannot see, fails here.
        """
        if frame_in is not None and self.rows_in != frame_in.height:
            raise AccountingError(f"step {step}: reports rows_in={self.rows_in} but was given {frame_in.height} rows")
        if self.rows_in + self.added != self.kept.height + self.dropped.height:
            raise AccountingError(f"step {step}: {self.rows_in} rows in + {self.added} added != "
                                  f"{self.kept.height} kept + {self.dropped.height} dropped")
        if self.dropped.height and self.dropped["reason"].null_count():
            raise AccountingError(f"step {step}: a dropped row has no reason")
        if frame_in is not None and "id" in frame_in.columns:
            self._check_ids(step, frame_in["id"])

    def _check_ids(self, step: str, ids_in: pl.Series) -> None:
        parts = []
        for name, frame in (("kept", self.kept), ("dropped", self.dropped)):
            if frame.height and "id" not in frame.columns:
                raise AccountingError(f"step {step}: the {name} rows have no `id` column")
            if frame.height:
                parts.append(frame["id"].cast(pl.String))
        out = pl.concat(parts) if parts else pl.Series("id", [], dtype=pl.String)
        if out.null_count():
            raise AccountingError(f"step {step}: {out.null_count()} rows came out without an id")
        counts = (
            ids_in.cast(pl.String).value_counts(name="n_in").rename({ids_in.name: "id"})
            .join(out.alias("id").value_counts(name="n_out"), on="id", how="full", coalesce=True)
            .with_columns(pl.col("n_in").fill_null(0), pl.col("n_out").fill_null(0))
        )
        wrong = counts.filter((pl.col("n_in") > 0) & (pl.col("n_in") != pl.col("n_out")))
        if wrong.height:
            lost = wrong.filter(pl.col("n_out") < pl.col("n_in"))["id"].head(3).to_list()
            extra = wrong.filter(pl.col("n_out") > pl.col("n_in"))["id"].head(3).to_list()
            raise AccountingError(f"step {step}: {wrong.height} input ids do not come out exactly once "
                                  f"(lost, e.g. {lost}; duplicated, e.g. {extra})")
        new = counts.filter(pl.col("n_in") == 0)
        if new.height != self.added or new.height and new["n_out"].max() != 1:  # type: ignore[operator]
            raise AccountingError(f"step {step}: {new['n_out'].sum()} rows with {new.height} ids that were not in "
                                  f"the input, but the step reports {self.added} added (new ids must be unique)")

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kept, self.dropped, self.summary()))


def require(frame: pl.DataFrame, columns: tuple[str, ...] | list[str], step: str) -> None:
    """Raise a user error naming the step and the missing columns unless ``frame`` has all of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{step}: the frame has no column {', '.join(map(repr, missing))} (columns: "
                         f"{frame.columns}); ingest maps inputs to id/text/messages, or add them yourself")


def with_meta(frame: pl.DataFrame, **fields: pl.Expr | pl.Series) -> pl.DataFrame:
    """Add or replace fields of the ``meta`` struct column, creating ``meta`` when the frame has none.

    >>> with_meta(pl.DataFrame({"id": ["a"]}), score=pl.lit(0.5)).to_dicts()
    [{'id': 'a', 'meta': {'score': 0.5}}]
    """
    exprs = [(v if isinstance(v, pl.Expr) else pl.lit(v)).alias(k) for k, v in fields.items()]
    if "meta" not in frame.columns or frame.schema["meta"] == pl.Null:
        return frame.with_columns(pl.struct(exprs).alias("meta"))
    return frame.with_columns(pl.col("meta").struct.with_fields(exprs))


def split(frame: pl.DataFrame, drop_reason: pl.Series | pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` by a per-row reason (null = keep); the dropped part gets a ``reason`` column.

    >>> kept, dropped = split(pl.DataFrame({"x": [1, 2]}), pl.Series(["bad", None]))
    >>> kept["x"].to_list(), dropped["reason"].to_list()
    ([2], ['bad'])
    """
    with_reason = frame.with_columns(drop_reason.alias("reason"))
    reasons = with_reason["reason"].null_count()
    # Nothing (or everything) dropped, the common case of most steps: no filter copies the frame's buffers.
    if reasons == frame.height:
        return frame, with_reason.clear()
    if reasons == 0:
        return frame.clear(), with_reason
    kept = with_reason.filter(pl.col("reason").is_null()).drop("reason")
    dropped = with_reason.filter(pl.col("reason").is_not_null())
    return kept, dropped


SLICE_ROWS = 50_000
"""Rows per slice for row-local work: the runner streams row-local steps in slices this size, and stages that
build per-row Python objects or list columns work through a large frame a slice at a time (``run_sliced``)."""

StatsMerge = Callable[[list[dict[str, Any]], int], dict[str, Any]]
"""``(stats of each slice, rows in the whole frame) -> the stats the step gives on the whole frame``."""


def sum_stats(parts: list[dict[str, Any]], rows_in: int = 0, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The stats of a row-local step on a whole frame from those of its slices, in order: whole numbers are
    added, dicts merged key by key (keys in order of first appearance, as one pass over the frame counts them),
    and any other value — and each key in ``keep`` (settings such as thresholds) — must be the same in every slice.

    >>> sum_stats([{"n": 1, "by": {"a": 1}, "t": "x"}, {"n": 2, "by": {"b": 1, "a": 2}, "t": "x"}])
    {'n': 3, 'by': {'a': 3, 'b': 1}, 't': 'x'}
    """
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = [part[key] for part in parts if key in part]
        if key not in keep and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        elif key not in keep and all(isinstance(v, dict) for v in values):
            out[key] = sum_stats(values)
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:  # a per-slice figure that does not add up (a mean, a list): the step needs its own merge rule
            raise ValueError(f"stat {key!r} differs between slices ({values[0]!r}, ...) and is not a count")
    return out


def run_sliced(stage: Callable[[pl.DataFrame, Any], StepResult], frame: pl.DataFrame, params: Any,
               slice_rows: int = SLICE_ROWS, merge: StatsMerge = sum_stats) -> StepResult:
    """A row-local ``stage`` over ``frame`` a slice at a time, so its per-row Python objects and list columns exist
    for one slice only: the same kept and dropped rows (in order) as one call on the whole frame, and ``merge``
    of the slices' stats. Only for steps whose output for a row depends on that row alone, without report or gate.

    >>> def keep_even(f, p):
    ...     kept, dropped = split(f, pl.when(pl.col("x") % 2 == 1).then(pl.lit("odd")))
    ...     return StepResult(kept, dropped, {"seen": f.height}, f.height)
    >>> r = run_sliced(keep_even, pl.DataFrame({"x": [1, 2, 3, 4, 6]}), None, slice_rows=2)
    >>> r.kept["x"].to_list(), r.dropped["x"].to_list(), r.stats
    ([2, 4, 6], [1, 3], {'seen': 5})
    """
    if frame.height <= slice_rows:
        return stage(frame, params)
    kept, dropped, stats = [], [], []
    for start in range(0, frame.height, slice_rows):
        part = stage(frame.slice(start, slice_rows), params)
        if part.report is not None or part.gate is not None or part.added:
            raise AccountingError("run_sliced: a row-local stage returned a report, a gate or added rows")
        kept.append(part.kept)
        dropped.append(part.dropped)
        stats.append(part.stats)
    try:
        whole = pl.concat(kept, rechunk=False), pl.concat(dropped, rechunk=False)
    except pl.exceptions.SchemaError:  # a column typed Null in one slice (all null there): the whole frame at once
        return stage(frame, params)
    return StepResult(*whole, merge(stats, frame.height), rows_in=frame.height)


class TwoPass:
    """A step that needs all its rows before it can decide about one (deduplication, the audit), in a shape a runner
    can stream: ``scan`` sees the input a slice at a time, in order, only the ``columns`` it names, and keeps compact
    per-row state (a hash, band keys, the groups a row mentions), never the slice itself; ``decide`` settles every
    row; ``apply`` then gets the same slices again, all columns, with the position of their first row, and returns
    each one's kept and dropped rows; ``finish`` gives the step's stats, report and gate. The step on a whole frame
    is one slice of it (``run_two_pass``): the streamed and the in-memory step run the same code.

    Built by the step from its params, the input's schema and row count (the runner reads both from the parquet
    footer), so it can check required columns and size its per-row state before the first slice."""

    columns: tuple[str, ...] = ()
    """Columns ``scan`` reads (those the input lacks are left out)."""

    def scan(self, part: pl.DataFrame) -> None:
        raise NotImplementedError

    def decide(self) -> None:
        """After the last ``scan``: settle every row (default: nothing to do)."""

    def apply(self, part: pl.DataFrame, start: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Kept and dropped (with ``reason``) rows of ``part``, the input's rows ``start`` to ``start + height``."""
        raise NotImplementedError

    def finish(self) -> tuple[dict[str, Any], dict[str, Any] | None, Gate | None]:
        """The step's own stats, report and gate, after the last ``apply``."""
        return {}, None, None


def run_two_pass(plan: TwoPass, frame: pl.DataFrame) -> StepResult:
    """``plan`` on ``frame`` as one slice: the in-memory step.

    >>> class Odd(TwoPass):
    ...     columns = ("x",)
    ...     def scan(self, part): self.n = part.height
    ...     def apply(self, part, start):
    ...         return split(part, pl.when(pl.col("x") % 2 == 1).then(pl.lit("odd")))
    ...     def finish(self): return {"n": self.n}, None, None
    >>> r = run_two_pass(Odd(), pl.DataFrame({"x": [1, 2], "y": ["a", "b"]}))
    >>> r.kept.to_dicts(), r.stats
    ([{'x': 2, 'y': 'b'}], {'n': 2})
    """
    plan.scan(frame.select([c for c in frame.columns if c in plan.columns]))
    plan.decide()
    kept, dropped = plan.apply(frame, 0)
    stats, report, gate = plan.finish()
    return StepResult(kept, dropped, stats, rows_in=frame.height, report=report, gate=gate)


def no_drops(frame: pl.DataFrame) -> pl.DataFrame:
    """An empty dropped frame with ``frame``'s schema and a ``reason`` column."""
    return frame.clear().with_columns(pl.lit(None, dtype=pl.String).alias("reason"))


WARN_SHARE = 0.2
"""A rule or reason hitting more than this share of a step's input is named in the run summary: one rule removing
a fifth of the data is more often a rule that does not fit the data than data that is that bad."""


def share_warnings(counts: dict[str, int], rows_in: int, what: str = "reason", share: float = WARN_SHARE
                   ) -> list[str]:
    """One line per name whose count is over ``share`` of ``rows_in``.

    >>> share_warnings({"gopher_quality.min_words": 48, "c4.curly_bracket": 1}, 100, "rule")
    ['rule gopher_quality.min_words hits 48 of 100 input rows (48%, over 20%): check that it fits this data']
    """
    if rows_in <= 0:
        return []
    return [f"{what} {name} hits {n} of {rows_in} input rows ({n / rows_in:.0%}, over {share:.0%}): check that it "
            "fits this data" for name, n in counts.items() if n > share * rows_in]
