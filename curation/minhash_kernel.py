"""Fused MinHash kernels (numba): sketching and clustering without enumerating candidate pairs.

``sketch``: one pass over each document's tokens, parallel over documents: token hashes -> n-gram hashes ->
fmix32 -> affine32 permutations -> minima (the signature), and the document's sorted unique 32-bit shingle hashes
(kept for exact Jaccard). The signature equals ``signatures(*hashed_shingles(...))`` (the tests check it).

``link``: clusters from LSH band keys in one streaming pass, band by band. Within a band, documents with equal keys
form a bucket; each member is compared only with the bucket's *leaders* (its first ``MAX_LEADERS`` members, then
unmatched members replacing the oldest), and not at all with a leader already in its component (union-find). A comparison is decided by signature agreement
when that is far from the threshold (binomial tails, see ``agreement_cuts``) and by exact Jaccard of the shingle
sets otherwise. Work per band is O(bucket size x leaders), never O(bucket size**2) pairs, and memory is the
signatures, the shingle sets and one accepted edge per merge (at most n - 1).

Worked example (threshold 0.5, one band): docs 0, 1, 2, 3 share a bucket; J(0,1) = 0.9, J(0,2) = 0.2,
J(1,2) = 0.6 and doc 3 is a copy of doc 0. Doc 1 matches 0 (edge 0-1); 2 fails against 0, then matches 1 (edge
1-2); 3 matches 0 (edge 0-3) and skips 1 and 2, already in its cluster -> one cluster {0, 1, 2, 3} after 4
comparisons instead of all 6 pairs.

Without numba the same functions run as plain Python (correct, slow).
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a declared dependency; this keeps the module importable
    njit = None
    prange = range

MAX_LEADERS = 64
"""Leaders kept per bucket: bounds the comparisons of a bucket of mutually dissimilar documents."""


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
                v = (x * a[p] + b[p]) & mask
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


def _band_orders(keys, orders):  # type: ignore[no-untyped-def]
    for j in prange(keys.shape[1]):
        orders[j] = np.argsort(keys[:, j], kind="mergesort").astype(np.int32)


def _find(parent, x):  # type: ignore[no-untyped-def]
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression keeps later finds O(1)
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


def _similar(m, o, sig, sh_off, sh, threshold, accept_at, reject_at, counts):  # type: ignore[no-untyped-def]
    agree = 0
    for p in range(sig.shape[1]):
        if sig[m, p] == sig[o, p]:
            agree += 1
    if agree >= accept_at:
        counts[2] += 1
        return True
    if agree <= reject_at:
        counts[3] += 1
        return False
    counts[1] += 1
    i, i_end = sh_off[m], sh_off[m + 1]
    j, j_end = sh_off[o], sh_off[o + 1]
    inter = 0
    while i < i_end and j < j_end:
        if sh[i] == sh[j]:
            inter += 1
            i += 1
            j += 1
        elif sh[i] < sh[j]:
            i += 1
        else:
            j += 1
    union = (sh_off[m + 1] - sh_off[m]) + (sh_off[o + 1] - sh_off[o]) - inter
    return union == 0 or inter >= threshold * union


def _link(keys, orders, docs, sig, sh_off, sh, threshold, accept_at, reject_at, n_new, verify, max_leaders,
          parent, edge_a, edge_b, counts):  # type: ignore[no-untyped-def]
    # counts: [checked, exact, shortcut_accept, shortcut_reject, skipped_joined, edges]
    n = docs.shape[0]
    leaders = np.empty(max_leaders, dtype=np.int64)
    for j in range(keys.shape[1]):
        order = orders[j]
        s = 0
        while s < n:
            e = s + 1
            key = keys[order[s], j]
            while e < n and keys[order[e], j] == key:
                e += 1
            if e - s > 1:
                n_lead = 0
                ring = 0
                uniform = True  # every leader joined leaders[0]'s cluster: one find settles a member of it
                for idx in range(s, e):
                    m = docs[order[idx]]
                    if n_lead > 0 and uniform and _find(parent, m) == _find(parent, leaders[0]):
                        counts[4] += n_lead
                        matched = True
                    else:
                        matched = False
                        for li in range(n_lead):
                            o = leaders[li]
                            rm = _find(parent, m)
                            ro = _find(parent, o)
                            if rm == ro:
                                counts[4] += 1
                                matched = True
                                continue
                            if m >= n_new and o >= n_new:  # two earlier rows: not this run's business
                                continue
                            counts[0] += 1
                            if not verify or _similar(m, o, sig, sh_off, sh, threshold, accept_at, reject_at,
                                                      counts):
                                parent[max(rm, ro)] = min(rm, ro)
                                edge_a[counts[5]] = o
                                edge_b[counts[5]] = m
                                counts[5] += 1
                                matched = True
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


if njit is not None:
    _sketch_c = njit(cache=True, parallel=True, nogil=True)(_sketch)
    _compact_c = njit(cache=True, parallel=True, nogil=True)(_compact)
    _band_orders_c = njit(cache=True, parallel=True, nogil=True)(_band_orders)
    _find = njit(cache=True, nogil=True)(_find)
    _similar = njit(cache=True, nogil=True)(_similar)
    _link_c = njit(cache=True, nogil=True)(_link)
else:  # pragma: no cover
    _sketch_c, _compact_c, _band_orders_c, _link_c = _sketch, _compact, _band_orders, _link


def available() -> bool:
    return njit is not None


def sketch(
    offsets: np.ndarray, tok: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures ``(n_docs, num_perm)`` uint32 and shingle sets as CSR: ``(sig, sh_offsets, sh_hashes)``.

    Input is ``token_hashes`` output. ``sh_hashes[sh_offsets[d]:sh_offsets[d+1]]`` are document d's unique 32-bit
    shingle hashes, sorted (what ``hashed_shingles`` returns for it).
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    windows = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    win_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(windows, out=win_off[1:])
    sig = np.full((n, len(a)), 0xFFFFFFFF, dtype=np.uint64)
    win = np.zeros(int(win_off[-1]), dtype=np.uint32)
    uniq = np.zeros(n, dtype=np.int64)
    _sketch_c(offsets, tok, np.int64(ngram), a.astype(np.uint64), b.astype(np.uint64), sig, win_off, win, uniq)
    sh_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(uniq, out=sh_off[1:])
    sh = np.empty(int(sh_off[-1]), dtype=np.uint32)
    _compact_c(win_off, win, sh_off, sh)
    return sig.astype(np.uint32), sh_off, sh


def signatures_from_tokens(
    offsets: np.ndarray, tok: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """``(n_docs, num_perm)`` uint32 signatures from ``token_hashes`` output and permutation parameters."""
    return sketch(offsets, tok, ngram, a, b)[0]


def agreement_cuts(threshold: float, num_perm: int, error: float = 1e-6) -> tuple[int, int]:
    """Signature agreements ``(accept_at, reject_at)`` that decide a pair without exact Jaccard.

    Agreements of a pair with Jaccard J are Binomial(num_perm, J). ``accept_at``: the fewest agreements that a pair
    at J = threshold (or below) reaches with probability <= ``error``; ``reject_at``: the most that a pair at
    J >= threshold falls to with probability <= ``error``. ``num_perm + 1`` / ``-1`` disable a side.
    ``agreement_cuts(0.8, 128) == (122, 78)``: accept >= 95% agreement, reject <= 61%, else compute exactly.
    """
    # Exact binomial tails in Python: importing scipy.stats for this would cost more memory than the signatures.
    pmf = [math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k) for k in range(num_perm + 1)]
    upper = np.cumsum(pmf[::-1])[::-1]  # P(X >= k)
    lower = np.cumsum(pmf)  # P(X <= k)
    ks = np.arange(num_perm + 1)
    accept = ks[upper <= error]
    reject = ks[lower <= error]
    return (int(accept[0]) if len(accept) else num_perm + 1), (int(reject[-1]) if len(reject) else -1)


def link(
    keys: np.ndarray, docs: np.ndarray, sig: np.ndarray, sh_off: np.ndarray, sh: np.ndarray, n_total: int, *,
    threshold: float, verify: bool, n_new: int, max_leaders: int = MAX_LEADERS,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Accepted edges ``(a, b)`` (a spanning forest of the duplicate clusters) and counters.

    ``keys``: ``(len(docs), bands)`` band keys of the documents ``docs`` (global rows < ``n_total``); ``sig``,
    ``sh_off``, ``sh`` are indexed by global row. Rows >= ``n_new`` are earlier rows: never compared together.
    """
    orders = np.empty((keys.shape[1], keys.shape[0]), dtype=np.int32)
    if keys.shape[0]:
        _band_orders_c(keys, orders)
    accept_at, reject_at = agreement_cuts(threshold, sig.shape[1])
    parent = np.arange(n_total, dtype=np.int64)
    edge_a = np.empty(max(n_total - 1, 0), dtype=np.int64)
    edge_b = np.empty(max(n_total - 1, 0), dtype=np.int64)
    counts = np.zeros(6, dtype=np.int64)
    _link_c(keys, orders, docs.astype(np.int64), sig, sh_off, sh, float(threshold), accept_at, reject_at,
            np.int64(n_new), verify, max_leaders, parent, edge_a, edge_b, counts)
    names = ("pairs_compared", "exact_checks", "signature_accepts", "signature_rejects", "skipped_same_cluster",
             "edges")
    return edge_a[: counts[5]], edge_b[: counts[5]], dict(zip(names, map(int, counts), strict=True))
