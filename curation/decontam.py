"""Decontamination: drop (or flag) rows that share word n-grams with evaluation sets.

Eval items and rows are lower-cased and split into ``\\w+`` words, then cut into word n-grams (``ngram`` words,
13 by default, as in the GPT-3 and Llama reports) by ``curation.shingles``. A row is contaminated by an eval
item when they share at least ``min_overlap`` distinct n-grams.

Short eval items. An item with fewer than ``ngram`` words (a 9-word question) has no full n-gram; it contributes
one n-gram of all its words instead, and rows are cut into n-grams of that length too, so a row that contains the
whole short item verbatim (in words) is caught. Items under ``min_item_words`` words are skipped (a 2-word item
would match half the corpus) and counted in the stats. Full containment always counts: an item with fewer
distinct n-grams than ``min_overlap`` is hit when a row shares all of them.

Eval files are csv, jsonl/ndjson, json (a list of objects) or parquet, read by ``gristmill.common.readers``; a
malformed record is an error naming ``file:line``. An eval item's text is the ``text_fields`` columns
joined by spaces (default: every string or list-of-string column). Its id is ``<file name>:<row>`` with ``row``
the 0-based data row (header not counted); when two eval files share a name the parent folder is prefixed.

CSV headers: ``has_header`` forces the choice; left unset it is detected from the first row, which is taken as a
header when (a) ``text_fields`` are given and all of them appear in it, or (b) without ``text_fields``, every cell
is a distinct identifier-like name (``question``, ``answerKey``, ``choice_1``; no spaces or punctuation).
Header-less columns are named ``column_1``, ``column_2``, ... (use those names in ``text_fields``).

Vectorized: n-grams are hashed with ``curation.shingles`` (each word hashed once by polars, an n-gram folds its
words' hashes; no n-gram string is built). Two such 32-bit folds over independent views of the word hashes make a
64-bit key, so a chance collision between an eval n-gram and a row's n-gram is negligible (with 32-bit keys,
1e5 eval n-grams against 1e9 row n-grams would make ~23,000 chance matches). Eval keys are built once; each batch of rows is hashed
and joined against them with polars: no Python loop per row.

Worked example (ngram=3): eval item ``"the quick brown fox"`` has n-grams {the quick brown, quick brown fox}; the
row ``"See the quick brown dog"`` shares ``the quick brown`` and is contaminated; ``"quick brown"`` is not.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.contract import StepResult, require, split, sum_stats, with_meta
from gristmill.common.errors import InputError, MissingFileError
from gristmill.common.readers import EXTENSIONS, ReadOptions, read_table
from gristmill.curation.shingles import token_hashes, window_hashes

VERSION = "1"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class DecontamParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    eval_sets: list[str] = Field(min_length=1, json_schema_extra={"path": True})
    """Evaluation files (csv, jsonl/ndjson, json or parquet) whose items must not leak into the training set."""
    ngram: int = Field(13, ge=1, le=50)
    """N-gram size in words; eval items shorter than this contribute one n-gram of all their words."""
    action: Literal["drop", "flag"] = "drop"
    """drop: remove contaminated rows (reason ``contaminated``); flag: keep them, annotated in meta."""
    min_overlap: int = Field(1, ge=1)
    """Distinct n-grams a row must share with one eval item to count as contaminated by it."""
    text_fields: list[str] | None = None
    """Columns of the eval files that form an item's text (joined); default: all string columns."""
    has_header: bool | None = None
    """Whether csv eval files start with a header row; unset = detect (see the module documentation)."""
    min_item_words: int = Field(5, ge=1)
    """Eval items with fewer words are skipped (too short to tell contamination from coincidence)."""
    batch_rows: int = Field(10_000, ge=1)
    """Rows cut into n-grams at a time (bounds memory: ~5 KB per row of ~150 words while a batch is hashed; 10k
    rows were also faster than 50k, 0.55 vs 0.9 CPU s for 50k rows against 500 eval items). The output does not
    depend on it."""

    @model_validator(mode="after")
    def _short_items(self) -> DecontamParams:
        if self.min_item_words > self.ngram:
            raise ValueError(f"min_item_words ({self.min_item_words}) must be at most ngram ({self.ngram})")
        return self


def detect_header(path: Path, text_fields: list[str] | None = None) -> bool:
    """Whether a csv file's first row is a header (rules in the module documentation).

    ``question,answerKey`` -> True; ``"Which gas do plants take in?",B`` -> False.
    """
    with path.open(newline="", encoding="utf-8-sig") as fh:
        first = next(csv.reader(fh), [])
    if not first:
        return False
    if text_fields:
        return set(text_fields) <= set(first)
    return len(set(first)) == len(first) and all(_NAME.match(cell) for cell in first)


def _read_eval_file(path: Path, has_header: bool | None, text_fields: list[str] | None) -> pl.DataFrame:
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"decontaminate.eval_sets: {path}: unsupported file type {path.suffix!r} "
                         f"(use {', '.join(EXTENSIONS)})")
    header = True
    if fmt == "csv":
        header = detect_header(path, text_fields) if has_header is None else has_header
    table = read_table(path, fmt, ReadOptions(has_header=header, infer_types=True))
    if table.bad:
        first = table.bad[0]
        raise InputError(f"decontaminate.eval_sets: {table.where(first.number)}: {first.reason}")
    return table.frame


def _labels(paths: list[Path]) -> list[str]:
    """File names used in item ids; the parent folder is prefixed where two files share a name (the whole path
    where that is not enough either)."""
    names = Counter(p.name for p in paths)
    parents = Counter(f"{p.parent.name}/{p.name}" for p in paths)
    return [
        p.name if names[p.name] == 1 else f"{p.parent.name}/{p.name}" if parents[f"{p.parent.name}/{p.name}"] == 1
        else str(p)
        for p in paths
    ]


def _item_text(frame: pl.DataFrame, path: Path, text_fields: list[str] | None) -> pl.Expr:
    if text_fields:
        missing = [c for c in text_fields if c not in frame.columns]
        if missing:
            raise InputError(
                f"decontaminate.text_fields: {path} has no column(s) {missing} (it has {frame.columns}); "
                "header-less csv columns are named column_1, column_2, ...; set has_header to override detection"
            )
        names = text_fields
    else:
        names = [c for c, t in frame.schema.items() if t == pl.String or t == pl.List(pl.String)]
        if not names:
            raise InputError(f"decontaminate.eval_sets: {path} has no string columns (columns: {frame.columns})")
    parts = [
        pl.col(c).list.join(" ") if frame.schema[c] == pl.List(pl.String) else pl.col(c).cast(pl.String)
        for c in names
    ]
    return pl.concat_str(parts, separator=" ", ignore_nulls=True)


def load_eval_items(
    paths: list[str], *, text_fields: list[str] | None = None, has_header: bool | None = None
) -> pl.DataFrame:
    """All eval items of ``paths`` as a frame ``(item_id, text)``, e.g. ``("arc.csv:0", "which gas ... b")``.

    An item's id is ``<file>:<its id column>`` when the file has an ``id`` column, else ``<file>:<0-based row>``.
    """
    frames = []
    resolved = [Path(p) for p in paths]
    for path, label in zip(resolved, _labels(resolved), strict=True):
        if not path.is_file():
            raise MissingFileError(f"decontaminate.eval_sets: {path} does not exist")
        raw = _read_eval_file(path, has_header, text_fields)
        key = pl.col("id").cast(pl.String) if "id" in raw.columns else pl.int_range(pl.len(), dtype=pl.UInt32)
        frames.append(
            raw.select(
                pl.format("{}:{}", pl.lit(label), key).alias("item_id"),
                _item_text(raw, path, text_fields).alias("text"),
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema={"item_id": pl.String, "text": pl.String})


_Tokens = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tokens(texts: pl.Series) -> _Tokens:
    """``token_hashes`` plus a second, independent view of each token hash (splitmix64's finalizer)."""
    offsets, tok = token_hashes(texts, "word")
    z = tok.copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return offsets, tok, z


def _keys(tokens: _Tokens, n: int, rows: np.ndarray) -> pl.DataFrame:
    """64-bit keys ``(row, h)`` of every n-word window: two 32-bit ``window_hashes`` side by side."""
    offsets, tok, tok2 = tokens
    doc, h1 = window_hashes(offsets, tok, n)
    _, h2 = window_hashes(offsets, tok2, n)
    key = (h1.astype(np.uint64) << np.uint64(32)) | h2.astype(np.uint64)
    return pl.DataFrame({"row": rows[doc], "h": key}, schema={"row": pl.UInt32, "h": pl.UInt64})


@dataclass(frozen=True)
class EvalGrams:
    """Hashed eval n-grams, built once per step: ``grams`` (item, n words, h) and, when short items make more
    than one length, ``prefix``: the keys of the first ``m`` words (m = the shortest length) of every item window.
    """

    grams: pl.DataFrame
    prefix: pl.DataFrame


def eval_ngrams(texts: pl.Series, ngram: int, min_item_words: int = 1) -> EvalGrams:
    """Hashed n-grams of eval items (``item`` = index into ``texts``).

    Long items give n-grams of ``ngram`` words, shorter ones one n-gram of all their words (n = their length);
    items under ``min_item_words`` words give none. With ngram=3: ``"a b c d"`` -> two grams with n=3
    (``a b c``, ``b c d``), ``"a b"`` -> one gram with n=2, and ``prefix`` holds the 2-word windows.
    """
    tokens = _tokens(texts)
    lengths = np.diff(tokens[0])
    items = np.arange(len(lengths), dtype=np.uint32)
    keys = _keys(tokens, ngram, items)
    width = pl.Series("n", np.minimum(lengths, ngram).astype(np.uint16)).gather(keys["row"])
    grams = keys.rename({"row": "item"}).with_columns(width).filter(pl.col("n") >= min_item_words).unique()
    grams = grams.sort("item", "n", "h")
    prefix = pl.DataFrame(schema={"h": pl.UInt64})
    sizes = grams["n"].unique().sort()
    if sizes.len() > 1:
        checked = np.flatnonzero(lengths >= min_item_words)
        prefix = _keys(_tokens(texts.gather(checked)), int(sizes[0]), checked.astype(np.uint32)).select("h").unique()
    return EvalGrams(grams, prefix)


def contamination_hits(
    texts: pl.Series, index: EvalGrams, min_overlap: int = 1, batch_rows: int = 10_000
) -> pl.DataFrame:
    """Contaminating pairs ``(row, item, shared)``: rows of ``texts`` sharing n-grams with eval items.

    ``index`` comes from ``eval_ngrams``. A pair counts when the row shares at least ``min_overlap`` distinct
    n-grams with the item, or all of the item's n-grams when it has fewer. With ngram=3 and the item
    ``"the quick brown fox"``: ``"see the quick brown dog"`` -> one pair with shared=1.

    Each batch of rows is hashed once into windows of the shortest eval length m and joined against the eval
    keys. When short items make several lengths, only rows holding the first m words of some eval window (a
    necessary condition for containing it) are hashed again at the other lengths.
    """
    grams = index.grams
    schema = {"row": pl.UInt32, "item": pl.UInt32, "shared": pl.UInt32}
    if grams.height == 0 or texts.len() == 0:
        return pl.DataFrame(schema=schema)
    by_n = {int(n): g.select("item", "h") for (n,), g in grams.group_by("n")}
    m, *longer = sorted(by_n)
    parts = []
    for start in range(0, texts.len(), batch_rows):
        chunk = texts.slice(start, batch_rows)
        base = _keys(_tokens(chunk), m, np.arange(start, start + chunk.len(), dtype=np.uint32))
        parts.append(base.join(by_n[m], on="h").unique())
        if not longer:
            continue
        candidates = base.join(index.prefix, on="h", how="semi")["row"].unique().sort().to_numpy()
        if candidates.size:
            sub = _tokens(chunk.gather(candidates - start))
            parts.extend(_keys(sub, n, candidates).join(by_n[n], on="h").unique() for n in longer)
    per_item = grams.group_by("item").agg(pl.len().cast(pl.UInt32).alias("total"))
    return (
        pl.concat(parts)
        .group_by("row", "item")
        .agg(pl.len().cast(pl.UInt32).alias("shared"))
        .join(per_item, on="item")
        .filter(pl.col("shared") >= pl.min_horizontal(pl.col("total"), pl.lit(min_overlap, pl.UInt32)))
        .select(list(schema))
        .sort("row", "item")
    )


def decontaminate(frame: pl.DataFrame, params: DecontamParams) -> StepResult:
    """Drop or flag rows sharing n-grams with ``params.eval_sets``; ``meta.contamination`` lists the items hit.

    The report: the settings, per eval file its items and items hit, and per item hit the rows it hit.
    """
    require(frame, ["text"], "decontaminate")
    items = load_eval_items(params.eval_sets, text_fields=params.text_fields, has_header=params.has_header)
    index = eval_ngrams(items["text"], params.ngram, params.min_item_words)
    hits = contamination_hits(frame["text"], index, params.min_overlap, params.batch_rows)
    grams = index.grams
    named = hits.join(items.with_row_index("item").select("item", "item_id"), on="item").sort("row", "item")
    per_row = named.group_by("row", maintain_order=True).agg(pl.col("item_id"))
    contamination = (
        pl.DataFrame({"row": pl.int_range(frame.height, dtype=pl.UInt32, eager=True)})
        .join(per_row, on="row", how="left")
        .sort("row")["item_id"]
    )
    out = with_meta(frame, contamination=contamination)
    hit = contamination.is_not_null()
    reason = pl.when(pl.lit(hit)).then(pl.lit("contaminated")) if params.action == "drop" else pl.lit(None, pl.String)
    kept, dropped = split(out, reason)

    rows_per_item = named.group_by("item_id").agg(pl.len().alias("rows")).sort(
        ["rows", "item_id"], descending=[True, False]
    )
    file_of = pl.col("item_id").str.replace(ITEM_ROW, "").alias("file")
    per_file = (
        items.group_by(file_of, maintain_order=True).agg(pl.len().alias("items"))
        .join(rows_per_item.group_by(file_of).agg(pl.len().alias("items_hit")), on="file", how="left")
        .fill_null(0)
    )
    checked = grams["item"].n_unique()
    report = {
        "ngram": params.ngram,
        "min_overlap": params.min_overlap,
        "action": params.action,
        "eval_sets": {f: {"items": n, "items_hit": h} for f, n, h in per_file.iter_rows()},
        "items_hit": dict(zip(rows_per_item["item_id"], rows_per_item["rows"], strict=True)),
    }
    stats = {
        "rows_hit": int(hit.sum()),
        "eval_items": items.height,
        "eval_items_checked": checked,
        "eval_items_skipped_short": items.height - checked,
        "eval_items_hit": rows_per_item.height,
        "eval_ngrams": grams.height,
    }
    return StepResult(kept, dropped, stats, rows_in=frame.height, report=report)


ITEM_ROW = r":\d+$"
"""An eval item's id is ``<file>:<row>``; removing this suffix gives its file."""


def merge_slices(stats: list[dict[str, Any]], reports: list[dict[str, Any]], rows_in: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """decontaminate's stats and report over the slices of a streamed run: rows hit per eval item added and ranked
    as one pass ranks them (most rows first, then item id), items hit counted per file; the eval set's own figures
    are the same in every slice (each slice is matched against the same index).

    Example: slices hitting {"a.jsonl:3": 1} and {"a.jsonl:3": 2, "a.jsonl:1": 2} merge to items_hit
    {"a.jsonl:3": 3, "a.jsonl:1": 2} and eval_sets["a.jsonl"]["items_hit"] == 2.
    """
    per_item = sum_stats([r["items_hit"] for r in reports])
    items_hit = dict(sorted(per_item.items(), key=lambda kv: (-kv[1], kv[0])))
    files = Counter(re.sub(ITEM_ROW, "", item) for item in items_hit)
    report = {**{k: reports[0][k] for k in ("ngram", "min_overlap", "action")},
              "eval_sets": {f: {"items": v["items"], "items_hit": files[f]}
                            for f, v in reports[0]["eval_sets"].items()},
              "items_hit": items_hit}
    merged = sum_stats(stats, rows_in, keep=("eval_items", "eval_items_checked", "eval_items_skipped_short",
                                             "eval_ngrams"))
    return merged | {"eval_items_hit": len(items_hit)}, report
