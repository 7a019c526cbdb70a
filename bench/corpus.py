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
