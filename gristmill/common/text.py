"""Conversation text: the one way a row's ``messages`` become its ``text`` and an instruction triple becomes
``messages``, used by ingest and by every synthesis method so the same conversation always gives the same text.

Worked example: ``instruction_messages("Add.", "2 3", "5")`` gives text ``"Add.\\n\\n2 3\\n\\n5"`` and
messages ``[user: "Add.\\n\\n2 3", assistant: "5"]``; ``messages_text`` of those messages is the same text.
Parts that are empty or only whitespace are left out; contents are kept as they are (``normalize`` cleans them).
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def messages_text(messages: list[Message] | list[dict[str, Any]]) -> str:
    """The non-system turns' contents joined by a blank line, skipping empty turns."""
    return "\n\n".join(m["content"] for m in messages
                       if m.get("role") != "system" and (m.get("content") or "").strip())


def instruction_messages(instruction: str, extra: str, output: str) -> tuple[str, list[Message]]:
    """``(text, messages)`` of an alpaca-style row: the input follows the instruction in the user turn."""
    user = instruction + (f"\n\n{extra}" if extra.strip() else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    text = "\n\n".join(p for p in (instruction, extra, output) if p.strip())
    return text, messages
