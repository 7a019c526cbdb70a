"""MinHash near-duplicate detection: vectorized signatures and LSH, clusters verified without enumerating pairs.

Signatures follow datasketch's default ``affine32`` scheme exactly (same permutations for a seed, same uint32
arithmetic), so a signature here equals ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` fed the same
32-bit shingle hashes; they are computed for whole batches (C, ``curation.minhash_kernel``). Banding finds the
same buckets as datasketch's ``MinHashLSH`` with the same (bands, rows) (``curation.lsh``).

Clusters come from one streaming pass over the bands (``minhash_kernel.link``): a bucket member is compared only
with the bucket's leaders, never with a document already in its cluster, and a comparison is settled by exact
Jaccard of the shingle sets. So a cluster of k copies of one text costs O(k) comparisons, not the k**2 / 2
candidate pairs; a member makes a bounded number of new comparisons per bucket and a rejected pair is not compared
again in a later band, so fragmented clusters (copies under the threshold of each other) stay linear too. Full
signatures live for one batch of ``batch_docs`` texts; what outlives it per row in memory is its band keys. Only
rows that share a bucket with another row can be compared (``minhash_kernel.candidates``, a fifth of the rows in
the scale benchmark's corpus): the shingle sets go to a temporary file as they are computed and only those rows'
sets are read back, for the exact Jaccard. One representative per cluster is kept: the highest
``meta.quality_score`` when an earlier quality step wrote one, else the first seen.

Worked example (threshold 0.7, 3-word shingles): ``[BASE, BASE + " today", "gardening ..."]`` -> rows 0 and 1 share
a band and their exact Jaccard is 0.94 -> one cluster {0, 1}; row 1 is dropped as ``near_duplicate`` with
``meta.duplicate_of`` = row 0's id, and ``meta.cluster_id`` = row 0's id on both.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.common.contract import StepResult, TwoPass, require, run_two_pass, split, with_meta
from gristmill.curation import minhash_kernel
from gristmill.curation.clusters import preference_rank, representatives
from gristmill.curation.lsh import band_keys, optimal_bands
from gristmill.curation.shingles import hashed_shingles, token_hashes

VERSION = "6"  # 6: stats signature_accepts / signature_rejects gone (same clusters); 5: every comparison by exact Jaccard (no agreement-signature shortcuts; stats signature_* are 0); 4: comparisons per member and bucket bounded (MAX_COMPARE), rejected pairs not re-compared, 8-bit agreement signatures; 3: earlier rows may come as a persisted sketch (stats earlier_rows_hashed); 2: clusters from leader comparisons with signature shortcuts, not from all verified candidate pairs
SCHEME = "affine32"
_MAX_HASH = np.uint32((1 << 32) - 1)


class MinhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    threshold: float = Field(0.8, gt=0, le=1)
    """Jaccard similarity at or above which two rows are near duplicates."""
    num_perm: int = Field(128, ge=16, le=1024)
    """Number of MinHash permutations (signature length); more is more accurate and slower."""
    ngram: int = Field(5, ge=1, le=32)
    """Shingle size in words (or characters when ``unit: char``)."""
    unit: Literal["word", "char"] = "word"
    """Shingle unit: words (default) or characters (CJK, very short texts)."""
    verify: bool = True
    """Check each compared pair (exact Jaccard of the shingle sets) before calling it a duplicate; without it
    sharing one LSH band is enough."""
    min_recall: float = Field(0.995, gt=0, lt=1)
    """With ``verify``: choose LSH bands so a pair at the threshold is found with at least this probability
    (verification removes the extra candidates); without it datasketch's balanced choice is used."""
    seed: int = 1
    """Permutation seed (datasketch's default is 1)."""
    batch_shingles: int = Field(1 << 16, ge=1024)
    """Shingles hashed per numpy batch; bounds the (shingles x num_perm) working array."""
    against: list[str] = Field(default_factory=list, json_schema_extra={"path": True})
    """Earlier curated sets to deduplicate against: parquet files with ``id`` and ``text`` (e.g. an earlier run's
    ``dataset/data.parquet``). New rows that near-duplicate them are dropped (``near_duplicate_of_earlier``)."""
    batch_docs: int = Field(8192, ge=1)
    """Documents shingled at a time; only band keys (and the shingle sets of rows that share a bucket) outlive a
    batch (tokens and full signatures do not)."""


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` for ``seed``: the same ``RandomState`` draws as
    ``datasketch.MinHash(num_perm, seed).permutations`` (a test checks it), without importing datasketch (~20 MB)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes hashes with it). ``fmix32([0]) == [0]``."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(
    doc: np.ndarray, hashes: np.ndarray, n_docs: int, num_perm: int, seed: int, batch: int = 1 << 16
) -> np.ndarray:
    """MinHash signatures, shape ``(n_docs, num_perm)`` uint32, for 32-bit shingle hashes grouped by ``doc``.

    ``doc`` must be sorted. Rows of documents without shingles stay at 2**32-1 (an empty datasketch MinHash).
    Each row equals ``MinHash(num_perm, seed, hashfunc=lambda x: x)`` after ``update_batch`` with that
    document's hashes: same fmix32 pre-mix, same permutations ``h -> a*h + b mod 2**32``.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full((n_docs, num_perm), _MAX_HASH, dtype=np.uint32)
    for start in range(0, len(hashes), batch):
        h = fmix32(hashes[start : start + batch].astype(np.uint32))[:, None]
        d = doc[start : start + batch]
        with np.errstate(over="ignore"):
            phv = h * a + b
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        mins = np.minimum.reduceat(phv, starts, axis=0)
        docs = d[starts]
        sig[docs] = np.minimum(sig[docs], mins)
    return sig


@dataclass
class NearDuplicates:
    a: np.ndarray
    b: np.ndarray
    """Accepted edges (row positions): a spanning forest of the duplicate clusters, at most one per row."""
    bands: int
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    """Comparisons made and what they settled (``minhash_kernel.link``)."""
    labels: np.ndarray | None = None
    """Each row's cluster label (the lowest row of its cluster)."""


SKETCH_VERSION = "1"
"""Part of a persisted sketch's key: bump when tokenizing, shingling or hashing changes what a text sketches to."""


@dataclass
class Sketch:
    """What near-duplicate detection needs of a set of rows: MinHash signatures and the shingle hash sets (for
    exact Jaccard). Row ``i``'s shingles are ``shingles[offsets[i]:offsets[i + 1]]``."""

    sig: np.ndarray
    """(rows, num_perm) uint32."""
    offsets: np.ndarray
    """(rows + 1,) int64."""
    shingles: np.ndarray
    """uint32."""
    has_shingles: np.ndarray
    """(rows,) bool: False for texts without tokens (kept out of LSH: they share the all-max signature)."""

    def __len__(self) -> int:
        return len(self.sig)

    def concat(self, other: Sketch) -> Sketch:
        return Sketch(np.concatenate([self.sig, other.sig]),
                      np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
                      np.concatenate([self.shingles, other.shingles]),
                      np.concatenate([self.has_shingles, other.has_shingles]))


def sketch_key(params: MinhashParams) -> str:
    """The params that shape a sketch, as a file-name-safe key: ``sketch_key(MinhashParams()) ==
    'word5-p128-s1-v1'``. Threshold, bands and verification do not change signatures or shingles."""
    return f"{params.unit}{params.ngram}-p{params.num_perm}-s{params.seed}-v{SKETCH_VERSION}"


def _sketch_batches(texts: pl.Series, params: MinhashParams
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(start, signatures, shingle offsets, shingle hashes, has_shingles)`` of ``batch_docs`` texts at a time:
    token lists live for one batch only."""
    texts = texts.cast(pl.String).fill_null("")
    a_perm, b_perm = permutations(params.num_perm, params.seed)
    for start in range(0, len(texts), params.batch_docs):
        chunk = texts.slice(start, params.batch_docs)
        offsets, tok = token_hashes(chunk, params.unit)
        if minhash_kernel.available():
            chunk_sig, off, sh = minhash_kernel.sketch(offsets, tok, params.ngram, a_perm, b_perm)
        else:  # pragma: no cover - numba is a declared dependency
            doc, sh = hashed_shingles(chunk, params.ngram, params.unit)
            chunk_sig = signatures(doc, sh, len(chunk), params.num_perm, params.seed, params.batch_shingles)
            off = np.r_[0, np.cumsum(np.bincount(doc, minlength=len(chunk)))].astype(np.int64)
        del tok
        yield start, chunk_sig, np.asarray(off, dtype=np.int64), np.asarray(sh, dtype=np.uint32), np.diff(offsets) > 0


def sketch(texts: pl.Series, params: MinhashParams) -> Sketch:
    """Signatures and shingle sets of ``texts``, ``batch_docs`` texts at a time (only signatures and shingle
    hashes outlive a batch)."""
    n = len(texts)
    sig = np.empty((n, params.num_perm), dtype=np.uint32)
    has_shingles = np.zeros(n, dtype=bool)
    sh_offsets, sh_parts, base = [np.zeros(1, dtype=np.int64)], [], 0
    for start, chunk_sig, off, sh, has in _sketch_batches(texts, params):
        sig[start : start + len(chunk_sig)] = chunk_sig
        has_shingles[start : start + len(chunk_sig)] = has
        sh_offsets.append(off[1:] + base)
        sh_parts.append(sh)
        base += len(sh)
    sh_all = np.concatenate(sh_parts) if sh_parts else np.zeros(0, dtype=np.uint32)
    return Sketch(sig, np.concatenate(sh_offsets), sh_all, has_shingles)


def _list_column(offsets: np.ndarray, values: np.ndarray) -> pl.Series:
    """A ``List(UInt32)`` column whose row ``i`` is ``values[offsets[i]:offsets[i + 1]]``, built on the two arrays
    as arrow's list layout is (no per-row objects: ``np.split`` made a numpy array per row, +150 MB for a 50k-row
    slice of the scale bench's index). ``_list_column([0, 2, 2, 3], [7, 8, 9])`` is ``[[7, 8], [], [9]]``."""
    import pyarrow as pa

    lists = pa.LargeListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int64)),
                                          pa.array(np.asarray(values, dtype=np.uint32)))
    column = pl.from_arrow(lists)
    assert isinstance(column, pl.Series)
    return column


def sketch_frame(ids: pl.Series, sk: Sketch) -> pl.DataFrame:
    """A sketch as a frame (``id``, ``signature``, ``shingles``, ``has_shingles``), for a persisted index."""
    n, num_perm = sk.sig.shape
    return pl.DataFrame({
        "id": ids.cast(pl.String),
        "signature": _list_column(np.arange(0, n * num_perm + 1, num_perm), sk.sig.reshape(-1)),
        "shingles": _list_column(sk.offsets - sk.offsets[0], sk.shingles[sk.offsets[0] : sk.offsets[-1]]),
        "has_shingles": sk.has_shingles,
    })


def frame_sketch(frame: pl.DataFrame, num_perm: int) -> Sketch:
    """The inverse of ``sketch_frame``."""
    n = frame.height
    sig = frame["signature"].explode().to_numpy().astype(np.uint32).reshape(n, num_perm) if n else \
        np.zeros((0, num_perm), dtype=np.uint32)
    column = frame["shingles"].cast(pl.List(pl.UInt32))
    lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
    shingles = column.explode().drop_nulls().to_numpy().astype(np.uint32)
    return Sketch(sig, np.r_[0, np.cumsum(lengths)].astype(np.int64), shingles,
                  frame["has_shingles"].to_numpy().astype(bool))


SPILL_BLOCK = 1 << 20
"""Shingle hashes read back from the spill file at a time (4 MiB) when the candidates' sets are gathered."""


class EdgeBuilder:
    """``near_duplicate_edges`` fed a slice of texts at a time (``add_texts``, in row order; ``n_texts`` in all),
    then ``link``: what a streamed step keeps of its rows between its passes, never the texts. In memory: each row's
    band keys and shingle count. The shingle sets go to an unlinked temporary file as they come; ``link`` reads back
    only those of rows that share a bucket with another row (``minhash_kernel.candidates``: the only rows it may
    compare), so the sets of the rows that can have no duplicate never occupy memory."""

    def __init__(self, params: MinhashParams, n_texts: int, n_new: int | None = None,
                 earlier: Sketch | None = None) -> None:
        self.params = params
        self.b, self.r = optimal_bands(params.threshold, params.num_perm, params.min_recall if params.verify else None)
        self.n_texts = n_texts
        self.n = n = n_texts + (len(earlier) if earlier is not None else 0)
        self.n_new = n if n_new is None else n_new
        self.earlier = earlier
        # With verification a band key needs 32 bits only: two rows whose different bands fold to one key are
        # compared and rejected like any dissimilar bucket-mates. Without it a collision would be an edge: 64 bits.
        self.keys = np.empty((n, self.b), dtype=np.uint32 if params.verify else np.uint64)
        self.lengths = np.zeros(n, dtype=np.uint32)  # unique shingles per row; 0: no tokens, kept out of LSH
        self.added = 0
        self._spill: BinaryIO | None = None

    def _add(self, start: int, sig: np.ndarray, off: np.ndarray, sh: np.ndarray) -> None:
        full = minhash_kernel.band_keys(sig, self.b, self.r) if minhash_kernel.available() else \
            band_keys(sig, self.b, self.r)
        self.keys[start : start + len(sig)] = full ^ (full >> np.uint64(32)) if self.params.verify else full
        self.lengths[start : start + len(sig)] = np.diff(off)
        if self.params.verify and start < self.n_texts:  # earlier rows' sets stay in their sketch
            if self._spill is None:
                # Unlinked at once (no name to clean up after a crash); closed in ``link``.
                self._spill = tempfile.TemporaryFile(prefix="gristmill-minhash-")  # noqa: SIM115
            self._spill.write(memoryview(np.ascontiguousarray(sh, dtype=np.uint32)))

    def add_texts(self, texts: pl.Series) -> None:
        """The next ``len(texts)`` rows."""
        if self.added + len(texts) > self.n_texts:
            raise ValueError(f"more than the {self.n_texts} texts announced")
        for start, sig, off, sh, _ in _sketch_batches(texts, self.params):
            self._add(self.added + start, sig, off, sh)
        self.added += len(texts)

    def _gather(self, keep: np.ndarray) -> np.ndarray:
        """The shingle sets of the rows ``keep`` marks, in row order: new rows' read back from the spill file and
        earlier rows' taken from their sketch, ``SPILL_BLOCK`` hashes at a time (a mask of one byte a hash)."""
        out = np.empty(int(self.lengths[keep].sum()), dtype=np.uint32)
        at = 0
        spill, e = self._spill, self.earlier
        for lo, hi in ((0, self.n_texts), (self.n_texts, self.n)):
            lengths = self.lengths[lo:hi]
            if not keep[lo:hi].any():
                continue
            if lo == 0:
                pos = np.zeros(hi + 1, dtype=np.int64)
                np.cumsum(lengths, out=pos[1:], dtype=np.int64)
            else:
                assert e is not None
                pos = e.offsets
            r0 = 0
            while r0 < hi - lo:
                # Rows r0..r1 - 1: at most SPILL_BLOCK hashes (or one row's, if longer).
                r1 = r0 + max(1, int(np.searchsorted(pos[r0 + 1 : hi - lo + 1], pos[r0] + SPILL_BLOCK, side="right")))
                if keep[lo + r0 : lo + r1].any():
                    first, last = int(pos[r0]), int(pos[r1])
                    if lo == 0:
                        assert spill is not None
                        spill.seek(first * 4)
                        block = np.fromfile(spill, dtype=np.uint32, count=last - first)
                    else:
                        assert e is not None
                        block = e.shingles[first:last]
                    mask = np.repeat(keep[lo + r0 : lo + r1], lengths[r0:r1])
                    k = int(np.count_nonzero(mask))
                    np.compress(mask, block, out=out[at : at + k])
                    at += k
                r0 = r1
        return out

    def link(self) -> NearDuplicates:
        if self.added != self.n_texts:
            raise ValueError(f"{self.added} texts added of the {self.n_texts} announced")
        e = self.earlier
        if e is not None:
            self._add(self.n_texts, e.sig, e.offsets, e.shingles)
        live = self.lengths > 0  # empty texts share the all-max signature: keep them out of LSH
        if self.params.verify:
            docs = np.flatnonzero(minhash_kernel.candidates(self.keys, None if live.all() else live))
        else:
            docs = np.flatnonzero(live)
        del live
        # A copy of the compared rows' keys only when rows are left out (in a heavily duplicated corpus every row is
        # a candidate: no second copy of every key then).
        keys = self.keys if len(docs) == self.n else self.keys[docs]
        self.keys = np.empty(0)
        offsets = np.zeros(self.n + 1, dtype=np.int64)
        shingles = np.zeros(0, dtype=np.uint32)
        if self.params.verify:
            keep = np.zeros(self.n, dtype=bool)
            keep[docs] = True
            shingles = self._gather(keep)
            if self._spill is not None:
                self._spill.close()
                self._spill = None
            self.lengths[~keep] = 0  # rows left out have no set among the gathered ones
            del keep
            np.cumsum(self.lengths, out=offsets[1:], dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.uint32)
        edge_a, edge_b, counts, labels = minhash_kernel.link(
            keys, docs, offsets, shingles, self.n, threshold=self.params.threshold, verify=self.params.verify,
            n_new=self.n_new,
        )
        return NearDuplicates(edge_a, edge_b, self.b, self.r, counts, labels)


def near_duplicate_edges(texts: pl.Series, params: MinhashParams, n_new: int | None = None,
                         earlier: Sketch | None = None) -> NearDuplicates:
    """Duplicate clusters of ``texts`` (and of ``earlier``'s rows, which follow them) as accepted edges. Rows from
    ``n_new`` on are earlier rows, never compared together.

    Memory: ``batch_docs`` token lists, plus per row its band keys (4 bytes a band; 8 without ``verify``), plus the
    shingle sets of the rows that share a bucket (the others' go to a temporary file only); full signatures live
    for one batch.
    """
    builder = EdgeBuilder(params, len(texts), n_new, earlier)
    builder.add_texts(texts)
    return builder.link()


class MinhashDedup(TwoPass):
    """``dedup_minhash`` in two passes: the first sketches the texts a slice at a time into an ``EdgeBuilder`` and
    keeps each row's id and preference rank, then links the clusters; the second marks and splits each slice."""

    columns = ("id", "text", "meta")

    def __init__(self, params: MinhashParams, schema: pl.Schema, rows: int, earlier_ids: pl.Series | None = None,
                 earlier_sketch: Sketch | None = None, hashed: int = 0, extra_stats: dict[str, Any] | None = None
                 ) -> None:
        require(pl.DataFrame(schema=schema), ["id", "text"], "dedup_minhash")
        self.n = rows
        self.earlier_ids = earlier_ids
        self.hashed = hashed
        self.builder = EdgeBuilder(params, rows, n_new=rows, earlier=earlier_sketch)
        self._ids: list[pl.Series] = []
        self._ranks: list[np.ndarray] = []
        self.extra_stats = extra_stats or {}  # added to the step's stats (how the earlier rows' sketches were found)

    def scan(self, part: pl.DataFrame) -> None:
        self.builder.add_texts(part["text"].cast(pl.String).fill_null(""))
        self._ranks.append(preference_rank(part, "quality"))
        self._ids.append(part["id"].cast(pl.String))

    def decide(self) -> None:
        n = self.n
        rank = np.concatenate(self._ranks) if self._ranks else np.zeros(0)
        ids = pl.concat(self._ids) if self._ids else pl.Series("id", [], dtype=pl.String)
        self._ids, self._ranks = [], []
        if self.earlier_ids is not None:
            rank = np.concatenate([rank, np.full(len(self.earlier_ids), -np.inf)])
            ids = pl.concat([ids, self.earlier_ids])
        found = self.builder.link()
        total = len(ids)
        assert found.labels is not None
        rep = representatives(found.labels, rank)
        sizes = np.bincount(rep, minlength=total)
        rep, sizes_new = rep[:n], sizes[rep[:n]]
        is_dup = rep != np.arange(n)
        # Columns built in polars, not as Python lists: no Python object per row.
        marks = pl.DataFrame({"rep": ids.gather(rep), "multi": sizes_new > 1, "dup": is_dup,
                              "earlier": is_dup & (rep >= n)})
        self.marks = marks.select(
            cluster_id=pl.when("multi").then("rep"),
            duplicate_of=pl.when("dup").then("rep"),
            reason=pl.when("earlier").then(pl.lit("near_duplicate_of_earlier"))
            .when("dup").then(pl.lit("near_duplicate")),
        )
        self.stats = {
            "clusters": int(len(np.unique(rep[sizes_new > 1]))),
            **found.counts,
            "earlier_rows": total - n,
            "earlier_rows_hashed": self.hashed,
            "lsh_bands": found.bands,
            "lsh_rows": found.rows,
        }

    def apply(self, part: pl.DataFrame, start: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        marks = self.marks.slice(start, part.height)
        out = with_meta(part, cluster_id=marks["cluster_id"], duplicate_of=marks["duplicate_of"])
        return split(out, marks["reason"])

    def finish(self) -> tuple[dict[str, Any], None, None]:
        return self.stats | self.extra_stats, None, None


def earlier_rows(earlier: pl.DataFrame | None, earlier_sketch: Sketch | None, params: MinhashParams
                 ) -> tuple[pl.Series | None, Sketch | None, int]:
    """The earlier rows' ids and sketch (hashed here from their text unless ``earlier_sketch`` is given) and how
    many were hashed; ``(None, None, 0)`` without earlier rows."""
    if earlier is None or not earlier.height:
        return None, None, 0
    hashed = 0
    if earlier_sketch is None:
        earlier_sketch = sketch(earlier["text"], params)
        hashed = earlier.height
    if len(earlier_sketch) != earlier.height:
        raise ValueError(f"earlier_sketch has {len(earlier_sketch)} rows for {earlier.height} earlier rows")
    return earlier["id"].cast(pl.String), earlier_sketch, hashed


def dedup_minhash(frame: pl.DataFrame, params: MinhashParams, *, earlier: pl.DataFrame | None = None,
                  earlier_sketch: Sketch | None = None) -> StepResult:
    """Drop near duplicates within ``frame`` (needs ``id`` and ``text``) and of ``earlier`` rows (sets curated
    before: ``id`` and ``text``, or only ``id`` with ``earlier_sketch``, their persisted sketch row for row).

    Earlier rows always win a cluster: a new row that near-duplicates one is dropped with reason
    ``near_duplicate_of_earlier`` and ``meta.duplicate_of`` = that row's id; earlier rows are never dropped.
    Stats count the earlier rows hashed here (``earlier_rows_hashed``; 0 when their sketch was given).
    """
    ids, sk, hashed = earlier_rows(earlier, earlier_sketch, params)
    return run_two_pass(MinhashDedup(params, frame.schema, frame.height, ids, sk, hashed), frame)
