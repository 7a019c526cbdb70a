"""PII scrubbing: emails, phone numbers, IPv4/IPv6 addresses, payment card numbers and IBANs (plus optional custom
regexes) replaced by typed placeholders (``[EMAIL]``, ``[PHONE]``, ...) in ``text`` and in every message.

Each detector is a regex for candidates plus a validator, so near-misses stay: a card number must pass the Luhn
check and carry a known issuer prefix; an IBAN must have its country's length and pass ISO 13616 mod-97; an IP
must parse (``ipaddress``) and an IPv4 must not sit inside a longer dotted run (``1.2.3.4.5``) or follow
"version"/"v"; a phone number needs 7-15 digits and a phone shape (a leading ``+``, an area code in
parentheses, or grouped like ``555-123-4567`` / ``020 7946 0958``) and is never a date, ISBN or a plain number.

Worked example (``scrub``)::

    "Mail jo@example.org or call +44 20 7946 0958; card 4111 1111 1111 1111 (v1.2.3.4 on 2024-01-15)"
    -> "Mail [EMAIL] or call [PHONE]; card [CREDIT_CARD] (v1.2.3.4 on 2024-01-15)"
    counts {"email": 1, "phone": 1, "credit_card": 1}

Measured on tests/data/pii_labelled.jsonl (bench/pii.py prints precision and recall per type).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gristmill.common.contract import StepResult, no_drops, require, split, with_meta

VERSION = "1"
PiiType = Literal["email", "phone", "ipv4", "ipv6", "credit_card", "iban"]
ALL_TYPES: tuple[PiiType, ...] = ("email", "iban", "credit_card", "ipv6", "ipv4", "phone")  # detection order


class PiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    types: list[PiiType] = list(ALL_TYPES)
    """Which kinds of PII to find (all by default)."""
    custom: dict[str, str] = Field(default_factory=dict)
    """Extra patterns, name -> Python regex; a match becomes ``[NAME]`` (e.g. ``{employee_id: "EMP-\\\\d{6}"}``)."""
    action: Literal["replace", "drop"] = "replace"
    """replace: keep the row with placeholders; drop: drop rows holding PII (reason ``pii``, detail the types)."""

    @field_validator("custom")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"custom: name {name!r} must be letters, digits and _ (it becomes [{name.upper()}])")
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"custom.{name}: not a valid regex ({err})") from err
        return value


# -- validators -----------------------------------------------------------------------------------------------------

def luhn_ok(digits: str) -> bool:
    """The Luhn checksum: from the right, double every second digit (minus 9 when over 9); the sum ends in 0.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 lengths for the countries seen in practice (an unknown country is not an IBAN here).
IBAN_LENGTHS = {"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
                "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
                "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
                "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
                "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
                "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
                "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20}


def iban_ok(candidate: str) -> bool:
    """ISO 13616: the country's length, then the first four characters moved to the end, letters as numbers
    (A=10 ... Z=35), and the number mod 97 equals 1.

    >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    s = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5)|3(?:0[0-5]|[68])|35")


def card_ok(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


def _ipv6_ok(candidate: str) -> bool:
    if candidate.count(":") < 2 or (":::" in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    groups = [g for g in candidate.split(":") if g]
    # "12:30:45" never parses; a bare "::" or "::1"-like fragment inside code is still an address worth hiding.
    return len(groups) >= 2 or "::" in candidate and bool(groups)


def _phone_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"(19|20)\d\d[-/.](0?[1-9]|1[0-2])[-/.](0?[1-9]|[12]\d|3[01])", candidate.strip()):
        return False  # an ISO date
    # An ISBN-13 written with its hyphens is not a phone number.
    return not re.fullmatch(r"97[89][- ]\d{1,5}[- ]\d{1,7}[- ]\d{1,7}[- ]\d", candidate.strip())


# -- detectors ------------------------------------------------------------------------------------------------------

_DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "email": (re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
              lambda s: True),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), iban_ok),
    # Not after "+": an international phone number without separators can pass Luhn by chance.
    "credit_card": (re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])"), card_ok),
    # The dotted IPv4 tail first (::ffff:192.0.2.128), else the hex group would stop at "192".
    "ipv6": (re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
                        r"(?![\w:])"), _ipv6_ok),
    "ipv4": (re.compile(r"(?<![\w.])(?<!version )(?<!v)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"), lambda s: True),
    "phone": (re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                         r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
                         r"|\d{3}[-.]\d{3}[-.]\d{4}"
                         r"|0\d{2,4} \d{3,4} \d{3,4})(?![\w-]|\.\d)"), _phone_ok),
}


def compile_custom(custom: dict[str, str]) -> dict[str, tuple[re.Pattern[str], Callable[[str], bool]]]:
    return {name: (re.compile(pattern), lambda s: True) for name, pattern in custom.items()}


def find(text: str, types: tuple[str, ...] | list[str] = ALL_TYPES,
         custom: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """``(type, matched text)`` for every PII item in ``text``, in detection order (see ``scrub``)."""
    return scrub(text, types, custom)[2]


def scrub(text: str, types: tuple[str, ...] | list[str] = ALL_TYPES, custom: dict[str, str] | None = None
          ) -> tuple[str, Counter[str], list[tuple[str, str]]]:
    """``text`` with each PII item replaced by ``[TYPE]``, the counts per type, and the items found.

    Detectors run in ``ALL_TYPES`` order (then the custom ones) on the text as replaced so far, so an email's
    digits are never read again as a phone number.
    """
    detectors = [(t, _DETECTORS[t]) for t in ALL_TYPES if t in types]
    detectors += list(compile_custom(custom or {}).items())
    counts: Counter[str] = Counter()
    found: list[tuple[str, str]] = []
    for name, (pattern, valid) in detectors:
        def replace(match: re.Match[str], name: str = name, valid: Callable[[str], bool] = valid) -> str:
            value = match.group(0)
            if not value or not valid(value):
                return value
            counts[name] += 1
            found.append((name, value))
            return f"[{name.upper()}]"

        text = pattern.sub(replace, text)
    return text, counts, found


# -- the step -------------------------------------------------------------------------------------------------------

def scrub_pii(frame: pl.DataFrame, params: PiiParams) -> StepResult:
    """Replace (or, with ``action: drop``, drop rows holding) PII in ``text`` and every message's content.

    ``meta.pii`` holds a row's replacements per type (JSON-free: ``{type: n}`` as a struct); stats count rows and
    items per type, so the report shows what was scrubbed without showing any of it.
    """
    require(frame, ["text"], "scrub_pii")
    types = params.types

    texts, row_counts = [], []
    for value in frame["text"].to_list():
        new, counts, _ = scrub(value or "", types, params.custom)
        texts.append(new if value is not None else None)
        row_counts.append(counts)
    columns = [pl.Series("text", texts, dtype=pl.String)]
    if "messages" in frame.columns:
        scrubbed = []
        for messages in frame["messages"].to_list():
            if messages is None:
                scrubbed.append(None)
                continue
            scrubbed.append([{**m, "content": scrub(m["content"] or "", types, params.custom)[0]
                              if m.get("content") is not None else None} for m in messages])
        columns.append(pl.Series("messages", scrubbed, dtype=frame.schema["messages"]))
    names = [*[t for t in ALL_TYPES if t in types], *params.custom]
    per_type = {n: sum(c[n] for c in row_counts) for n in names}
    found = pl.Series([sum(c.values()) for c in row_counts], dtype=pl.Int64)
    detail = pl.Series([", ".join(f"{k} {v}" for k, v in sorted(c.items())) or None for c in row_counts],
                       dtype=pl.String)
    stats = {"pii_items": per_type, "pii_rows": int((found > 0).sum())}
    if params.action == "drop":
        marked = frame.with_columns(detail.alias("detail"))
        kept, dropped = split(marked, pl.when(found > 0).then(pl.lit("pii")).otherwise(None))
        return StepResult(kept.drop("detail"), dropped, stats, frame.height)
    out = with_meta(frame.with_columns(columns), pii=found)
    return StepResult(out, no_drops(out), stats, frame.height)
