from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from gristmill.curation.clusters import clusters, preference_rank
from gristmill.curation.dedup_exact import ExactDedupParams, dedup_exact
from gristmill.curation.filters import FilterParams, filter_rows
from gristmill.curation.minhash import fmix32, signatures
from gristmill.curation.normalize import NormalizeParams, normalize, normalize_series, normalize_text
from gristmill.curation.quality import KeepRule
from gristmill.curation.scoring import keep_mask, similarity_scores
from gristmill.curation.shingles import hashed_shingles, shingle_sets
from tests.conftest import make_frame


def _accounted(frame: pl.DataFrame, kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    assert kept.height + dropped.height == frame.height
    assert dropped["reason"].null_count() == 0
    assert set(kept["id"]) | set(dropped["id"]) == set(frame["id"])


def test_normalize_known_answer() -> None:
    assert normalize_text("  Ｈｅｌｌｏ\u200b   world \n\n\n\n!", NormalizeParams()) == "Hello world \n\n!"
    assert normalize_text("Ａ", NormalizeParams(unicode_form="none")) == "Ａ"
    got = normalize_series(pl.Series(["  Ｈｅｌｌｏ\u200b   world \n\n\n\n!"]), NormalizeParams()).item()
    assert got == "Hello world \n\n!"


# Compatibility forms, combining marks, controls, zero-width and BOM, every kind of space, Python-only
# whitespace (\x1c-\x1f, which Rust does not strip), line separators, emoji ZWJ sequences, Hangul jamo.
TRICKY = [
    "ﬁnance ﬂow Ⅻ ² ㎏ ℃ Å K ﷺ", "e\u0301 \u1100\u1161\u11a8 Ω", "\ufeffBOM\u200bzero\u200cwidth\u200djoin",
    "\x1c\x1d sep \x1e\x1f", "\x00nul\x07bell\x7fdel\x0bvt\x0cff", "\u00a0nbsp\u3000ideo\u2009thin\u202f",
    "line\u2028sep\u2029para\x85nel", "a\r\n\r\n\r\nb\n\n\n\n\nc", "\t\t tabs \t", "👨\u200d👩\u200d👧 family",
    "", "   ", "\u200b", "\n \n\n \n", "Ｆｕｌｌ　ｗｉｄｔｈ！", "ﾊﾝｶｸ ｶﾀｶﾅ", "x\u0308\u0323 q\u0307\u0323",
]


def test_normalize_seriesession_equals_the_reference_on_tricky_strings() -> None:
    rng = random.Random(0)
    pool = "".join(TRICKY) + "abc \n\n\n"
    fuzz = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(400)]
    texts = pl.Series([*TRICKY, *fuzz, None])
    for form in ("NFKC", "NFC", "none"):
        for strip_control in (True, False):
            for collapse in (True, False):
                params = NormalizeParams(unicode_form=form, strip_control=strip_control, collapse_whitespace=collapse)
                got = normalize_series(texts, params).to_list()
                want = [None if t is None else normalize_text(t, params) for t in texts]
                assert got == want, (form, strip_control, collapse)


def test_normalize_drops_empty_and_updates_messages() -> None:
    frame = make_frame(["  a\u200b  b ", "\u200b  ", "c"]).with_columns(pl.Series("messages", [
        [{"role": "user", "content": " a  b "}], [{"role": "user", "content": " "}], []]))
    result = normalize(frame, NormalizeParams())
    kept, dropped, stats = result
    _accounted(frame, kept, dropped)
    assert kept["text"].to_list() == ["a b", "c"]
    assert kept["messages"].to_list() == [[{"role": "user", "content": "a b"}], []]
    assert dropped["reason"].to_list() == ["empty_after_normalize"]
    assert result.stats == {"rows_changed": 2} and stats["dropped"] == 1
    sliced = frame.slice(1).with_columns(pl.Series("messages", [None, [{"role": "user", "content": "\tx "}]]))
    assert normalize(sliced, NormalizeParams()).kept["messages"].to_list() == [[{"role": "user", "content": "x"}]]


def test_filter_names_the_rule_and_counts_every_break() -> None:
    texts = ["one two", "one two three four five six", "x" * 50, "!!! ??? ### $$$ %%% ^^^", "a\na\na\nb c d e"]
    frame = make_frame(texts)
    params = FilterParams(min_words=3, max_chars=40, max_symbol_fraction=0.5, max_repeated_line_fraction=0.3)
    kept, dropped, stats = filter_rows(frame, params)
    _accounted(frame, kept, dropped)
    assert kept["id"].to_list() == ["r1"]
    assert dict(zip(dropped["id"], dropped["reason"], strict=True)) == {
        "r0": "too_few_words", "r2": "too_few_words", "r3": "too_many_symbols", "r4": "repeated_lines"}
    assert stats["broken_by_rule"] == {"too_few_words": 2, "too_long": 1, "too_many_symbols": 1, "repeated_lines": 1}


def test_filter_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="min_words"):
        FilterParams(min_words=5, max_words=2)


def test_exact_dedup_keeps_first_and_points_to_it() -> None:
    frame = make_frame(["Hello, world!", "hello world", "Other text", "HELLO   WORLD"])
    kept, dropped, stats = dedup_exact(frame, ExactDedupParams())
    _accounted(frame, kept, dropped)
    assert kept["id"].to_list() == ["r0", "r2"]
    assert dropped["meta"].struct.field("duplicate_of").to_list() == ["r0", "r0"]
    assert stats["dropped_by_reason"] == {"exact_duplicate": 2}
    kept, _, _ = dedup_exact(frame, ExactDedupParams(ignore_case=False, ignore_punctuation=False))
    assert kept.height == 4


def test_word_and_char_shingles_known_answer() -> None:
    texts = pl.Series(["The cat sat", "Abcd", "", "one"])
    assert shingle_sets(texts, 2) == [{"the cat", "cat sat"}, {"abcd"}, set(), {"one"}]
    assert shingle_sets(texts, 3, "char")[1] == {"abc", "bcd"}


def test_signatures_equal_datasketch() -> None:
    texts = pl.Series(["a b c d e f g h", "the quick brown fox", ""])
    doc, hashes = hashed_shingles(texts, 2)
    sig = signatures(doc, hashes, 3, 64, seed=7, batch=3)  # tiny batch: exercises the batch merge
    for i in range(2):
        ref = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
        ref.update_batch([int(h) for h in hashes[doc == i]])
        assert np.array_equal(ref.hashvalues, sig[i])
    assert (sig[2] == np.iinfo(np.uint32).max).all()
    assert fmix32(np.array([0], dtype=np.uint32)).tolist() == [0]


def test_clusters_pick_the_preferred_representative() -> None:
    rep = clusters(5, np.array([0, 2, 3]), np.array([1, 1, 4]), np.array([0.0, -1.0, 0.0, 0.0, 0.0]))
    assert rep.tolist() == [1, 1, 1, 3, 3]  # row 1 ranks best in {0,1,2}; {3,4} tie -> earlier row
    frame = make_frame(["a", "b", "c"]).with_columns(
        pl.struct(pl.lit(1).alias("source_line"), pl.Series("quality_score", [0.2, 0.9, None])).alias("meta")
    )
    assert preference_rank(frame, "quality").tolist() == [-0.2, -0.9, float("inf")]
    assert preference_rank(make_frame(["a", "b"]), "quality").tolist() == [0.0, 0.0]
    assert sorted(preference_rank(frame, "random", seed=1).tolist()) == [0.0, 1.0, 2.0]


BASE = "the committee met on tuesday to review the budget for the new library and agreed to fund the project"


def test_similarity_scores_and_keep_rules_known_answer() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ref = np.array([[1.0, 0.0]])
    scores = similarity_scores(rows, ref, k=3)
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.6])
    assert keep_mask(scores, KeepRule(top_fraction=0.5)).tolist() == [True, False, True]
    assert keep_mask(scores, KeepRule(min_score=0.5)).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="exactly one"):
        KeepRule(top_fraction=0.5, min_score=0.1)


def test_band_choice_keeps_recall_at_the_threshold() -> None:
    from datasketch import MinHashLSH

    from gristmill.curation.lsh import candidate_probability, optimal_bands

    assert optimal_bands(0.8, 128) == (21, 6)
    assert candidate_probability(0.8, 21, 6) >= 0.995
    balanced = MinHashLSH(threshold=0.8, num_perm=128)
    assert optimal_bands(0.8, 128, None) == (balanced.b, balanced.r) == (9, 13)


def test_band_candidates_known_answer() -> None:
    from gristmill.curation.lsh import band_keys, candidate_pairs

    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [5, 6, 3, 4]], dtype=np.uint32)
    pairs = candidate_pairs(band_keys(sig, 2, 2))
    assert list(zip(pairs["a"], pairs["b"], strict=True)) == [(0, 1), (0, 2)]


def test_vectorized_lsh_finds_exactly_datasketch_candidates() -> None:
    from datasketch import LeanMinHash, MinHashLSH

    from gristmill.curation.lsh import band_keys, candidate_pairs, optimal_bands

    rng = random.Random(3)
    words = BASE.split()
    texts = []
    for _ in range(60):
        w = list(words)
        for i in rng.sample(range(len(w)), rng.randint(0, 8)):
            w[i] = rng.choice(["alpha", "beta", "gamma", "delta"])
        texts.append(" ".join(w))
    doc, hashes = hashed_shingles(pl.Series(texts), 3)
    sig = signatures(doc, hashes, len(texts), 128, seed=1)
    b, r = optimal_bands(0.7, 128)
    assert (b, r) == (32, 4)
    lsh = MinHashLSH(num_perm=128, params=(b, r))
    expected = set()
    for i in range(len(texts)):
        mh = LeanMinHash(seed=1, hashvalues=sig[i], scheme="affine32")
        expected |= {(j, i) for j in lsh.query(mh)}
        lsh.insert(i, mh)
    got = candidate_pairs(band_keys(sig, b, r))
    assert set(zip(got["a"], got["b"], strict=True)) == expected and expected


def test_big_buckets_stay_connected_without_all_pairs() -> None:
    from gristmill.curation.lsh import MAX_BUCKET_PAIRS, candidate_pairs

    n = MAX_BUCKET_PAIRS + 10
    pairs = candidate_pairs(np.zeros((n, 1), dtype=np.uint64))
    assert pairs.height < n * (n - 1) // 2
    assert set(clusters(n, pairs["a"].to_numpy(), pairs["b"].to_numpy(), np.zeros(n)).tolist()) == {0}


def test_classifier_scorer_known_answer() -> None:
    from gristmill.curation.quality import QualityParams, classifier_scores, score_quality

    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    scores, info = classifier_scores(train, np.array([1, 1, 0, 0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert scores[0] > 0.5 > scores[1] and info["classifier_train_accuracy"] == 1.0
    with pytest.raises(ValueError, match="both good and bad"):
        classifier_scores(train, np.array([1, 1, 1, 1]), train)
    frame = make_frame(["good", "bad"])
    table = {"good": [1.0, 0.0], "bad": [0.0, 1.0]}
    params = QualityParams(reference="x", scorer="classifier", keep=KeepRule(min_score=0.5))
    kept, dropped, stats = score_quality(
        frame, params, embed=lambda texts: np.array([table[t] for t in texts]), reference=train,
        labels=np.array([1, 1, 0, 0]),
    )
    assert kept["id"].to_list() == ["r0"] and dropped["reason"].to_list() == ["low_quality"]
    assert stats["classifier_rows"] == {"good": 2, "bad": 2}


def test_curation_bench_heldout_split_is_seeded_disjoint_and_labelled(tmp_path: object) -> None:
    """bench/curation_quality.py's held-out set: same seed, same file; every kind planted; no in-sample row."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("curation_quality", root / "bench" / "curation_quality.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a, b, c = (Path(str(tmp_path)) / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    assert bench.build_heldout(a, 7) == bench.build_heldout(b, 7) == 500 and a.read_text() == b.read_text()
    bench.build_heldout(c, 8)
    assert a.read_text() != c.read_text()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["defect"]] = kinds.get(r["defect"], 0) + 1
    assert kinds == {"": 390, **dict.fromkeys(bench.KINDS, 10)}
    in_sample = {json.loads(line)["instruction"] for line in (root / "recipes/data/instruct_eval.jsonl").open()}
    real = [r for r in rows if r["defect"] or r["instruction"] not in {q for q, _, _ in bench.HELDOUT_NEAR_MISSES}]
    assert not {r["instruction"] for r in real} & in_sample  # no row of the set the recipe was tuned on
