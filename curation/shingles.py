"""Vectorized shingling and hashing of a text column.

Texts are lower-cased and split into word tokens (``\\w+``); a word n-gram is ``n`` consecutive tokens joined by
one space. Texts with fewer than ``n`` tokens yield one shingle: all their tokens. With ``unit="char"`` the
shingles are character n-grams of the lower-cased text with whitespace collapsed (for CJK and very short texts).

Worked example (words, n=2): ``"The cat sat"`` -> ``{"the cat", "cat sat"}``; (chars, n=3): ``"Abcd"`` ->
``{"abc", "bcd"}``.

Hashing is vectorized: each token is hashed once (polars' 64-bit hash) and an n-gram's hash folds its tokens'
hashes (``window_hashes``), so no n-gram string is ever built. Hashes are 32-bit (what datasketch's affine32
scheme expects) and stable within one polars version; persistent indexes record that version.
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


_FOLD = np.uint64(0x100000001B3)


TOKEN_CHUNK = 1024
"""Texts tokenized per polars call in ``token_hashes``: the lower-cased copy and the token strings (~4x the text)
exist for this many texts at a time, only the 8-byte hashes for all."""


def token_hashes(texts: pl.Series, unit: Unit = "word", chunk: int = TOKEN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per-document token hashes: ``offsets`` (n+1, int64) into a flat uint64 array of token hashes.

    ``token_hashes(pl.Series(["A b", "", "b"]))`` -> offsets ``[0, 2, 2, 3]``; hashes 1 and 2 are equal (``b``).
    """
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    parts = []
    for start in range(0, len(texts), chunk):
        lowered = texts.slice(start, chunk).fill_null("").str.to_lowercase()
        if unit == "word":
            tokens = lowered.str.extract_all(r"\w+")
        else:
            tokens = lowered.str.replace_all(r"\s+", " ").str.strip_chars().str.split("")
        del lowered
        lengths = tokens.list.len().fill_null(0).to_numpy()
        offsets[start + 1 : start + 1 + len(lengths)] = lengths
        parts.append(tokens.explode().drop_nulls().hash(seed=0).to_numpy())
        del tokens
    np.cumsum(offsets, out=offsets)
    tok = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return offsets, tok.astype(np.uint64, copy=False)


def window_hashes(offsets: np.ndarray, tok: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit n-gram hashes ``(doc, h)`` (duplicates kept): each window folds its token hashes as
    ``h = h * 0x100000001B3 ^ t`` (mod 2**64), then ``h ^ h >> 32`` keeps 32 bits. A document with fewer than
    ``ngram`` tokens gets one window over all of them.
    """
    lengths = np.diff(offsets)
    n_win = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    doc = np.repeat(np.arange(len(lengths), dtype=np.uint32), n_win)
    first = np.repeat(offsets[:-1] - np.cumsum(np.r_[0, n_win[:-1]]), n_win) + np.arange(n_win.sum())
    width = np.repeat(np.minimum(lengths, ngram), n_win)
    h = np.zeros(len(first), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):
            take = k < width
            h = np.where(take, (h * _FOLD) ^ tok[np.minimum(first + k, len(tok) - 1)] if len(tok) else h, h)
    return doc, ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def hashed_shingles(texts: pl.Series, ngram: int, unit: Unit = "word") -> tuple[np.ndarray, np.ndarray]:
    """Unique 32-bit shingle hashes per document, sorted by document then hash.

    Returns ``(doc, hash)`` as equal-length uint32 arrays; a document with no tokens has no entries.
    """
    offsets, tok = token_hashes(texts, unit)
    doc, h = window_hashes(offsets, tok, ngram)
    key = np.unique((doc.astype(np.uint64) << np.uint64(32)) | h.astype(np.uint64))
    return (key >> np.uint64(32)).astype(np.uint32), (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
