"""Fused MinHash kernels (C, else numba): sketching and clustering without enumerating candidate pairs.

``sketch``: one pass over each document's tokens, parallel over documents: token hashes -> n-gram hashes ->
fmix32 -> affine32 permutations -> minima (the signature), and the document's sorted unique 32-bit shingle hashes
(kept for exact Jaccard). The signature equals ``signatures(*hashed_shingles(...))`` (the tests check it).

``link``: clusters from LSH band keys in one streaming pass, band by band. Within a band, documents with equal keys
form a bucket; each member is compared only with the bucket's *leaders* (its first ``MAX_LEADERS`` members, then
unmatched members replacing the oldest), and not at all with a leader already in its component (union-find). A
comparison is decided by exact Jaccard of the shingle sets (a merge of two sorted arrays that stops as soon as the
threshold is out of reach). A pair once rejected is remembered (a bounded direct-mapped table) and not compared
again in a later band, and a member makes at most ``MAX_COMPARE`` new comparisons per bucket (leaders past that
wait for a later band, where the pairs already rejected no longer count): a fragmented cluster of k documents
costs O(k x bands x MAX_COMPARE) comparisons, not O(k x bands x MAX_LEADERS). Work per band is O(bucket size x
leaders), never O(bucket size**2) pairs, and memory is the band keys and shingle sets of the documents given (only
those in some bucket of two or more need be: ``candidates``), the table (<= 8 MiB) and one accepted edge per merge.
Every accepted edge is checked, so precision does not depend on these bounds; recall does, a little
(bench/RESULTS.md).

Worked example (threshold 0.5, one band): docs 0, 1, 2, 3 share a bucket; J(0,1) = 0.9, J(0,2) = 0.2,
J(1,2) = 0.6 and doc 3 is a copy of doc 0. Doc 1 matches 0 (edge 0-1); 2 fails against 0, then matches 1 (edge
1-2); 3 matches 0 (edge 0-3) and skips 1 and 2, already in its cluster -> one cluster {0, 1, 2, 3} after 4
comparisons instead of all 6 pairs.

Backends, in order: the same kernels in C (``minhash_native``: compiled on first use with the system C compiler,
about 1 MB resident), numba (when no C compiler works; ~130 MB resident once a kernel is loaded), plain Python
(correct, slow). All three give the same signatures, edges, counters and labels (the tests compare them).
``GRISTMILL_MINHASH_KERNEL=numba`` or ``=python`` picks a fallback explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator

import numpy as np

# numba (the fallback when the C kernels cannot be built) is imported on the first kernel call, not with this
# module: every gristmill process imports the step registry, and numba costs ~76 MB resident at import (~130 MB
# once a kernel is loaded). ``prange`` is ``range``
# until then (the plain-Python fallback); ``_compile`` rebinds it and the kernels.
prange = range
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None

MAX_LEADERS = 64
"""Leaders kept per bucket: bounds the comparisons of a bucket of mutually dissimilar documents."""
MAX_COMPARE = 8
"""New comparisons per member and bucket (pairs rejected in an earlier band are skipped and do not count)."""
REJECT_TABLE_BITS = 20
"""At most 2**20 slots (8 MiB) in the table of rejected pairs (a smaller table only repeats some comparisons)."""


def _sketch(offsets, tok, ngram, a, b, sig, win_off, win, uniq):  # type: ignore[no-untyped-def]
    fold = np.uint64(0x100000001B3)
    mask = np.uint64(0xFFFFFFFF)
    c1 = np.uint64(0x85EBCA6B)
    c2 = np.uint64(0xC2B2AE35)
    num_perm = a.shape[0]
    for d in prange(offsets.shape[0] - 1):
        start = offsets[d]
        length = offsets[d + 1] - start
        if length == 0:
            continue
        width = ngram if length >= ngram else length
        windows = length - width + 1
        w0 = win_off[d]
        for i in range(windows):
            h = np.uint64(0)
            for k in range(width):
                h = (h * fold) ^ tok[start + i + k]
            h32 = (h ^ (h >> np.uint64(32))) & mask
            win[w0 + i] = np.uint32(h32)
            x = h32 ^ (h32 >> np.uint64(16))
            x = (x * c1) & mask
            x = x ^ (x >> np.uint64(13))
            x = (x * c2) & mask
            x = x ^ (x >> np.uint64(16))
            for p in range(num_perm):
                v = np.uint32((x * a[p] + b[p]) & mask)
                if v < sig[d, p]:
                    sig[d, p] = v
        part = np.sort(win[w0 : w0 + windows])
        u = 0
        for i in range(windows):
            if i == 0 or part[i] != part[i - 1]:
                win[w0 + u] = part[i]
                u += 1
        uniq[d] = u


def _compact(win_off, win, uniq_off, out):  # type: ignore[no-untyped-def]
    for d in prange(uniq_off.shape[0] - 1):
        n = uniq_off[d + 1] - uniq_off[d]
        out[uniq_off[d] : uniq_off[d] + n] = win[win_off[d] : win_off[d] + n]


def _band_keys(sig, r, keys):  # type: ignore[no-untyped-def]
    fold = np.uint64(0x100000001B3)
    for d in prange(sig.shape[0]):
        for j in range(keys.shape[1]):
            h = np.uint64(0)
            for i in range(r):
                h = (h * fold) ^ np.uint64(sig[d, j * r + i])
            keys[d, j] = h


def _find(parent, x):  # type: ignore[no-untyped-def]
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression keeps later finds O(1)
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


def _similar(m, o, sh_off, sh, threshold):  # type: ignore[no-untyped-def]
    i, i_end = sh_off[m], sh_off[m + 1]
    j, j_end = sh_off[o], sh_off[o + 1]
    sizes = (i_end - i) + (j_end - j)
    inter = 0
    while i < i_end and j < j_end:
        if sh[i] == sh[j]:
            inter += 1
            i += 1
            j += 1
        else:
            if sh[i] < sh[j]:
                i += 1
            else:
                j += 1
            # Stop once even every remaining shingle matching would leave J under the threshold (the test below
            # grows with the intersection): most compared pairs in fragmented clusters are rejected.
            best = inter + min(i_end - i, j_end - j)
            if best < threshold * (sizes - best):
                return False
    union = sizes - inter
    return union == 0 or inter >= threshold * union


def _link(band, members, sh_off, sh, threshold, n_new, verify, max_leaders, max_compare, parent, edge_a, edge_b,
          counts, rejected):  # type: ignore[no-untyped-def]
    # One band: ``band`` its keys sorted, ``members`` the rows in that order (stable: by row within a key).
    # counts: [checked, exact, skipped_joined, edges, skipped_rejected, skipped_budget]
    # rejected: a direct-mapped table of rejected pairs (pair + 1; a newer rejection evicts an older one)
    shift = np.uint64(64 - int(np.log2(rejected.shape[0])))
    n = members.shape[0]
    leaders = np.empty(max_leaders, dtype=np.int64)
    s = 0
    while s < n:
        e = s + 1
        key = band[s]
        while e < n and band[e] == key:
            e += 1
        if e - s > 1:
            n_lead = 0
            ring = 0
            uniform = True  # every leader joined leaders[0]'s cluster: one find settles a member of it
            for idx in range(s, e):
                m = members[idx]
                if n_lead > 0 and uniform and _find(parent, m) == _find(parent, leaders[0]):
                    counts[2] += n_lead
                    matched = True
                else:
                    matched = False
                    tried = 0
                    for li in range(n_lead):
                        o = leaders[li]
                        rm = _find(parent, m)
                        ro = _find(parent, o)
                        if rm == ro:
                            counts[2] += 1
                            matched = True
                            continue
                        if m >= n_new and o >= n_new:  # two earlier rows: not this run's business
                            continue
                        # The same pair meets again in most bands of a fragmented cluster: a pair rejected
                        # before is rejected again (the comparison is deterministic), so remember rejections.
                        pair = (np.uint64(min(m, o)) << np.uint64(32)) | np.uint64(max(m, o))
                        slot = (pair * np.uint64(0x9E3779B97F4A7C15)) >> shift
                        if rejected[slot] == pair + np.uint64(1):
                            counts[4] += 1
                            continue
                        if tried == max_compare:  # the rest of the leaders wait for a later band
                            counts[5] += 1
                            break
                        tried += 1
                        counts[0] += 1
                        if verify:
                            counts[1] += 1
                        if not verify or _similar(m, o, sh_off, sh, threshold):
                            parent[max(rm, ro)] = min(rm, ro)
                            edge_a[counts[3]] = o
                            edge_b[counts[3]] = m
                            counts[3] += 1
                            matched = True
                        else:
                            rejected[slot] = pair + np.uint64(1)  # 0 marks an empty slot
                    if n_lead > 0 and _find(parent, m) != _find(parent, leaders[0]):
                        uniform = False
                # Members of a cluster stay leaders too (a later member may match this one and not the first);
                # when full, unmatched members replace the oldest.
                if n_lead < max_leaders:
                    leaders[n_lead] = m
                    n_lead += 1
                elif not matched:
                    leaders[ring % max_leaders] = m
                    ring += 1
        s = e


def _roots(parent):  # type: ignore[no-untyped-def]
    for x in range(parent.shape[0]):  # every row points at its root, the lowest row of its cluster
        parent[x] = _find(parent, x)


# The plain-Python fallbacks until ``_compile`` swaps in the compiled kernels.
_sketch_c, _compact_c, _band_keys_c, _link_c, _roots_c = _sketch, _compact, _band_keys, _link, _roots


def _native():  # type: ignore[no-untyped-def]
    from gristmill.curation import minhash_native

    return minhash_native.load()


def backend() -> str:
    """The backend the kernels run on: ``native`` (C), ``numba`` or ``python``."""
    if _native() is not None:
        return "native"
    if _HAVE_NUMBA and os.environ.get("GRISTMILL_MINHASH_KERNEL", "") != "python":
        return "numba"
    return "python"


def available() -> bool:
    """Whether a compiled backend (C or numba) runs the kernels."""
    return backend() != "python"


def _threads(n_docs: int) -> int:
    # Documents of one batch are split between threads: not worth a thread below a few hundred documents.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, n_docs // 256))


_compiled = False


def _compile() -> None:
    """Import numba and wrap the kernels (from its on-disk cache after the first run), before the first call.

    numba's CPU target imports ``numba.np.arraymath`` on first use, which checks for BLAS by importing
    ``scipy.linalg`` (~27 MB of BLAS/LAPACK libraries resident for the rest of the process). These kernels use no
    BLAS, so ``scipy.linalg`` is hidden from that one probe (numba then uses its own inner product for ``np.dot`` on
    1-d arrays, the only thing the probe decides); a ``scipy.linalg`` already imported is left alone, and later
    imports of it work as usual.
    """
    global _compiled, prange, _find, _similar, _sketch_c, _compact_c, _band_keys_c, _link_c, _roots_c
    if _compiled or backend() != "numba":
        return
    hide = "scipy.linalg" not in sys.modules and "numba.np.arraymath" not in sys.modules
    if hide:
        sys.modules["scipy.linalg"] = None  # type: ignore[assignment]
    try:
        import numba
        import numba.np.arraymath  # noqa: F401  (the probe runs at its import)
    finally:
        if hide and sys.modules.get("scipy.linalg", 0) is None:
            del sys.modules["scipy.linalg"]
    njit = numba.njit
    # Kernels resolve ``prange``, ``_find`` and ``_similar`` as module globals when numba compiles them.
    prange = numba.prange
    _find = njit(cache=True, nogil=True)(_find)
    _similar = njit(cache=True, nogil=True)(_similar)
    _sketch_c = njit(cache=True, parallel=True, nogil=True)(_sketch)
    _compact_c = njit(cache=True, parallel=True, nogil=True)(_compact)
    _band_keys_c = njit(cache=True, parallel=True, nogil=True)(_band_keys)
    _link_c = njit(cache=True, nogil=True)(_link)
    _roots_c = njit(cache=True, nogil=True)(_roots)
    _compiled = True


def sketch(
    offsets: np.ndarray, tok: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures ``(n_docs, num_perm)`` uint32 and shingle sets as CSR: ``(sig, sh_offsets, sh_hashes)``.

    Input is ``token_hashes`` output. ``sh_hashes[sh_offsets[d]:sh_offsets[d+1]]`` are document d's unique 32-bit
    shingle hashes, sorted (what ``hashed_shingles`` returns for it).
    """
    native = _native()
    _compile()
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    windows = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    win_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(windows, out=win_off[1:])
    sig = np.full((n, len(a)), 0xFFFFFFFF, dtype=np.uint32)
    win = np.zeros(int(win_off[-1]), dtype=np.uint32)
    uniq = np.zeros(n, dtype=np.int64)
    if native is not None:
        native.sketch(offsets, tok, ngram, a, b, sig, win_off, win, uniq, _threads(n))
    else:
        _sketch_c(offsets, tok, np.int64(ngram), a.astype(np.uint64), b.astype(np.uint64), sig, win_off, win, uniq)
    sh_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(uniq, out=sh_off[1:])
    sh = np.empty(int(sh_off[-1]), dtype=np.uint32)
    if native is not None:
        native.compact(win_off, win, sh_off, sh)
    else:
        _compact_c(win_off, win, sh_off, sh)
    return sig, sh_off, sh


def band_keys(sig: np.ndarray, b: int, r: int) -> np.ndarray:
    """``lsh.band_keys`` (same keys, a test checks it) in one pass over each signature row."""
    native = _native()
    _compile()
    keys = np.empty((sig.shape[0], b), dtype=np.uint64)
    if native is not None:
        native.band_keys(np.ascontiguousarray(sig, dtype=np.uint32), r, keys)
    else:
        _band_keys_c(np.ascontiguousarray(sig), np.int64(r), keys)
    return keys


def signatures_from_tokens(
    offsets: np.ndarray, tok: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """``(n_docs, num_perm)`` uint32 signatures from ``token_hashes`` output and permutation parameters."""
    return sketch(offsets, tok, ngram, a, b)[0]


def _packed_bands(keys: np.ndarray, keep: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Each band's 32-bit keys and positions packed as ``key << 32 | position``, sorted: a band's buckets in key
    order, members by position within a bucket; only the positions ``keep`` (a mask) marks, if given.

    A 32-bit key and the position in one uint64 sort in one SIMD sort (~7x numpy's stable argsort, itself ~10x
    numba's mergesort), and the position in the low bits keeps the order stable.
    """
    native = _native()
    keys = np.ascontiguousarray(keys, dtype=np.uint32)
    both = np.empty(keys.shape[0], dtype=np.uint64)
    position = None if native is not None else np.arange(keys.shape[0], dtype=np.uint64)
    for j in range(keys.shape[1]):
        if native is not None:
            native.pack_band(keys, j, both)
        else:
            np.left_shift(keys[:, j], np.uint64(32), out=both, dtype=np.uint64)
            both |= position
        part = both if keep is None else both[keep]
        part.sort()
        yield part


def candidates(keys: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Which documents share a band key with another one in some band: the only ones ``link`` may compare.

    ``keys``: ``(docs, bands)`` uint32; ``keep``: a mask of the documents that take part (others are neither
    candidates nor make one). ``candidates(np.array([[1, 5], [2, 5], [3, 6]], np.uint32))`` -> ``[True, True,
    False]`` (documents 0 and 1 share band 1's key 5; document 2 shares nothing).
    """
    found = np.zeros(keys.shape[0], dtype=bool)
    if keys.shape[0] < 2:
        return found
    for both in _packed_bands(keys, keep):
        key = both >> np.uint64(32)
        same = key[1:] == key[:-1]  # entry i + 1 has entry i's key: both are in a bucket of two or more
        del key
        position = both & np.uint64(0xFFFFFFFF)
        found[position[1:][same]] = True
        found[position[:-1][same]] = True
    return found


def link(
    keys: np.ndarray, docs: np.ndarray, sh_off: np.ndarray, sh: np.ndarray, n_total: int, *,
    threshold: float, verify: bool, n_new: int, max_leaders: int = MAX_LEADERS, max_compare: int = MAX_COMPARE,
) -> tuple[np.ndarray, np.ndarray, dict[str, int], np.ndarray]:
    """Accepted edges ``(a, b)`` (a spanning forest of the duplicate clusters), counters and each row's cluster
    label (the cluster's lowest row).

    ``keys``: ``(len(docs), bands)`` band keys of the documents ``docs`` (global rows < ``n_total``, ascending);
    ``sh_off``, ``sh`` (each row's sorted shingle hashes, for the exact Jaccard) are indexed by global row. Rows
    >= ``n_new`` are earlier rows: never compared together. A document in no bucket of two or more is never
    compared, so leaving it out of ``docs`` (``candidates``) changes nothing: the same edges, counters and labels.
    """
    if max_leaders < 1 or max_compare < 0:
        raise ValueError(f"max_leaders must be >= 1 and max_compare >= 0, got {max_leaders}, {max_compare}")
    native = _native()
    _compile()
    parent = np.arange(n_total, dtype=np.int64)
    # Each edge joins two clusters of ``docs``: at most len(docs) - 1 of them.
    edge_a = np.empty(max(len(docs) - 1, 0), dtype=np.int64)
    edge_b = np.empty(max(len(docs) - 1, 0), dtype=np.int64)
    counts = np.zeros(6, dtype=np.int64)
    # 8 bytes a slot, at most 2**20 slots (8 MiB): the table only saves work, a lost entry costs a comparison.
    rejected = np.zeros(1 << int(np.clip(np.ceil(np.log2(max(n_total, 1) * 8)), 10, REJECT_TABLE_BITS)), dtype=np.uint64)
    docs = docs.astype(np.int64, copy=False)
    # Sorted keys and members in bucket order, one band at a time: the pass reads both sequentially (random reads
    # of a row's key cost more than the comparisons at 10x the clustered corpus).
    if keys.dtype.itemsize <= 4:
        for both in _packed_bands(keys):
            if native is not None:  # the C kernel splits (key << 32 | position) and reads the rows by position
                native.link(both, docs, sh_off, sh, threshold, n_new, verify, max_leaders, max_compare, parent,
                            edge_a, edge_b, counts, rejected, packed=True)
            else:
                band, order = both >> np.uint64(32), (both & np.uint64(0xFFFFFFFF)).astype(np.int64)
                _link_c(band, docs[order], sh_off, sh, float(threshold), np.int64(n_new), verify, max_leaders,
                        max_compare, parent, edge_a, edge_b, counts, rejected)
    else:
        for j in range(keys.shape[1]):
            order = np.argsort(keys[:, j], kind="stable")
            band = keys[order, j]
            if native is not None:
                native.link(band, docs[order], sh_off, sh, threshold, n_new, verify, max_leaders, max_compare,
                            parent, edge_a, edge_b, counts, rejected)
            else:
                _link_c(band, docs[order], sh_off, sh, float(threshold), np.int64(n_new), verify, max_leaders,
                        max_compare, parent, edge_a, edge_b, counts, rejected)
    if native is not None:
        native.roots(parent)
    else:
        _roots_c(parent)
    names = ("pairs_compared", "exact_checks", "skipped_same_cluster", "edges", "skipped_rejected", "skipped_budget")
    return edge_a[: counts[3]], edge_b[: counts[3]], dict(zip(names, map(int, counts), strict=True)), parent
