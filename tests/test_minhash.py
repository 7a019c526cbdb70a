from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gristmill.common.contract import StepResult
from gristmill.curation import minhash, minhash_kernel
from gristmill.curation.clusters import clusters, representatives
from gristmill.curation.lsh import band_keys
from gristmill.curation.minhash import (
    EdgeBuilder,
    MinhashParams,
    dedup_minhash,
    near_duplicate_edges,
    permutations,
    signatures,
    sketch,
)
from gristmill.curation.shingles import hashed_shingles, shingle_sets, token_hashes
from tests.conftest import make_frame

BASE = "the committee met on tuesday to review the budget for the new library and agreed to fund the project"


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def test_minhash_clusters_near_duplicates_and_keeps_first() -> None:
    texts = [BASE, BASE + " today", "completely different words about gardening tomatoes in the summer sun heat",
             BASE.replace("tuesday", "monday"), BASE + " with many more words appended that change it a lot more"]
    frame = make_frame(texts)
    result = dedup_minhash(frame, MinhashParams(threshold=0.7, ngram=3))
    assert isinstance(result, StepResult) and result.rows_in == 5
    result.check("dedup_minhash")
    kept, dropped, stats = result
    assert set(kept["id"]) == {"r0", "r2", "r4"}
    assert dropped["reason"].unique().to_list() == ["near_duplicate"]
    assert dropped["meta"].struct.field("duplicate_of").to_list() == ["r0", "r0"]
    assert kept.filter(pl.col("id") == "r0")["meta"].struct.field("cluster_id").to_list() == ["r0"]
    assert stats["clusters"] == 1 and stats["edges"] == 2 and stats["dropped_by_reason"] == {"near_duplicate": 2}


def test_minhash_accepts_a_bare_id_text_frame() -> None:
    frame = pl.DataFrame({"id": ["a", "b", "c"], "text": [BASE, BASE + " today", "nothing alike at all here"]})
    kept, dropped, stats = dedup_minhash(frame, MinhashParams(threshold=0.7, ngram=3))
    assert kept["id"].to_list() == ["a", "c"] and dropped["id"].to_list() == ["b"]
    assert dropped["meta"].struct.field("duplicate_of").to_list() == ["a"]
    assert kept["meta"].struct.field("cluster_id").to_list() == ["a", None]
    assert stats["rows_in"] == 3 and stats["kept"] == 2


def test_minhash_prefers_higher_quality_representative() -> None:
    frame = make_frame([BASE, BASE + " today"]).with_columns(
        pl.struct(pl.lit(1).alias("source_line"), pl.Series("quality_score", [0.1, 0.9])).alias("meta")
    )
    kept, dropped, _ = dedup_minhash(frame, MinhashParams(threshold=0.7, ngram=3))
    assert kept["id"].to_list() == ["r1"]
    assert dropped["meta"].struct.field("duplicate_of").to_list() == ["r1"]


def test_minhash_verification_rejects_false_candidates() -> None:
    # 16 permutations make LSH put dissimilar rows in one bucket; verification must keep them apart.
    words = BASE.split()
    rng = random.Random(0)
    texts = []
    for k in range(12):
        w = list(words)
        for i in rng.sample(range(len(w)), k):
            w[i] = f"zz{i}"
        texts.append(" ".join(w))
    frame = make_frame(texts)
    sets = shingle_sets(frame["text"], 2)
    verified = dedup_minhash(frame, MinhashParams(threshold=0.5, ngram=2, num_perm=16))
    loose = dedup_minhash(frame, MinhashParams(threshold=0.5, ngram=2, num_perm=16, verify=False))
    assert verified.stats["exact_checks"] > 0 and "signature_rejects" not in verified.stats
    assert loose.dropped.height >= verified.dropped.height
    index = {r: i for i, r in enumerate(frame["id"])}
    for row in verified.dropped.iter_rows(named=True):  # each dropped row is truly similar to some other row
        i = index[row["id"]]
        assert max(_jaccard(sets[i], sets[j]) for j in range(len(sets)) if j != i) >= 0.5


def test_big_cluster_costs_linear_comparisons_and_finds_every_member() -> None:
    # 400 copies of one 80-word text (half with one word replaced: J >= 0.87 with the original): all pairs would be 79,800 comparisons.
    rng = random.Random(1)
    words = " ".join([BASE, BASE.replace("the", "a"), BASE.replace("the", "one"), BASE.replace("the", "this")]).split()
    texts = []
    for _ in range(400):
        w = list(words)
        if rng.random() < 0.5:
            w[rng.randrange(len(w))] = "changed"
        texts.append(" ".join(w))
    texts.append("an unrelated sentence about tides and the moon over the harbour at night")
    result = dedup_minhash(make_frame(texts), MinhashParams(threshold=0.8))
    assert result.kept.height == 2 and result.stats["clusters"] == 1
    assert result.stats["pairs_compared"] < 400 * 3


def test_link_known_answer() -> None:
    # Worked example of minhash_kernel: one band; 1~0, 2~1 (not 0), 3 == 0 -> one cluster, 4 comparisons.
    sh_sets = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 11], [7, 8, 9, 11, 12, 13, 14],
               [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    sh_off = np.r_[0, np.cumsum([len(s) for s in sh_sets])].astype(np.int64)
    sh = np.concatenate([np.array(s, dtype=np.uint32) for s in sh_sets])
    keys = np.zeros((4, 1), dtype=np.uint64)
    a, b, counts, labels = minhash_kernel.link(keys, np.arange(4), sh_off, sh, 4, threshold=0.25, verify=True,
                                               n_new=4)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 3), (1, 2)]
    assert counts["pairs_compared"] == 4 and counts["exact_checks"] == 4
    assert labels.tolist() == [0, 0, 0, 0]


def test_fused_kernel_equals_numpy_reference() -> None:
    texts = pl.Series(["a b c d e f g h", "the quick brown fox", "", "one", "x y x y x y"])
    for unit, n in (("word", 2), ("word", 5), ("char", 3)):
        doc, hashes = hashed_shingles(texts, n, unit)
        expected = signatures(doc, hashes, len(texts), 32, seed=5)
        a, b = permutations(32, 5)
        sig, sh_off, sh = minhash_kernel.sketch(*token_hashes(texts, unit), n, a, b)
        assert np.array_equal(sig, expected), (unit, n)
        assert np.array_equal(sh, hashes) and np.array_equal(np.diff(sh_off), np.bincount(doc, minlength=5))


def test_minhash_against_earlier_sets_drops_only_new_rows() -> None:
    earlier = pl.DataFrame({"id": ["old:1", "old:2"], "text": [BASE, "an unrelated earlier row about tides"]})
    frame = make_frame([BASE + " today", "fresh text on a new topic entirely, nothing like before", BASE + " today!"])
    kept, dropped, stats = dedup_minhash(frame, MinhashParams(threshold=0.7, ngram=3), earlier=earlier)
    assert kept["id"].to_list() == ["r1"]
    assert dropped["reason"].to_list() == ["near_duplicate_of_earlier"] * 2
    assert dropped["meta"].struct.field("duplicate_of").to_list() == ["old:1", "old:1"]
    assert stats["earlier_rows"] == 2 and stats["rows_in"] == 3


def test_permutations_equal_datasketch() -> None:
    from datasketch import MinHash

    for num_perm, seed in ((128, 1), (16, 7)):
        a, b = permutations(num_perm, seed)
        ds = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        assert a.dtype == np.uint32 and np.array_equal(a, ds[0]) and np.array_equal(b, ds[1])


def test_kernel_band_keys_equal_lsh_band_keys() -> None:
    sig = np.random.default_rng(0).integers(0, 2**32, (50, 128), dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(minhash_kernel.band_keys(sig, 21, 6), band_keys(sig, 21, 6))


def _sets_csr(sets: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    off = np.r_[0, np.cumsum([len(s) for s in sets])].astype(np.int64)
    return off, np.concatenate([np.array(sorted(s), dtype=np.uint32) for s in sets])


def test_link_compares_a_rejected_pair_once_across_bands() -> None:
    # Two dissimilar docs share all 3 bands: one comparison, then the pair is skipped as already rejected.
    off, sh = _sets_csr([[1, 2, 3, 4], [5, 6, 7, 8]])
    keys = np.zeros((2, 3), dtype=np.uint64)
    a, _, counts, labels = minhash_kernel.link(keys, np.arange(2), off, sh, 2, threshold=0.5, verify=True, n_new=2)
    assert len(a) == 0 and labels.tolist() == [0, 1]
    assert counts["pairs_compared"] == 1 and counts["skipped_rejected"] == 2


def test_link_budget_defers_leaders_to_later_bands() -> None:
    # Doc 5 matches only doc 4; docs 0-3 are leaders before it in every band. With 2 new comparisons per bucket,
    # band 0 tries 0 and 1, band 1 skips them (rejected) and tries 2 and 3, band 2 reaches 4.
    sets = [[10 * i + k for k in range(5)] for i in range(4)] + [[100, 101, 102, 103, 104]] * 2
    off, sh = _sets_csr(sets)
    keys = np.zeros((6, 3), dtype=np.uint64)
    a, b, counts, labels = minhash_kernel.link(keys, np.arange(6), off, sh, 6, threshold=0.5, verify=True, n_new=6,
                                               max_compare=2)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(4, 5)]
    assert labels.tolist() == [0, 1, 2, 3, 4, 4]
    # Without the budget every leader is compared in band 0.
    a2, b2, counts2, _ = minhash_kernel.link(keys, np.arange(6), off, sh, 6, threshold=0.5, verify=True, n_new=6)
    assert list(zip(a2.tolist(), b2.tolist(), strict=True)) == [(4, 5)]
    assert counts["skipped_budget"] > 0 and counts2["skipped_budget"] == 0


def test_representatives_match_connected_components() -> None:
    rng = np.random.default_rng(3)
    n = 40
    a, b = rng.integers(0, n, 25), rng.integers(0, n, 25)
    rank = rng.random(n)
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for x, y in zip(a, b, strict=True):
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    labels = np.array([find(x) for x in range(n)])
    assert np.array_equal(representatives(labels, rank), clusters(n, a, b, rank))
    assert representatives(np.array([0, 0, 0, 3]), np.array([0.0, -1.0, 0.0, 0.0])).tolist() == [1, 1, 1, 3]


def test_batches_give_the_same_clusters_as_one_batch() -> None:
    # Shingle sets are written into one buffer grown in place batch by batch: 2 texts a batch must equal one batch.
    rng = random.Random(2)
    words = BASE.split()
    texts = [BASE]
    for _ in range(9):
        w = list(words)
        w[rng.randrange(len(w))] = "edited"
        texts.append(" ".join(w))
    texts += ["", "short one", "tides and the moon over the harbour at night, far from the committee"]
    series = pl.Series(texts)
    one = near_duplicate_edges(series, MinhashParams(threshold=0.7, ngram=3))
    many = near_duplicate_edges(series, MinhashParams(threshold=0.7, ngram=3, batch_docs=2))
    assert one.labels is not None and many.labels is not None
    assert np.array_equal(one.labels, many.labels) and np.array_equal(one.a, many.a) and len(one.a) >= 6


def test_c_kernels_load_without_numba() -> None:
    # The C kernels are the default backend: numba (~130 MB resident) is never imported.
    code = ("import sys, numpy as np\n"
            "import gristmill.steps\n"
            "from gristmill.curation import minhash_kernel as k\n"
            "k.band_keys(np.zeros((2, 12), np.uint32), 2, 6)\n"
            "print(k.backend(), 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["native", "False"]


def test_numba_loads_on_first_use_and_without_scipy_linalg() -> None:
    # The fallback: numba's BLAS probe would import scipy.linalg (~27 MB resident); the kernels hide it, later
    # imports still work. numba itself is imported on the first kernel call, not with the step registry.
    code = ("import sys, numpy as np\n"
            "import gristmill.steps\n"
            "from gristmill.curation import minhash_kernel as k\n"
            "assert 'numba' not in sys.modules\n"
            "k.band_keys(np.zeros((2, 12), np.uint32), 2, 6)\n"
            "assert k.backend() == 'numba' and 'numba' in sys.modules\n"
            "assert 'scipy.linalg' not in sys.modules\n"
            "import scipy.linalg\n"
            "print(scipy.linalg.cython_blas.__name__)\n")
    env = {**os.environ, "GRISTMILL_MINHASH_KERNEL": "numba"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "scipy.linalg.cython_blas"


def test_without_a_c_compiler_numba_runs_the_kernels(tmp_path: Path) -> None:
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "GRISTMILL_CACHE": str(tmp_path / "cache")}
    code = "from gristmill.curation import minhash_kernel as k\nprint(k.backend())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "numba"


_BACKEND_RUN = """
import json, sys
import numpy as np, polars as pl
from gristmill.curation import minhash_kernel as k
from gristmill.curation.minhash import permutations
from gristmill.curation.shingles import token_hashes

texts = pl.Series(json.loads(sys.argv[1]))
a, b = permutations(32, 3)
sig, sh_off, sh = k.sketch(*token_hashes(texts), 3, a, b)
keys64 = k.band_keys(sig, 8, 4)
out = {"backend": k.backend(), "sig": sig.tolist(), "sh_off": sh_off.tolist(), "sh": sh.tolist(),
       "keys": keys64.tolist()}
n = len(texts)
has = np.diff(sh_off) > 0
live = np.flatnonzero(has)
keys32 = (keys64 ^ (keys64 >> np.uint64(32))).astype(np.uint32)
cand = k.candidates(keys32, has)
out["candidates"] = cand.tolist()
for name, keys, docs, kw in (
        ("u64", keys64[live], live, {}),
        ("u32_exact", keys32[live], live, {"max_compare": 2}),
        ("u32_candidates", keys32[cand], np.flatnonzero(cand), {"max_compare": 2}),
        ("u32_earlier", keys32[live], live, {"n_new": n - 5, "max_leaders": 3}),
        ("unverified", keys64[live], live, {"verify": False})):
    args = {"threshold": 0.5, "verify": True, "n_new": n, **kw}
    ea, eb, counts, labels = k.link(keys, docs, sh_off, sh, n, **args)
    out[name] = [ea.tolist(), eb.tolist(), counts, labels.tolist()]
print(json.dumps(out))
"""


def test_c_numba_and_python_backends_agree() -> None:
    # Sketch, band keys, candidates and link (64- and 32-bit keys, earlier rows, small budgets) give the same
    # numbers on all three backends; link on the candidates alone gives what it gives on every row.
    import json

    rng = random.Random(5)
    words = (BASE + " tides moon harbour night garden tomato summer heat river stone").split()
    texts = []
    for _ in range(60):
        w = list(rng.choice([words[:18], words[4:24], words[10:]]))
        for _ in range(rng.randint(0, 3)):
            w[rng.randrange(len(w))] = rng.choice(words)
        texts.append(" ".join(w))
    texts += ["", "one two", "Ünïcode straße x"]
    results = {}
    for backend in ("native", "numba", "python"):
        env = {**os.environ, "GRISTMILL_MINHASH_KERNEL": backend}
        out = subprocess.run([sys.executable, "-c", _BACKEND_RUN, json.dumps(texts)], capture_output=True, text=True,
                             check=True, env=env)
        results[backend] = json.loads(out.stdout)
        assert results[backend].pop("backend") == backend
    assert results["native"] == results["numba"] == results["python"]
    assert len(results["native"]["u64"][0]) >= 20  # edges found: the comparison is not vacuous
    assert results["native"]["u32_exact"][2]["skipped_budget"] > 0
    assert results["native"]["u32_candidates"] == results["native"]["u32_exact"]
    assert 0 < sum(results["native"]["candidates"]) < len(texts)  # some rows left out: the comparison is not vacuous


def test_token_hashes_in_chunks_equal_one_call() -> None:
    # token_hashes tokenizes TOKEN_CHUNK texts per polars call; chunk boundaries must not change a hash or offset.
    texts = pl.Series(["A b", "", None, "b c d", "Ünïcode STRASSE straße", "x"] * 5, dtype=pl.String)
    for unit in ("word", "char"):
        whole = token_hashes(texts, unit, chunk=1 << 30)
        for chunk in (1, 4, 7):
            parts = token_hashes(texts, unit, chunk=chunk)
            assert np.array_equal(parts[0], whole[0]) and np.array_equal(parts[1], whole[1]), (unit, chunk)
    offsets, tok = token_hashes(pl.Series(["A b", "", "b"]))
    assert offsets.tolist() == [0, 2, 2, 3] and tok[1] == tok[2] != tok[0] and tok.dtype == np.uint64
    assert token_hashes(pl.Series([], dtype=pl.String))[0].tolist() == [0]


def test_candidates_known_answer() -> None:
    keys = np.array([[1, 5], [2, 5], [3, 6], [3, 7]], dtype=np.uint32)
    assert minhash_kernel.candidates(keys[:3]).tolist() == [True, True, False]  # the docstring's example
    assert minhash_kernel.candidates(keys).tolist() == [True, True, True, True]  # 2 and 3 share band 0's key 3
    keep = np.array([True, True, True, False])
    assert minhash_kernel.candidates(keys, keep).tolist() == [True, True, False, False]  # row 3 left out


def test_only_rows_sharing_a_bucket_keep_their_shingles(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two near copies, an unrelated text and an empty one, then two earlier rows (one a copy): only the rows that
    # share a bucket get their sets back from the spill file / the earlier sketch, read 3 hashes at a time.
    texts = pl.Series([BASE, "tides and the moon over the harbour at night far from here", BASE + " today", ""])
    params = MinhashParams(threshold=0.7, ngram=3)
    earlier = sketch(pl.Series(["gardening tomatoes in the summer sun heat", BASE + " again"]), params)
    builder = EdgeBuilder(params, len(texts), earlier=earlier)
    builder.add_texts(texts.slice(0, 2))
    builder.add_texts(texts.slice(2))
    builder._add(len(texts), earlier.sig, earlier.offsets, earlier.shingles)
    monkeypatch.setattr(minhash, "SPILL_BLOCK", 3)
    keep = np.array([True, False, True, False, False, True])
    whole = sketch(texts, params).concat(earlier)
    expected = np.concatenate([whole.shingles[whole.offsets[r] : whole.offsets[r + 1]] for r in (0, 2, 5)])
    assert np.array_equal(builder._gather(keep), expected) and len(expected) > 3 * 3

    builder = EdgeBuilder(params, len(texts), earlier=earlier)
    builder.add_texts(texts)
    found = builder.link()
    assert found.labels is not None and found.labels.tolist() == [0, 1, 0, 3, 4, 0]
    assert found.counts["pairs_compared"] == 2


def test_list_column_known_answer_and_sketch_frame_round_trip() -> None:
    column = minhash._list_column(np.array([0, 2, 2, 3]), np.array([7, 8, 9]))
    assert column.dtype == pl.List(pl.UInt32) and column.to_list() == [[7, 8], [], [9]]
    texts = pl.Series(["one two three four five six", "", "one two three four five six seven"])
    sk = minhash.sketch(texts, minhash.MinhashParams(num_perm=16, ngram=2))
    # a slice of a sketch (offsets not starting at 0), as the persisted index writes them part by part
    part = minhash.Sketch(sk.sig[1:], sk.offsets[1:], sk.shingles, sk.has_shingles[1:])
    frame = minhash.sketch_frame(pl.Series(["b", "c"]), part)
    assert frame["shingles"].to_list() == [[], sk.shingles[sk.offsets[2] : sk.offsets[3]].tolist()]
    assert len(frame["shingles"][1]) == 6  # the 6 word bigrams of seven distinct words
    assert frame["signature"].to_list() == sk.sig[1:].tolist()
    back = minhash.frame_sketch(frame, 16)
    assert np.array_equal(back.sig, sk.sig[1:]) and back.offsets.tolist() == [0, 0, int(np.diff(sk.offsets)[2])]
