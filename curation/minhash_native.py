"""The MinHash kernels of ``minhash_kernel`` in C, compiled on first use with the system C compiler and loaded
with ctypes (about 1 MB resident, where numba costs ~130 MB once a kernel is loaded).

The C functions are line-for-line ports of ``minhash_kernel``'s Python kernels (``_sketch``, ``_band_keys``,
``_link``, ``_roots``): same arithmetic, same order of decisions, so the same signatures, edges, counters and
labels (the tests compare them with the Python kernels). The shared library is built once per source text into
``cache_root()/kernels`` (an atomic rename, so concurrent processes may race harmlessly) and reused afterwards;
``load()`` returns None when no compiler works, and ``minhash_kernel`` falls back to numba.

Worked example: ``load().sketch`` on one document of tokens ``[t0, t1, t2]`` with ``ngram=2`` folds two windows
``t0 t1`` and ``t1 t2``, mixes each with fmix32 and keeps, per permutation ``(a, b)``, the least ``a * x + b mod
2**32``: the same row that ``minhash.signatures`` computes from the two 32-bit shingle hashes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

#define FOLD 0x100000001B3ULL

/* The window loop is compiled for several instruction sets and the best one is picked at load time (no
   -march=native: the cached library may be shared between machines). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(MH_NO_CLONES)
#define MH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MH_CLONES
#endif

static void sort_u32(uint32_t *x, uint32_t *tmp, int64_t n) {
    if (n <= 48) {
        for (int64_t i = 1; i < n; i++) {
            uint32_t v = x[i];
            int64_t j = i - 1;
            while (j >= 0 && x[j] > v) { x[j + 1] = x[j]; j--; }
            x[j + 1] = v;
        }
        return;
    }
    uint32_t *src = x, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {  /* LSD radix: four stable passes end back in x */
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++) count[((src[i] >> shift) & 255) + 1]++;
        for (int k = 0; k < 256; k++) count[k + 1] += count[k];
        for (int64_t i = 0; i < n; i++) dst[count[(src[i] >> shift) & 255]++] = src[i];
        uint32_t *t = src; src = dst; dst = t;
    }
}

MH_CLONES
int64_t mh_sketch(const int64_t *offsets, const uint64_t *tok, int64_t ngram, const uint32_t *a,
                  const uint32_t *b, int64_t num_perm, uint32_t *sig, const int64_t *win_off, uint32_t *win,
                  int64_t *uniq, int64_t d0, int64_t d1) {
    int64_t cap = 0;
    uint32_t *tmp = NULL;
    for (int64_t d = d0; d < d1; d++) {
        int64_t start = offsets[d], length = offsets[d + 1] - start;
        uniq[d] = 0;
        if (length == 0) continue;
        int64_t width = length >= ngram ? ngram : length;
        int64_t windows = length - width + 1;
        uint32_t *w = win + win_off[d];
        uint32_t *row = sig + d * num_perm;
        for (int64_t i = 0; i < windows; i++) {
            uint64_t h = 0;
            for (int64_t k = 0; k < width; k++) h = (h * FOLD) ^ tok[start + i + k];
            uint32_t x = (uint32_t)(h ^ (h >> 32));
            w[i] = x;
            x ^= x >> 16; x *= 0x85EBCA6Bu; x ^= x >> 13; x *= 0xC2B2AE35u; x ^= x >> 16;
            for (int64_t p = 0; p < num_perm; p++) {
                uint32_t v = x * a[p] + b[p];
                row[p] = v < row[p] ? v : row[p];
            }
        }
        if (windows > cap) {
            free(tmp);
            cap = windows * 2;
            tmp = (uint32_t *)malloc(cap * sizeof(uint32_t));
            if (!tmp) return -1;
        }
        sort_u32(w, tmp, windows);
        int64_t u = 0;
        for (int64_t i = 0; i < windows; i++)
            if (i == 0 || w[i] != w[u - 1]) w[u++] = w[i];
        uniq[d] = u;
    }
    free(tmp);
    return 0;
}

void mh_compact(const int64_t *win_off, const uint32_t *win, const int64_t *uniq_off, uint32_t *out, int64_t n) {
    for (int64_t d = 0; d < n; d++) {
        int64_t k = uniq_off[d + 1] - uniq_off[d];
        const uint32_t *src = win + win_off[d];
        uint32_t *dst = out + uniq_off[d];
        for (int64_t i = 0; i < k; i++) dst[i] = src[i];
    }
}

void mh_band_keys(const uint32_t *sig, int64_t n, int64_t num_perm, int64_t bands, int64_t r, uint64_t *keys) {
    for (int64_t d = 0; d < n; d++) {
        const uint32_t *row = sig + d * num_perm;
        for (int64_t j = 0; j < bands; j++) {
            uint64_t h = 0;
            for (int64_t i = 0; i < r; i++) h = (h * FOLD) ^ (uint64_t)row[j * r + i];
            keys[d * bands + j] = h;
        }
    }
}

static int64_t find(int64_t *parent, int64_t x) {
    int64_t root = x;
    while (parent[root] != root) root = parent[root];
    while (parent[x] != root) {  /* path compression keeps later finds O(1) */
        int64_t nxt = parent[x];
        parent[x] = root;
        x = nxt;
    }
    return root;
}

static int similar(int64_t m, int64_t o, const int64_t *sh_off, const uint32_t *sh, double threshold) {
    int64_t i = sh_off[m], i_end = sh_off[m + 1], j = sh_off[o], j_end = sh_off[o + 1];
    int64_t sizes = (i_end - i) + (j_end - j), inter = 0;
    while (i < i_end && j < j_end) {
        if (sh[i] == sh[j]) {
            inter++; i++; j++;
        } else {
            if (sh[i] < sh[j]) i++; else j++;
            int64_t ri = i_end - i, rj = j_end - j;
            int64_t best = inter + (ri < rj ? ri : rj);
            if ((double)best < threshold * (double)(sizes - best)) return 0;
        }
    }
    int64_t uni = sizes - inter;
    return uni == 0 || (double)inter >= threshold * (double)uni;
}

/* One band's sorted entries: either ``band`` keys with ``members`` rows (``packed`` 0), or ``band`` holding
   (32-bit key << 32 | position) and ``members`` the rows by position (``packed`` 1): no per-band arrays of rows. */
#define KEY(i) (packed ? band[i] >> 32 : band[i])
#define MEMBER(i) (packed ? members[band[i] & 0xFFFFFFFFULL] : members[i])

int64_t mh_link(const uint64_t *band, const int64_t *members, int64_t packed, int64_t n, const int64_t *sh_off,
                const uint32_t *sh, double threshold, int64_t n_new, int64_t verify, int64_t max_leaders,
                int64_t max_compare, int64_t *parent, int64_t *edge_a, int64_t *edge_b, int64_t *counts,
                uint64_t *rejected, int64_t table_bits) {
    int shift = 64 - (int)table_bits;
    int64_t *leaders = (int64_t *)malloc((max_leaders > 0 ? max_leaders : 1) * sizeof(int64_t));
    if (!leaders) return -1;
    int64_t s = 0;
    while (s < n) {
        int64_t e = s + 1;
        uint64_t key = KEY(s);
        while (e < n && KEY(e) == key) e++;
        if (e - s > 1) {
            int64_t n_lead = 0, ring = 0;
            int uniform = 1;
            for (int64_t idx = s; idx < e; idx++) {
                int64_t m = MEMBER(idx);
                int matched;
                if (n_lead > 0 && uniform && find(parent, m) == find(parent, leaders[0])) {
                    counts[2] += n_lead;
                    matched = 1;
                } else {
                    matched = 0;
                    int64_t tried = 0;
                    for (int64_t li = 0; li < n_lead; li++) {
                        int64_t o = leaders[li];
                        int64_t rm = find(parent, m), ro = find(parent, o);
                        if (rm == ro) { counts[2]++; matched = 1; continue; }
                        if (m >= n_new && o >= n_new) continue;
                        uint64_t lo = (uint64_t)(m < o ? m : o), hi = (uint64_t)(m < o ? o : m);
                        uint64_t pair = (lo << 32) | hi;
                        uint64_t slot = (pair * 0x9E3779B97F4A7C15ULL) >> shift;
                        if (rejected[slot] == pair + 1) { counts[4]++; continue; }
                        if (tried == max_compare) { counts[5]++; break; }
                        tried++;
                        counts[0]++;
                        if (verify) counts[1]++;
                        if (!verify || similar(m, o, sh_off, sh, threshold)) {
                            parent[rm > ro ? rm : ro] = rm < ro ? rm : ro;
                            edge_a[counts[3]] = o;
                            edge_b[counts[3]] = m;
                            counts[3]++;
                            matched = 1;
                        } else {
                            rejected[slot] = pair + 1;
                        }
                    }
                    if (n_lead > 0 && find(parent, m) != find(parent, leaders[0])) uniform = 0;
                }
                if (n_lead < max_leaders) leaders[n_lead++] = m;
                else if (!matched) leaders[(ring++) % max_leaders] = m;
            }
        }
        s = e;
    }
    free(leaders);
    return 0;
}

void mh_pack_band(const uint32_t *keys, int64_t n, int64_t bands, int64_t j, uint64_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = ((uint64_t)keys[i * bands + j] << 32) | (uint64_t)i;
}

void mh_roots(int64_t *parent, int64_t n) {
    for (int64_t x = 0; x < n; x++) parent[x] = find(parent, x);
}
"""

_I64, _F64, _P = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
_SIGNATURES = {
    "mh_sketch": (_I64, [_P, _P, _I64, _P, _P, _I64, _P, _P, _P, _P, _I64, _I64]),
    "mh_compact": (None, [_P, _P, _P, _P, _I64]),
    "mh_band_keys": (None, [_P, _I64, _I64, _I64, _I64, _P]),
    "mh_link": (_I64, [_P, _P, _I64, _I64, _P, _P, _F64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _I64]),
    "mh_pack_band": (None, [_P, _I64, _I64, _I64, _P]),
    "mh_roots": (None, [_P, _I64]),
}


def _ptr(arr: np.ndarray) -> int:
    assert arr.flags.c_contiguous
    return arr.ctypes.data


class Native:
    """The compiled kernels; arguments are checked numpy arrays (see ``minhash_kernel`` for their meaning)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args

    def sketch(self, offsets: np.ndarray, tok: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray, sig: np.ndarray,
               win_off: np.ndarray, win: np.ndarray, uniq: np.ndarray, threads: int) -> None:
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        tok = np.ascontiguousarray(tok, dtype=np.uint64)
        a = np.ascontiguousarray(a, dtype=np.uint32)
        b = np.ascontiguousarray(b, dtype=np.uint32)
        n = len(offsets) - 1
        # Split the documents into ``threads`` ranges of about equal windows; ctypes releases the GIL in the call.
        cuts = np.searchsorted(win_off, np.linspace(0, win_off[-1], threads + 1)[1:-1]) if threads > 1 else []
        bounds = [0, *map(int, cuts), n]
        results: list[int] = []

        def part(d0: int, d1: int) -> None:
            results.append(self.lib.mh_sketch(_ptr(offsets), _ptr(tok), ngram, _ptr(a), _ptr(b), len(a), _ptr(sig),
                                              _ptr(win_off), _ptr(win), _ptr(uniq), d0, d1))

        workers = [threading.Thread(target=part, args=(d0, d1)) for d0, d1 in zip(bounds[1:-1], bounds[2:],
                                                                                   strict=True) if d1 > d0]
        for w in workers:
            w.start()
        part(bounds[0], bounds[1])
        for w in workers:
            w.join()
        if any(results):
            raise MemoryError("mh_sketch: out of memory")

    def compact(self, win_off: np.ndarray, win: np.ndarray, uniq_off: np.ndarray, out: np.ndarray) -> None:
        self.lib.mh_compact(_ptr(win_off), _ptr(win), _ptr(uniq_off), _ptr(out), len(uniq_off) - 1)

    def band_keys(self, sig: np.ndarray, r: int, keys: np.ndarray) -> None:
        self.lib.mh_band_keys(_ptr(sig), sig.shape[0], sig.shape[1], keys.shape[1], r, _ptr(keys))

    def pack_band(self, keys: np.ndarray, j: int, out: np.ndarray) -> None:
        """``out[i] = keys[i, j] << 32 | i`` for uint32 ``keys``: a band's keys and positions, to sort in place."""
        assert keys.dtype == np.uint32 and keys.flags.c_contiguous and out.dtype == np.uint64
        self.lib.mh_pack_band(_ptr(keys), keys.shape[0], keys.shape[1], j, _ptr(out))

    def link(self, band: np.ndarray, members: np.ndarray, sh_off: np.ndarray, sh: np.ndarray, threshold: float,
             n_new: int, verify: bool, max_leaders: int, max_compare: int, parent: np.ndarray, edge_a: np.ndarray,
             edge_b: np.ndarray, counts: np.ndarray, rejected: np.ndarray, packed: bool = False) -> None:
        """One band; ``packed``: ``band`` holds sorted ``key << 32 | position`` and ``members`` the rows by
        position (``pack_band``), else sorted keys and the rows in that order."""
        band = np.ascontiguousarray(band, dtype=np.uint64)
        members = np.ascontiguousarray(members, dtype=np.int64)
        sh_off = np.ascontiguousarray(sh_off, dtype=np.int64)
        sh = np.ascontiguousarray(sh, dtype=np.uint32)
        bits = int(rejected.shape[0]).bit_length() - 1
        assert 1 << bits == rejected.shape[0]
        rc = self.lib.mh_link(_ptr(band), _ptr(members), int(packed), len(band), _ptr(sh_off), _ptr(sh),
                              float(threshold), n_new, int(verify), max_leaders, max_compare, _ptr(parent),
                              _ptr(edge_a), _ptr(edge_b), _ptr(counts), _ptr(rejected), bits)
        if rc:
            raise MemoryError("mh_link: out of memory")

    def roots(self, parent: np.ndarray) -> None:
        self.lib.mh_roots(_ptr(parent), len(parent))


_lock = threading.Lock()
_loaded: Native | None = None
_tried = False


def _build(target: Path) -> bool:
    """Compile ``SOURCE`` into ``target``; False when no compiler works (missing, or no ``target_clones``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    cc = shlex.split(os.environ.get("CC", "cc"))
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "minhash.c"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        for extra in ([], ["-DMH_NO_CLONES"]):
            try:
                done = subprocess.run([*cc, "-O3", "-shared", "-fPIC", "-std=c99", *extra, "-o", str(out), str(src)],
                                      capture_output=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                return False
            if done.returncode == 0:
                os.replace(out, target)  # atomic: a concurrent process sees the old file or the whole new one
                return True
    return False


def load() -> Native | None:
    """The compiled kernels, built on the first call of any process on this cache (a second or so), else None."""
    global _loaded, _tried
    with _lock:
        if _tried:
            return _loaded
        _tried = True
        if os.environ.get("GRISTMILL_MINHASH_KERNEL", "") in ("numba", "python"):
            return None
        from gristmill.common.store import cache_root

        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
        # The machine type in the name: a cache folder shared by an x86-64 and an arm64 host keeps both builds.
        target = cache_root() / "kernels" / f"minhash-{platform.machine()}-{digest}.so"
        try:
            if not target.exists() and not _build(target):
                return None
            _loaded = Native(ctypes.CDLL(str(target)))
        except OSError:
            return None
        return _loaded
