"""Text metrics behind the heuristic rule sets (curation/rulesets.py).

Most metrics are polars expressions over a string column, so they run vectorized over millions of rows; the
n-gram repetition counts (Gopher) are a sequential scan and stay per-row Python over token lists.

Tokenization. datatrove runs NLTK's ``word_tokenize``; we use one regex instead, :data:`TOKEN_RE`: a token is a
run of word characters (``\\w+``, a *word*) or a run of other non-space characters (``[^\\w\\s]+``, a *symbol
token*). ``"Don't stop..."`` gives ``Don ' t stop ...`` here and ``Do n't stop ...`` in NLTK: the counts differ
slightly on contractions and on runs of mixed punctuation, not on ordinary prose.

Lines are ``\\n``-separated (a ``\\r`` before it is trailing whitespace); Python's ``splitlines`` also splits on
``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028`` and ``\\u2029``, which we do not.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import polars as pl

TOKEN_RE = r"\w+|[^\w\s]+"
"""A token: a word (run of word characters) or a run of punctuation/symbols."""
WORD_RE = r"\w+"
ALPHA_WORD_RE = r"\w*\p{Alphabetic}\w*"
"""A word holding at least one alphabetic character (leftmost match spans the whole ``\\w+`` run)."""


def safe_ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """``num / den``, null where ``den`` is 0 (a rule on a null ratio does not fire).

    >>> pl.select(safe_ratio(pl.lit(1), pl.lit(4)), safe_ratio(pl.lit(1), pl.lit(0)).alias("z")).row(0)
    (0.25, None)
    """
    return pl.when(den > 0).then(num / den).otherwise(None)


def token_count(text: pl.Expr) -> pl.Expr:
    """Tokens (words and symbol runs): ``"Hello, world..."`` -> ``Hello , world ...`` = 4."""
    return text.str.count_matches(TOKEN_RE)


def word_count(text: pl.Expr) -> pl.Expr:
    """Words only (the ``\\w+`` runs): ``"Hello, world..."`` -> 2."""
    return text.str.count_matches(WORD_RE)


def mean_word_length(text: pl.Expr) -> pl.Expr:
    """Mean length of the words: ``"a bb, ccc!"`` -> (1 + 2 + 3) / 3 = 2.0; null without words.

    Every ``\\w`` character belongs to exactly one word, so the sum of word lengths is the ``\\w`` count.
    """
    return safe_ratio(text.str.count_matches(r"\w"), word_count(text))


def alpha_word_count(text: pl.Expr) -> pl.Expr:
    """Words holding an alphabetic character: ``"abc 123 4x ,"`` -> 2 (``abc``, ``4x``)."""
    return text.str.count_matches(ALPHA_WORD_RE)


def alpha_word_ratio(text: pl.Expr) -> pl.Expr:
    """Share of words that hold an alphabetic character (Gopher's "80% of words contain an alphabetic
    character"): ``"abc 123 4x ,"`` -> 2 / 3. Punctuation is no word: dividing by all tokens (as datatrove does)
    puts a 128-word answer with 96% alphabetic words and 35 punctuation runs at 0.75, under the 0.8 threshold."""
    return safe_ratio(alpha_word_count(text), word_count(text))


def line_count(text: pl.Expr) -> pl.Expr:
    """Lines as ``str.splitlines`` counts them (one trailing newline ends the last line, no extra empty line).

    ``"a\\nb\\n"`` -> 2, ``"a\\n\\nb"`` -> 3, ``""`` -> 1 (splitlines says 0; one empty line keeps ratios defined).
    """
    return text.str.strip_suffix("\n").str.count_matches("\n") + 1


def bullet_line_count(text: pl.Expr) -> pl.Expr:
    """Lines whose first non-space character is ``•`` or ``-``: ``" - a\\nb\\n• c"`` -> 2."""
    return text.str.count_matches(r"(?m)^[^\S\n]*[•\-]")


def ellipsis_line_count(text: pl.Expr) -> pl.Expr:
    """Lines that end (before trailing spaces) in ``...`` or ``…``: ``"a...\\nb…  \\nc."`` -> 2."""
    return text.str.count_matches(r"(?m)(?:\.\.\.|…)[^\S\n]*$")


def ellipsis_count(text: pl.Expr) -> pl.Expr:
    """Occurrences of ``...`` (non-overlapping) or ``…``: ``"a.... b… c......"`` -> 1 + 1 + 2 = 4."""
    return text.str.count_matches(r"\.\.\.|…")


def duplicate_count(parts: pl.Expr) -> pl.Expr:
    """Elements of a list that already appeared earlier in it: ``["a", "b", "a", "a"]`` -> 2.

    datatrove's ``find_duplicates`` (first element of its tuple), vectorized over a list column.
    """
    return parts.list.eval(pl.element().is_first_distinct().not_()).list.sum()


def duplicate_chars(parts: pl.Expr) -> pl.Expr:
    """Characters in the repeated elements of a list: ``["ab", "c", "ab", "ab"]`` -> 2 + 2 = 4.

    datatrove's ``find_duplicates`` (second element of its tuple): the first occurrence is not counted.
    """
    dupes = pl.element().filter(pl.element().is_first_distinct().not_()).str.len_chars()
    return parts.list.eval(dupes).list.sum()


def split_lines(text: pl.Expr) -> pl.Expr:
    """``text.split("\\n")`` as a list column: ``"a\\n\\nb"`` -> ``["a", "", "b"]``."""
    return text.str.split("\n")


def split_line_runs(text: pl.Expr) -> pl.Expr:
    """``re.split("\\n+", text)``: ``"a\\n\\nb\\n"`` -> ``["a", "b", ""]`` (Gopher repetition's lines)."""
    return text.str.replace_all(r"\n+", "\n").str.split("\n")


def split_paragraphs(text: pl.Expr) -> pl.Expr:
    """``re.split("\\n{2,}", text.strip())``: ``" a\\nb\\n\\n\\nc\\n"`` -> ``["a\\nb", "c"]``.

    Runs of 2+ newlines are first collapsed to exactly two, so a literal split on ``"\\n\\n"`` is exact.
    """
    return text.str.strip_chars().str.replace_all(r"\n{2,}", "\n\n").str.split("\n\n")


def sentence_count(line: pl.Expr) -> pl.Expr:
    """Sentences in a line that ends in terminal punctuation, approximating NLTK's punkt ``sent_tokenize``.

    One sentence, plus one per boundary: ``.``/``!``/``?`` (closing quotes or brackets may follow), whitespace,
    then an upper-case letter. ``"It rained. We left! OK."`` -> 3; ``"Mr. Smith left."`` -> 2 (punkt knows the
    abbreviation and says 1).
    """
    return line.str.count_matches(r"[.!?]+[\"'”’)\]]*\s+\p{Lu}") + 1


# ---- per-row Python: n-gram repetition (a sequential scan does not vectorize) ----


def top_ngram_chars(tokens: Sequence[str], n: int) -> int:
    """Characters covered by the most frequent word n-gram: ``len(" ".join(gram)) * count``; 0 if no n-gram.

    datatrove ``find_top_duplicate`` (ties go to the n-gram seen first). ``"a b a b a"`` with n=2:
    ``"a b"`` occurs twice (``"b a"`` too, later) -> 3 * 2 = 6.
    """
    if len(tokens) < n:
        return 0
    counts = Counter(zip(*(tokens[k:] for k in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def dup_ngram_chars(tokens: Sequence[str], n: int) -> int:
    """Characters in repeated word n-grams, datatrove's ``find_all_duplicate``: scan left to right; an n-gram
    already seen adds its characters (without separators) and the scan jumps past it, else it is remembered.

    ``"a b c a b c a b"`` with n=3: ``abc``, ``bca``, ``cab`` are new; ``abc`` at 3 repeats (+3, jump to 6);
    ``ab`` is too short for a 3-gram -> 3. n-grams are compared as word tuples (datatrove compares the
    concatenated string, which also equates ``("ab", "c")`` with ``("a", "bc")``).
    """
    seen: set[tuple[str, ...]] = set()
    repeated, idx, last = 0, 0, len(tokens) - n
    while idx <= last:
        gram = tuple(tokens[idx : idx + n])
        if gram in seen:
            repeated += sum(map(len, gram))
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


def dup_ngram_chars_many(tokens: Sequence[str], ns: Sequence[int]) -> list[int]:
    """:func:`dup_ngram_chars` for each n in ascending ``ns``, skipping the scans that must give 0.

    If no n-gram repeats, no longer one can (it would contain a repeated n-gram), so a text without a repeated
    ``ns[0]``-gram (most clean text) costs one set build: ``"a b c a b c"`` with ns (2, 3, 4) -> ``[2, 3, 0]``
    (for n=2 the scan jumps from the repeated ``a b`` past ``b c``).
    """
    out: list[int] = []
    for n in ns:
        grams = list(zip(*(tokens[k:] for k in range(n)), strict=False))
        if len(set(grams)) == len(grams):
            return out + [0] * (len(ns) - len(out))
        out.append(dup_ngram_chars(tokens, n))
    return out


# ---- code-, tool-call- and math-aware prose view ----

CODE_SPANS = (
    r"```[\s\S]*?(?:```|$)",  # fenced code block (an unclosed one runs to the end)
    r"~~~[\s\S]*?(?:~~~|$)",
    r"`[^`\n]*`",  # inline code
    r"\$\$[\s\S]*?\$\$",  # display math
    r"\\\[[\s\S]*?\\\]",
    r"\\\([\s\S]*?\\\)",
    r"\\begin\{[^}\n]*\}[\s\S]*?\\end\{[^}\n]*\}",  # LaTeX environment
    r"\$[^$\n]*\\[A-Za-z][^$\n]*\$|\$[^$\n\s][^$\n]{0,40}[=^_][^$\n]{0,40}\$",  # inline math: a command or = ^ _
)
"""Spans that are code or math, not prose (one regex syntax for Python ``re`` and polars)."""
CODE_LINE = "(?m)" + "|".join((
    r"^(?:[ ]{4}|\t).*$",  # indented block
    r"^[^\S\n]*(?:\$ |>>> |def |class |import |from \S+ import |return\b|#include|function\b|const |let |var "
    r"|public |private |SELECT |INSERT |pip |npm |git |sudo |cd |ls\b|@\w).*$",  # keyword or prompt first
    r"^.*(?:[{};]|\)\s*:)[^\S\n]*$",  # ends in { } ; or "):" (a block opener)
))
"""Lines that read as code or a shell command (indented, a keyword or prompt first, a brace or ``;`` last)."""
WHOLE_CALL = r"^\s*(?:[A-Za-z_][\w.]*\([\s\S]*\)|[\[{][\s\S]*[\]}]|<[A-Za-z][\w-]*[\s\S]*>)\s*$"
"""A whole text that is one tool/function call (``shell('df -h')``), a JSON object or array, or markup."""
_SPANS_RE = "|".join(CODE_SPANS)


def prose(text: pl.Expr) -> pl.Expr:
    """The prose of a text, for rules that count words, letters and punctuation: code blocks, inline code, LaTeX
    math, code/shell lines are replaced by a space, and a text that is wholly one call, JSON value or markup is
    empty. ``"Run `ls -la` now."`` -> ``"Run   now."``; ``"shell('df -h')"`` -> ``""``; a fenced Python answer
    with one sentence before it -> that sentence. See :func:`prose_of` for one string.
    """
    whole = text.str.contains(WHOLE_CALL)
    masked = text.str.replace_all(_SPANS_RE, " ").str.replace_all(CODE_LINE, " ")
    return pl.when(whole).then(pl.lit("")).otherwise(masked)


_WHOLE = re.compile(WHOLE_CALL)
_SPANS = re.compile(_SPANS_RE)
_LINES = re.compile(CODE_LINE)


def prose_of(text: str) -> str:
    """:func:`prose` of one string (the same regexes): ``prose_of("$x^2 + 1$ is positive.")`` -> ``"  is positive."``."""
    return "" if _WHOLE.search(text) else _LINES.sub(" ", _SPANS.sub(" ", text))
