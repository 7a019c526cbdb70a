"""The ``instruction`` rule set: defects of instruction/chat rows, judged on the ``messages`` turns by role.

Web-document rules (Gopher, C4, FineWeb) judge a page; here the response is judged as a response to its prompt.
Every assistant turn is checked, and a row breaks a rule when any of its assistant turns does (the detail names
the turn in a multi-turn row). Rules, in order:

- ``instruction.min_response_chars`` (count, 1): letters and digits in the response; an empty or whitespace-only
  answer (or none) has 0. A one-character answer (``4``) passes.
- ``instruction.truncated`` (flag): the response stops mid-way: an unclosed code fence, more opening than closing
  brackets or curly quotes, or a prose response whose last sentence ends without terminal punctuation on a
  lower-case word, a comma, colon or a function word (``... and the``). Short answers (``Paris``), tool calls
  (``shell('df -h')``), poems, lists and letter sign-offs (``Yours sincerely, Jane``) are not truncated.
- ``instruction.max_echo`` (ratio, 0.6): share of the response's word 3-grams found in the prompt; an answer that
  restates the question scores near 1. Responses under 3 words score 1 only when equal to the prompt.
- ``instruction.refusal`` (flag): canned refusals and "As an AI language model" boilerplate. A role the prompt
  asks for ("As an AI personal assistant, I ...") is not boilerplate.
- ``instruction.placeholder`` (flag, any turn): template leakage such as ``<caesar_speech>``, ``{{name}}``,
  ``" + input + "``, ``[Your Name]``, ``<|im_start|>``, ``### Response:``. Fenced and inline code in a response
  are skipped (a Jinja template answer is code, not leakage).
- ``instruction.min_words_outside_links`` (count, 5): for a response whose prose holds a URL or a citation
  marker, the words left without them; a link-only answer has fewer. Responses without links break nothing, nor
  do links inside code or a tool call (``browse("https://...")``; curation/textstats.py ``prose``).

Worked example: ``[user: "Name a red fruit.", assistant: "  "]`` breaks ``min_response_chars`` with detail
``response_chars=0 < 1``; ``[user: "Name a red fruit.", assistant: "Strawberry"]`` breaks nothing.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from gristmill.common.contract import require
from gristmill.common.errors import InputError
from gristmill.curation.rulebase import DETAIL_PREFIX, Rule, fmt_number
from gristmill.curation.textstats import prose_of

INSTRUCTION = (
    Rule("instruction.min_response_chars", "<", 1, "count"),
    Rule("instruction.truncated", "flag"),
    Rule("instruction.max_echo", ">", 0.6),
    Rule("instruction.refusal", "flag"),
    Rule("instruction.placeholder", "flag"),
    Rule("instruction.min_words_outside_links", "<", 5, "count"),
)

_ALNUM = re.compile(r"[^\W_]")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_FENCE = re.compile(r"(?m)^\s*(```|~~~)")
_CODE = re.compile(r"```.*?(?:```|$)|~~~.*?(?:~~~|$)|`[^`\n]*`", re.S)
_TERMINAL = ".!?…\"'”’)]}>*`"
_FUNCTION_WORDS = frozenset(str.split(
    "the a an and or but of to in on at for with from by as that which who whose is are was were be been "
    "this these those their its our your my his her into onto than then because while if when where however "
    "furthermore moreover additionally firstly secondly finally also although it they we i he she there"))
_SIGN_OFF = re.compile(
    r"(?i)(?:^|[\s,.!?])(?:yours|sincerely|regards|love|respect|wishes|faithfully|truly|cheers|best|"
    r"warmly|affectionately|gratitude|hope|admiration|thanks|regard)\b[^.!?\n]{0,40}[,\n]\s*[-–—]?\s*\S.{0,60}$")
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"), ("“", "”"))

_REFUSALS = tuple(re.compile(p, re.I | re.M) for p in (
    r"\bas an ai(?:-powered)? (?:language )?model\b",
    r"\bas a (?:large )?language model\b",
    r"\bas an? (?:ai|artificial intelligence)(?: assistant| system| model)?,? i (?:do not|don't|cannot|can't|"
    r"am unable|am not able|have no)\b",
    r"\bi(?:'m| am) (?:just |only )?an ai(?: assistant| language model)?\b[^.]{0,60}\b(?:can't|cannot|don't|do not)\b",
    r"^\W*(?:i'm sorry|i am sorry|i apologi[sz]e|sorry|unfortunately)[,.!]?\s*(?:but\s*)?,?\s*i (?:can't|cannot|"
    r"can not|am unable to|am not able to|won't|will not|must decline)\b",
    r"^\W*i(?:'m| am)? (?:can't|cannot|unable to|not able to|won't|won't be able to|will not be able to|must "
    r"decline to) (?:help|assist|comply|fulfill|provide|create|generate|write|answer|do that|engage|complete|"
    r"take part|participate)\b(?! but\b)",  # "I can't help but smile" is no refusal
    r"^\W*(?:as much as|much as|while|though|although) i(?:'d| would) (?:like|love) to,? (?:but )?i (?:can't|"
    r"cannot|won't|am unable to|am not able to)\b",
    r"^\W*(?:that's|that is|this is|it's|it is) not something i(?: can| could|'m able to| am able to) "
    r"(?:help|assist|do|write|provide|create|answer)\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
))
_PERSONA = 4
"""The first patterns of ``_REFUSALS`` are persona boilerplate, skipped when the prompt asks for an AI persona."""
_ASKS_PERSONA = re.compile(r"(?i)\b(?:an ai|a language model|ai language model|an artificial intelligence)\b")
_PLACEHOLDERS = tuple(re.compile(p, re.I if i >= 2 else 0) for i, p in enumerate((
    r"<[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+>",  # <caesar_speech> (snake_case inside angle brackets)
    r"\{\{\s*[\w.]+\s*\}\}|\{(?:input|instruction|output|question|answer|context|text|query|prompt|response)\}",
    r"\"\s*\+\s*\w+\s*\+\s*\"|'\s*\+\s*\w+\s*\+\s*'",  # " + input + "
    r"\[(?:insert|your|placeholder|name of|enter)\b[^\]\n]{0,40}\]",  # [Your Name], [insert date]
    r"(?-i:\[(?:[A-Z][a-z]+ ){0,3}(?:Name|Date|Address|Company|Email|Phone Number|Signature|Recipient)\])",
    r"<(?:insert|your|placeholder)\b[^<>\n]{0,40}>",
    r"<\|[a-z_]+\|>|\[/?INST\]|^\s*#{2,3}\s*(?:instruction|response|input)\s*:",
)))
_LINK = re.compile(r"https?://\S+|\bwww\.\S+")
_CITATION = re.compile(r"\[\d+(?:[,-]\s*\d+)*\]|\(\s*[A-Z][\w-]+(?: et al\.)?,? \d{4}\s*\)")


def _turns(messages: list[dict[str, Any]] | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(all turns, assistant turns each with the user text before it) as (content, prompt) pairs."""
    turns: list[tuple[str, str]] = []
    answered: list[tuple[str, str]] = []
    prompt = ""
    for m in messages or []:
        role, content = m.get("role"), m.get("content") or ""
        turns.append((role or "", content))
        if role == "assistant":
            answered.append((content, prompt))
        elif role == "user":
            prompt = content
    return turns, answered


def truncation(response: str) -> str | None:
    """Why ``response`` looks cut off, or None.

    >>> truncation("Mix the flour and the")
    "ends mid-sentence: '...Mix the flour and the'"
    >>> truncation("Paris"), truncation("shell('df -h')"), truncation("Yours sincerely, Jane Austen")
    (None, None, None)
    """
    text = response.rstrip()
    if not text:
        return None
    fences = len(_FENCE.findall(text))
    if fences % 2:
        return f"unclosed code block ({fences} fences)"
    prose = _CODE.sub(" ", text)
    for open_, close in _PAIRS:
        if prose.count(open_) > prose.count(close):
            return f"unclosed '{open_}' ({prose.count(open_)} opened, {prose.count(close)} closed)"
    if text[-1] in _TERMINAL or not _WORD.search(prose_of(text)):  # code, a call or JSON: brackets said enough
        return None
    last_line = text.rsplit("\n", 1)[-1].strip()
    tail = re.split(r"[.!?…]+[\"'”’)\]]*\s", last_line)[-1]
    words = _WORD.findall(tail)
    ends_weak = text[-1] in ",;:-–—" or (bool(words) and words[-1].lower() in _FUNCTION_WORDS)
    lower_end = bool(words) and words[-1][0].islower() and not words[-1].isdigit()
    is_prose = bool(re.search(r"[.!?][\"'”’)]*\s", text))  # at least one finished sentence before the tail
    if _SIGN_OFF.search(text[-120:]) and not ends_weak:
        return None
    if ends_weak and (len(words) >= 2 or is_prose) or lower_end and len(words) >= (2 if is_prose else 8):
        return f"ends mid-sentence: '...{tail[-40:].strip()}'"
    return None


def echo(response: str, prompt: str) -> float:
    """Share of the response's word 3-grams (lower-cased) that occur in the prompt.

    >>> echo("How do I boil an egg?", "How do I boil an egg?"), echo("Boil it for nine minutes.", "How do I boil an egg?")
    (1.0, 0.0)
    """
    r, p = _WORD.findall(response.lower()), _WORD.findall(prompt.lower())
    if len(r) < 3:
        return 1.0 if r and r == p else 0.0
    grams = list(zip(r, r[1:], r[2:], strict=False))
    seen = set(zip(p, p[1:], p[2:], strict=False))
    return sum(g in seen for g in grams) / len(grams)


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> str | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return match.group(0).strip()
    return None


def _where(i: int, n: int) -> str:
    return f" (assistant turn {i + 1})" if n > 1 else ""


def row_metrics(messages: list[dict[str, Any]] | None, thresholds: dict[str, float]) -> dict[str, Any]:
    """The rule set's metrics and details for one row (see the module docstring)."""
    turns, answered = _turns(messages)
    n = len(answered)
    out: dict[str, Any] = {r.name: None for r in INSTRUCTION}
    details: dict[str, str | None] = {r.name: None for r in INSTRUCTION}
    chars = [len(_ALNUM.findall(a)) for a, _ in answered]
    low = min(range(n), key=chars.__getitem__) if n else None
    out["instruction.min_response_chars"] = chars[low] if low is not None else 0
    t_min = thresholds["instruction.min_response_chars"]
    details["instruction.min_response_chars"] = (
        f"response_chars={out['instruction.min_response_chars']} < {fmt_number(t_min)}"
        + (_where(low, n) if low is not None else " (no assistant turn)"))
    if answered:  # only the last answer can be cut off by a length limit
        why = truncation(answered[-1][0])
        out["instruction.truncated"] = why is not None
        details["instruction.truncated"] = why
    echoes = [echo(a, p) for a, p in answered]
    if echoes:
        top = max(range(n), key=echoes.__getitem__)
        out["instruction.max_echo"] = echoes[top]
        details["instruction.max_echo"] = (f"echo={echoes[top]:.2f} > {fmt_number(thresholds['instruction.max_echo'])}"
                                           + _where(top, n))
    for i, (answer, prompt) in enumerate(answered):
        # "Pretend to be an AI language model ..." asks for the role: the persona phrases are then the answer.
        patterns = _REFUSALS[_PERSONA:] if _ASKS_PERSONA.search(prompt) else _REFUSALS
        phrase = _first(patterns, answer.replace("’", "'"))
        if phrase:
            out["instruction.refusal"] = True
            details["instruction.refusal"] = f"refusal phrase '{phrase[:60]}'" + _where(i, n)
            break
    for k, (role, content) in enumerate(turns):
        scanned = _CODE.sub(" ", content) if role == "assistant" else content
        found = _first(_PLACEHOLDERS, scanned)
        if found:
            out["instruction.placeholder"] = True
            details["instruction.placeholder"] = f"placeholder '{found[:40]}' in {role or 'unknown'} turn {k + 1}"
            break
    t_links = thresholds["instruction.min_words_outside_links"]
    for i, (answer, _) in enumerate(answered):
        text = prose_of(answer)  # a link inside code or a tool call (browse("https://...")) is no citation
        if _LINK.search(text) or _CITATION.search(text):
            left = len(_WORD.findall(_CITATION.sub(" ", _LINK.sub(" ", text))))
            if out["instruction.min_words_outside_links"] is None or left < out["instruction.min_words_outside_links"]:
                out["instruction.min_words_outside_links"] = left
                details["instruction.min_words_outside_links"] = (
                    f"words_outside_links={left} < {fmt_number(t_links)}" + _where(i, n))
    out.update({DETAIL_PREFIX + k: v for k, v in details.items()})
    return out


def instruction_metrics(frame: pl.DataFrame, thresholds: dict[str, float]) -> pl.DataFrame:
    """One column per rule (and a ``detail:<rule>`` column each), one row per input row."""
    require(frame, ["messages"], "heuristics (instruction rule set)")
    if frame.schema["messages"] == pl.Null:
        raise InputError("heuristics: the instruction rule set judges `messages` (role/content turns); this frame "
                         "has none: read instruction data with an alpaca, sharegpt or messages mapping")
    schema: dict[str, Any] = {}
    for r in INSTRUCTION:
        schema[r.name] = pl.Boolean if r.breaks == "flag" else (pl.Float64 if r.kind == "ratio" else pl.Int64)
    schema |= {DETAIL_PREFIX + r.name: pl.String for r in INSTRUCTION}
    rows = [row_metrics(m, thresholds) for m in frame["messages"].to_list()]
    return pl.DataFrame(rows, schema=schema)
