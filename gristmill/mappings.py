"""Record mappings: alpaca, sharegpt, messages and text rows to the data contract (text + messages).

Each mapper takes one raw record (a dict) and returns ``(text, messages)`` or raises ``ValueError`` with a message
that says which field is wrong and what shape is expected.

Worked example (alpaca): ``{"instruction": "Add.", "input": "2 3", "output": "5"}`` ->
text ``"Add.\\n\\n2 3\\n\\n5"``, messages ``[user: "Add.\\n\\n2 3", assistant: "5"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Message = dict[str, str]
Mapped = tuple[str, list[Message] | None]

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_ROLES = {"system", "user", "assistant", "tool"}


def _str_field(record: dict[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def map_alpaca(record: dict[str, Any]) -> Mapped:
    instruction = _str_field(record, "instruction")
    extra = _str_field(record, "input", required=False)
    output = _str_field(record, "output")
    user = instruction + (f"\n\n{extra}" if extra.strip() else "")
    text = "\n\n".join(p for p in (instruction, extra, output) if p.strip())
    return text, [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _messages_text(messages: list[Message]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] != "system")


def map_sharegpt(record: dict[str, Any]) -> Mapped:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' must be a non-empty list of {from, value}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"conversations[{i}] must be an object with a string 'value'")
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(
                f"conversations[{i}].from = {turn.get('from')!r} is not one of {sorted(_SHAREGPT_ROLES)}"
            )
        messages.append({"role": role, "content": turn["value"]})
    return _messages_text(messages), messages


def map_messages(record: dict[str, Any]) -> Mapped:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("field 'messages' must be a non-empty list of {role, content}")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be {{role: one of {sorted(_ROLES)}, content: string}}")
        messages.append({"role": m["role"], "content": m["content"]})
    return _messages_text(messages), messages


def map_text(record: dict[str, Any]) -> Mapped:
    return _str_field(record, "text"), None


MAPPERS: dict[str, Callable[[dict[str, Any]], Mapped]] = {
    "alpaca": map_alpaca,
    "sharegpt": map_sharegpt,
    "messages": map_messages,
    "text": map_text,
}
# Fields a mapping consumes; everything else passes through as its own column.
CONSUMED = {
    "alpaca": {"instruction", "input", "output"},
    "sharegpt": {"conversations"},
    "messages": {"messages"},
    "text": {"text"},
}
