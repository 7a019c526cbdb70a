"""Parsing and validating generated task records; every failure has a named reason.

Reasons: ``unparseable`` (not a JSON object), ``truncated`` (hit max_tokens), ``missing_field``, ``empty``,
``refusal`` (the model declined), ``too_long`` (over the character limit).
"""

from __future__ import annotations

import json
import re
from typing import Any

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


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse_task(text: str, finish_reason: str | None, max_chars: int = 4000) -> dict[str, str]:
    """Parse one generated task; raise ``Rejected`` with a reason on any defect.

    >>> parse_task('{"instruction": "Add 2 and 3.", "input": "", "output": "5"}', "stop")
    {'instruction': 'Add 2 and 3.', 'input': '', 'output': '5'}
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        reason = "truncated" if finish_reason == "length" else "unparseable"
        raise Rejected(reason, err.msg) from err
    if not isinstance(obj, dict):
        raise Rejected("unparseable", "not a JSON object")
    out: dict[str, str] = {}
    for key in ("instruction", "input", "output"):
        value = obj.get(key, "" if key == "input" else None)
        if not isinstance(value, str):
            raise Rejected("missing_field", key)
        out[key] = value.strip()
    if not out["instruction"] or not out["output"]:
        raise Rejected("empty", "instruction or output is empty")
    if _REFUSAL.search(out["output"]):
        raise Rejected("refusal")
    if sum(len(v) for v in out.values()) > max_chars:
        raise Rejected("too_long", f"over {max_chars} characters")
    return out
