"""ROUGE-L F-measure over word tokens: the Self-Instruct novelty filter (synthesis) and the generation eval
(training, eval sets) both score with it.

ROUGE-L = F1 of precision = LCS/len(candidate) and recall = LCS/len(reference), where LCS is the longest common
subsequence of lower-cased word tokens. Example: "the cat sat" vs "the cat ran" -> LCS 2, P = R = 2/3, F = 0.667.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence. ``lcs_length(list("abcde"), list("ace")) == 3``."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    if not candidate or not reference:
        return 0.0
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def max_rouge_l(candidate: str, pool: list[list[str]]) -> float:
    """Highest ROUGE-L of ``candidate`` against a pool of tokenized texts."""
    cand = tokens(candidate)
    return max((rouge_l(cand, ref) for ref in pool), default=0.0)
