"""Vectorized shingling and hashing of a text column.

Texts are lower-cased and split into word tokens (``\\w+``); a word n-gram is ``n`` consecutive tokens joined by
one space. Texts with fewer than ``n`` tokens yield one shingle: all their tokens. With ``unit="char"`` the
shingles are character n-grams of the lower-cased text with whitespace collapsed (for CJK and very short texts).

Worked example (words, n=2): ``"The cat sat"`` -> ``{"the cat", "cat sat"}``; (chars, n=3): ``"Abcd"`` ->
``{"abc", "bcd"}``.

Hashes are polars' 64-bit hash truncated to 32 bits (what datasketch's permutation scheme expects). They are
stable within one polars version; persistent indexes record that version.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

Unit = Literal["word", "char"]


def _ngram_frame(texts: pl.Series, ngram: int, unit: Unit) -> pl.DataFrame:
    """One row per (doc, shingle) with columns ``doc`` (u32) and ``shingle`` (str); duplicates kept."""
    lowered = texts.fill_null("").str.to_lowercase()
    if unit == "word":
        tokens = lowered.str.extract_all(r"\w+")
        sep = " "
    else:
        tokens = lowered.str.replace_all(r"\s+", " ").str.strip_chars().str.split("")
        sep = ""
    frame = pl.DataFrame({"tok": tokens}).with_row_index("doc")
    frame = frame.with_columns(pl.col("tok").list.len().alias("len"))
    long = frame.filter(pl.col("len") >= ngram).explode("tok").with_columns(
        pl.int_range(pl.len()).over("doc").alias("pos")
    )
    parts = [pl.col("tok").shift(-k).over("doc") for k in range(ngram)]
    grams = long.with_columns(pl.concat_str(parts, separator=sep).alias("shingle")).filter(
        pl.col("pos") <= pl.col("len") - ngram
    )
    short = frame.filter((pl.col("len") < ngram) & (pl.col("len") > 0)).select(
        "doc", pl.col("tok").list.join(sep).alias("shingle")
    )
    return pl.concat([grams.select("doc", "shingle"), short])


def shingle_sets(texts: pl.Series, ngram: int, unit: Unit = "word") -> list[set[str]]:
    """Shingle sets as Python sets (for tests and small inputs)."""
    frame = _ngram_frame(texts, ngram, unit)
    out: list[set[str]] = [set() for _ in range(len(texts))]
    for doc, shingle in frame.iter_rows():
        out[doc].add(shingle)
    return out


def hashed_shingles(texts: pl.Series, ngram: int, unit: Unit = "word") -> tuple[np.ndarray, np.ndarray]:
    """Unique 32-bit shingle hashes per document, sorted by document.

    Returns ``(doc, hash)`` as equal-length uint32/uint64 arrays; a document with no tokens has no entries.
    """
    frame = _ngram_frame(texts, ngram, unit)
    hashed = (
        frame.select("doc", (pl.col("shingle").hash(seed=0) & 0xFFFFFFFF).alias("h"))
        .unique()
        .sort("doc", "h")
    )
    return hashed["doc"].to_numpy().astype(np.uint32), hashed["h"].to_numpy().astype(np.uint64)
