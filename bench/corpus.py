"""Real text found on this machine, for benchmarks: paragraphs of installed packages' metadata and the stdlib.

Deterministic for a given environment: paragraphs are de-duplicated, sorted, then sampled with a fixed seed.
"""

from __future__ import annotations

import glob
import random
import re
import sysconfig


def real_paragraphs(n: int | None, seed: int = 0, min_words: int = 25, max_words: int = 400) -> list[str]:
    """``n`` paragraphs sampled with ``seed`` (all of them, shuffled, when ``n`` is None)."""
    paths = sorted(glob.glob(sysconfig.get_paths()["purelib"] + "/*.dist-info/METADATA"))
    paths += sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/**/*.py", recursive=True))
    found: set[str] = set()
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="ignore") as fh:
                text = fh.read()
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            words = para.split()
            if min_words <= len(words) <= max_words and sum(c.isalpha() for c in para) / len(para) > 0.7:
                found.add(para)
    pool = sorted(found)
    if n is None:
        n = len(pool)
    if len(pool) < n:
        raise RuntimeError(f"only {len(pool)} paragraphs of real text found; asked for {n}")
    return random.Random(seed).sample(pool, n)


def _edit_one_word(text: str, rng: random.Random) -> str:
    """Replace one word, the way templated copies differ (a name, a year, a product)."""
    words = text.split()
    words[rng.randrange(len(words))] = rng.choice(_FILLER) + str(rng.randrange(100))
    return " ".join(words)


_FILLER = ["acme", "project", "version", "copyright", "company", "module", "release", "author", "vendor", "year"]


def clustered_corpus(scale: int = 1, unique: int = 10_000, clusters: int = 24, largest: int = 750,
                     seed: int = 0) -> list[str]:
    """Real paragraphs plus large clusters of near-identical copies (boilerplate, templates, mirrors).

    ``unique`` real paragraphs, plus ``clusters`` other paragraphs copied Zipf-like (``largest`` copies of the first,
    ``largest / i**0.8`` of the i-th), each copy exact or with one or two words replaced: about 13.8k documents at
    ``scale=1`` with defaults. ``scale=k`` adds ``k - 1`` copies of every document with one word replaced, so every
    cluster grows k-fold (its candidate pairs k**2-fold). Deterministic for an environment and seed; shuffled.
    """
    rng = random.Random(seed)
    pool = real_paragraphs(unique + clusters, seed=seed)
    docs = pool[:unique]
    for i, para in enumerate(pool[unique:], start=1):
        for _ in range(max(2, round(largest / i**0.8))):
            copy = para
            for _ in range(rng.choice([0, 0, 1, 2])):
                copy = _edit_one_word(copy, rng)
            docs.append(copy)
    docs += [_edit_one_word(d, rng) for _ in range(scale - 1) for d in docs]
    rng.shuffle(docs)
    return docs


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def real_sentences(min_words: int = 5, max_words: int = 60) -> list[str]:
    """Every distinct sentence of ``real_paragraphs``' sources (package metadata, stdlib docstrings), sorted."""
    found: set[str] = set()
    for para in real_paragraphs(None, seed=0, min_words=min_words):
        for sentence in _SENTENCE.split(para):
            words = len(sentence.split())
            if min_words <= words <= max_words and sentence[-1:] in ".!?":
                found.add(sentence)
    return sorted(found)


def recombined_paragraphs(n: int, seed: int = 0, min_chars: int = 600, max_chars: int = 1000,
                          sentences: list[str] | None = None) -> list[str]:
    """``n`` distinct paragraphs of real sentences, recombined: variety beyond the machine's ~8k real paragraphs.

    Each paragraph strings sentences drawn (seeded) from ``real_sentences`` until it reaches ``min_chars`` (sentences
    that would pass ``max_chars`` are skipped); a paragraph already produced is drawn again, so all ``n`` are
    distinct. Every sentence is real text; the combinations are not (topic drift within a paragraph), which suits
    throughput benchmarks and near-duplicate statistics (recombined paragraphs share no long word runs by chance),
    not quality judgements. Deterministic for an environment and seed.
    """
    pool = sentences if sentences is not None else real_sentences()
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        parts: list[str] = []
        size = -1
        for _ in range(64):  # bounded: a sentence longer than the budget left is skipped
            if size >= min_chars:
                break
            sentence = pool[rng.randrange(len(pool))]
            if size + 1 + len(sentence) <= max_chars:
                parts.append(sentence)
                size += 1 + len(sentence)
        para = " ".join(parts)
        if size >= min_chars and para not in seen:
            seen.add(para)
            out.append(para)
    return out
