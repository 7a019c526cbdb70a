"""Parsing and validating generated records and answers; every failure has a named reason.

Reasons: ``unparseable`` (no JSON object), ``truncated`` (hit max_tokens), ``missing_field``, ``empty`` (nothing
but whitespace, punctuation or stop words), ``too_short``, ``refusal`` (the model declined), ``too_long`` (over the
character limit), ``leaked_template`` (the output copies the prompt's own wording).

JSON is read leniently: a reply wrapped in a code fence or with prose around one JSON object still parses
(engines without structured output often do that); the first complete object wins.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gristmill.synth.engine import PROMPT_TOO_LONG

TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "instruction": {"type": "string"},
        "input": {"type": "string"},
        "output": {"type": "string"},
    },
    "required": ["instruction", "input", "output"],
}

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|i cannot|i can'?t (help|assist|do)|as an ai\b|i'?m (just )?an ai\b)", re.I
)
_SORRY = re.compile(r"\b(sorry|as an ai language model)\b", re.I)
_WORD = re.compile(r"\w+")
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n?(.*?)\n?\s*```\s*$", re.S)
# "#Rewritten Prompt#"-style markers and phrases that only make sense inside a rewriting prompt.
_LEAK = re.compile(r"\b(given|original|rewritten|evolved)\s+(prompt|instruction|task)s?\b", re.I)
_MARKER = re.compile(r"#\s?[A-Z][A-Za-z]*(?: [A-Za-z]+){0,3}\s?#")
STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "if", "then", "so", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "there",
    "here", "i", "you", "he", "she", "we", "they", "me", "my", "your", "our", "their"
})


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_prompt(finish_reason: str | None) -> None:
    if finish_reason == PROMPT_TOO_LONG:
        raise Rejected(PROMPT_TOO_LONG, "the prompt does not fit the model's context; shorten the seed/source rows "
                       "or raise the model's max length")


def json_object(text: str, finish_reason: str | None) -> dict[str, Any]:
    """The JSON object in ``text`` (bare, fenced, or the first one amid prose); ``Rejected`` if there is none.

    >>> json_object('Sure! ```json\\n{"a": 1}\\n```', "stop")
    {'a': 1}
    """
    _check_prompt(finish_reason)
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        obj, start = None, body.find("{")
        while start != -1 and obj is None:
            try:
                obj = json.JSONDecoder().raw_decode(body, start)[0]
            except json.JSONDecodeError:
                start = body.find("{", start + 1)
        if obj is None:
            reason = "truncated" if finish_reason == "length" else "unparseable"
            raise Rejected(reason, err.msg) from err
    if not isinstance(obj, dict):
        raise Rejected("unparseable", "not a JSON object")
    return obj


def is_refusal(text: str, sorry_below_words: int = 0) -> bool:
    """The model declined: the text opens with a refusal, or (with ``sorry_below_words``) says "sorry" and is
    shorter than that many words (WizardLM's elimination rule uses 80)."""
    if _REFUSAL.search(text):
        return True
    return bool(sorry_below_words) and bool(_SORRY.search(text)) and len(_WORD.findall(text)) < sorry_below_words


def is_empty(text: str) -> bool:
    """Nothing but whitespace, punctuation and stop words."""
    return all(w in STOP_WORDS for w in _WORD.findall(text.lower()))


def parse_record(
    text: str,
    finish_reason: str | None,
    fields: tuple[str, ...],
    *,
    optional: tuple[str, ...] = (),
    refusal_field: str | None = "output",
    max_chars: int = 4000,
) -> dict[str, str]:
    """Parse one generated JSON record with string ``fields`` (those in ``optional`` default to "").

    >>> parse_record('{"instruction": " Hi. "}', "stop", ("instruction",), refusal_field=None)
    {'instruction': 'Hi.'}
    """
    obj = json_object(text, finish_reason)
    out: dict[str, str] = {}
    for key in fields:
        value = obj.get(key, "" if key in optional else None)
        if not isinstance(value, str):
            raise Rejected("missing_field", key)
        out[key] = value.strip()
    blank = [k for k in fields if k not in optional and not out[k]]
    if blank:
        raise Rejected("empty", f"{', '.join(blank)} is empty")
    if refusal_field and _REFUSAL.search(out[refusal_field]):
        raise Rejected("refusal")
    if sum(len(v) for v in out.values()) > max_chars:
        raise Rejected("too_long", f"over {max_chars} characters")
    return out


def parse_task(text: str, finish_reason: str | None, max_chars: int = 4000) -> dict[str, str]:
    """Parse one generated task; raise ``Rejected`` with a reason on any defect.

    >>> parse_task('{"instruction": "Add 2 and 3.", "input": "", "output": "5"}', "stop")
    {'instruction': 'Add 2 and 3.', 'input': '', 'output': '5'}
    """
    return parse_record(text, finish_reason, ("instruction", "input", "output"), optional=("input",),
                        max_chars=max_chars)


def parse_answer(
    text: str, finish_reason: str | None, *, min_words: int = 1, sorry_below_words: int = 0, max_chars: int = 8000
) -> str:
    """A plain-text answer, stripped; ``Rejected`` when truncated, empty, too short, a refusal or too long.

    >>> parse_answer("  Paris is the capital of France. ", "stop")
    'Paris is the capital of France.'
    """
    _check_prompt(finish_reason)
    answer = text.strip()
    if finish_reason == "length":
        raise Rejected("truncated", "hit max_tokens")
    if is_empty(answer):
        raise Rejected("empty", "only whitespace, punctuation or stop words")
    if len(_WORD.findall(answer)) < min_words:
        raise Rejected("too_short", f"fewer than {min_words} words")
    if is_refusal(answer, sorry_below_words):
        raise Rejected("refusal")
    if len(answer) > max_chars:
        raise Rejected("too_long", f"over {max_chars} characters")
    return answer


def leaks_template(text: str, template: str, ngram: int = 6) -> bool:
    """``text`` copies the prompt's wording: a rewriting marker (``#Rewritten Prompt#``, "the given prompt") or
    any run of ``ngram`` words of ``template`` (its ``{placeholders}`` removed).

    >>> leaks_template("Rewritten Prompt: add two numbers", "Rewrite the task.")
    True
    """
    if _LEAK.search(text) or _MARKER.search(text):
        return True
    words = _WORD.findall(re.sub(r"\{\w+\}", " ", template).lower())
    grams = {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}
    found = _WORD.findall(text.lower())
    return any(tuple(found[i:i + ngram]) in grams for i in range(len(found) - ngram + 1))
