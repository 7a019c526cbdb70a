"""Record mappings: alpaca, sharegpt, messages and text rows to the data contract (text + messages).

Each mapping has two forms with one meaning. ``Mapping.columns`` maps a whole frame with polars expressions:
per row an error message (null when the row is fine), the text and the messages. ``Mapping.row`` maps one record
(a dict) and raises ``ValueError``; it is the reference, and ingest hands it only the rows the columnar form
marks ``RECHECK``: values polars may have coerced from mixed JSON types (``5`` read as ``"5"``), nested values of
unusual types, a role whose Python ``repr`` the message needs. Texts come from ``gristmill.common.text``.

Worked example (alpaca): ``{"instruction": "Add.", "input": "2 3", "output": "5"}`` ->
text ``"Add.\\n\\n2 3\\n\\n5"``, messages ``[user: "Add.\\n\\n2 3", assistant: "5"]``; a row whose
``output`` is null gets the error ``missing field 'output'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import polars as pl

from gristmill.common.contract import MESSAGES_DTYPE
from gristmill.common.text import Message, instruction_messages, messages_text

Mapped = tuple[str, list[Message] | None]
RECHECK = "\x00recheck"
"""An error value meaning: let ``Mapping.row`` decide this row (its message, or its text and messages)."""

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_ROLES = {"system", "user", "assistant", "tool"}
# Python's str.strip() whitespace is Unicode White_Space (the regex \s) plus \x1c-\x1f.
_HAS_CONTENT = r"[^\s\x1c-\x1f]"
# What polars makes of a number, boolean, list or object in a String column of mixed JSON types.
_COERCED = r"(?s)^(?:-?\d[\d.eE+-]*|true|false|\[.*\]|\{.*\})$"
# Strings whose repr is '<the string>': printable ASCII without quotes or backslashes.
_PLAIN = r"^[ !#-&(-\[\]-~]*$"
_NULL_STR = pl.lit(None, dtype=pl.String)


def _missing(key: str) -> str:
    return f"missing field {key!r}"


def _not_string(key: str, type_name: str) -> str:
    return f"field {key!r} must be a string, got {type_name}"


_SHAREGPT_SHAPE = "field 'conversations' must be a non-empty list of {from, value}"
_SHAREGPT_TURN = "conversations[{}] must be an object with a string 'value'"
_SHAREGPT_FROM = "conversations[{}].from = {} is not one of " + str(sorted(_SHAREGPT_ROLES))
_MESSAGES_SHAPE = "field 'messages' must be a non-empty list of {role, content}"
_MESSAGES_TURN = "messages[{}] must be {role: one of " + str(sorted(_ROLES)) + ", content: string}"


def _fill(template: str, *values: object) -> str:
    """``template`` with each ``{}`` replaced in turn (other braces are literal, unlike ``str.format``)."""
    first, *rest = template.split("{}")
    return first + "".join(str(v) + part for v, part in zip(values, rest, strict=True))


def _fill_expr(template: str, *values: pl.Expr) -> pl.Expr:
    """``_fill`` as an expression (``pl.format`` reads ``{name}`` as a column)."""
    first, *rest = template.split("{}")
    parts: list[pl.Expr] = [pl.lit(first)]
    for value, part in zip(values, rest, strict=True):
        parts += [value.cast(pl.String), pl.lit(part)]
    return pl.concat_str(parts)


# --- per record (the reference) --------------------------------------------------------------------------------

def _str_field(record: dict[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(_missing(key))
        return ""
    if not isinstance(value, str):
        raise ValueError(_not_string(key, type(value).__name__))
    return value


def map_alpaca(record: dict[str, Any]) -> Mapped:
    text, messages = instruction_messages(_str_field(record, "instruction"),
                                          _str_field(record, "input", required=False), _str_field(record, "output"))
    return text, messages


def map_sharegpt(record: dict[str, Any]) -> Mapped:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(_SHAREGPT_SHAPE)
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(_fill(_SHAREGPT_TURN, i))
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(_fill(_SHAREGPT_FROM, i, repr(turn.get("from"))))
        messages.append({"role": role, "content": turn["value"]})
    return messages_text(messages), messages


def map_messages(record: dict[str, Any]) -> Mapped:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError(_MESSAGES_SHAPE)
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _ROLES \
                or not isinstance(m.get("content"), str):
            raise ValueError(_fill(_MESSAGES_TURN, i))
        messages.append({"role": m["role"], "content": m["content"]})
    return messages_text(messages), messages


def map_text(record: dict[str, Any]) -> Mapped:
    return _str_field(record, "text"), None


# --- columnar --------------------------------------------------------------------------------------------------

class Columns(NamedTuple):
    """Per-row expressions: ``error`` (null = fine, ``RECHECK`` = ask the record mapper), ``text``, ``messages``."""

    error: pl.Expr
    text: pl.Expr
    messages: pl.Expr


def _is_string(dtype: pl.DataType) -> bool:
    return dtype.to_python() is str  # String, Categorical, Enum


def _string_column(frame: pl.DataFrame, key: str, exact: bool, required: bool = True) -> tuple[pl.Expr, pl.Expr]:
    """``(error, value)`` of a string field; a missing optional field reads as ``""``."""
    dtype = frame.schema.get(key, pl.Null)
    missing = pl.lit(_missing(key)) if required else _NULL_STR
    if dtype == pl.Null:
        return missing, pl.lit("")
    col = pl.col(key)
    if not _is_string(dtype):
        return pl.when(col.is_null()).then(missing).otherwise(pl.lit(_not_string(key, dtype.to_python().__name__))), \
            pl.lit("")
    col = col.cast(pl.String)
    error = pl.when(col.is_null()).then(missing).otherwise(_NULL_STR)
    if not exact:
        error = pl.when(col.str.contains(_COERCED)).then(pl.lit(RECHECK)).otherwise(error)
    return error, col.fill_null("")


def _has_content(text: pl.Expr) -> pl.Expr:
    return text.str.contains(_HAS_CONTENT)


def alpaca_columns(frame: pl.DataFrame, exact: bool) -> Columns:
    """``instruction_messages`` as expressions; errors in the order ``map_alpaca`` checks the fields."""
    err_i, instruction = _string_column(frame, "instruction", exact)
    err_e, extra = _string_column(frame, "input", exact, required=False)
    err_o, output = _string_column(frame, "output", exact)
    text = pl.concat_str([pl.when(_has_content(p)).then(p) for p in (instruction, extra, output)],
                         separator="\n\n", ignore_nulls=True)
    user = instruction + pl.when(_has_content(extra)).then(pl.lit("\n\n") + extra).otherwise(pl.lit(""))
    messages = pl.concat_list(pl.struct(role=pl.lit("user"), content=user),
                              pl.struct(role=pl.lit("assistant"), content=output))
    return Columns(pl.coalesce(err_i, err_e, err_o), text, messages)


def text_columns(frame: pl.DataFrame, exact: bool) -> Columns:
    error, text = _string_column(frame, "text", exact)
    return Columns(error, text, pl.lit(None, dtype=MESSAGES_DTYPE))


def _turn_fields(frame: pl.DataFrame, key: str, role: str, content: str) -> bool:
    """Whether ``key`` is a list of structs whose ``content`` field (and ``role`` field, when present) hold
    strings: the shape the expressions below decide exactly."""
    dtype = frame.schema[key]
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    return fields.get(content) == pl.String and fields.get(role, pl.String) in (pl.String, pl.Null)


def _field(inner: pl.DataType, name: str) -> pl.Expr:
    has = isinstance(inner, pl.Struct) and any(f.name == name for f in inner.fields)
    return pl.element().struct.field(name).cast(pl.String) if has else _NULL_STR


def _conversation(frame: pl.DataFrame, key: str, shape: str, exact: bool, role: str, content: str,
                  turn_error: Callable[[pl.Expr, pl.Expr, pl.Expr], pl.Expr],
                  to_role: Callable[[pl.Expr], pl.Expr]) -> Columns:
    """Shared by sharegpt and messages: ``turn_error(turn, role, content)`` gives the first bad turn's message."""
    nothing = pl.lit(None, dtype=MESSAGES_DTYPE)
    if frame.schema.get(key, pl.Null) == pl.Null:
        return Columns(pl.lit(shape), pl.lit(""), nothing)
    col = pl.col(key)
    if not isinstance(frame.schema[key], pl.List):
        # A String column of a JSON format may hold lists polars turned into text (mixed types).
        coerced = pl.lit(False) if exact or not _is_string(frame.schema[key]) else col.is_not_null()
        return Columns(pl.when(coerced).then(pl.lit(RECHECK)).otherwise(pl.lit(shape)), pl.lit(""), nothing)
    empty = col.is_null() | (col.list.len() == 0)
    if not _turn_fields(frame, key, role, content):
        return Columns(pl.when(empty).then(pl.lit(shape)).otherwise(pl.lit(RECHECK)), pl.lit(""), nothing)
    inner = frame.schema[key].inner  # type: ignore[attr-defined]
    raw_role, text = _field(inner, role), _field(inner, content)
    first_bad = col.list.eval(turn_error(pl.element(), raw_role, text)).list.drop_nulls().list.first()
    error = pl.when(empty).then(pl.lit(shape)).otherwise(first_bad)
    if not exact:
        coerced = col.list.eval(text.str.contains(_COERCED)).list.any()
        error = pl.when(~empty & coerced).then(pl.lit(RECHECK)).otherwise(error)
    messages = col.list.eval(pl.struct(to_role(raw_role).alias("role"), text.alias("content")))
    visible = messages.list.eval(
        pl.element().filter((pl.element().struct.field("role") != "system")
                            & _has_content(pl.element().struct.field("content"))).struct.field("content")
    )
    return Columns(error, visible.list.join("\n\n"), messages)


def _sharegpt_role(raw: pl.Expr) -> pl.Expr:
    return raw.str.to_lowercase().replace_strict(_SHAREGPT_ROLES, default=None, return_dtype=pl.String)


def _sharegpt_turn(turn: pl.Expr, raw_role: pl.Expr, content: pl.Expr) -> pl.Expr:
    index = pl.int_range(pl.len())
    unknown = _sharegpt_role(raw_role).is_null()
    return (
        pl.when(turn.is_null() | content.is_null()).then(_fill_expr(_SHAREGPT_TURN, index))
        .when(unknown & raw_role.is_null()).then(_fill_expr(_SHAREGPT_FROM, index, pl.lit("None")))
        .when(unknown & raw_role.str.contains(_PLAIN)).then(_fill_expr(_SHAREGPT_FROM, index, pl.lit("'") + raw_role + pl.lit("'")))
        .when(unknown).then(pl.lit(RECHECK))
        .otherwise(_NULL_STR)
    )


def _messages_turn(turn: pl.Expr, role: pl.Expr, content: pl.Expr) -> pl.Expr:
    bad = turn.is_null() | ~role.is_in(sorted(_ROLES)).fill_null(False) | content.is_null()
    return pl.when(bad).then(_fill_expr(_MESSAGES_TURN, pl.int_range(pl.len())))


def sharegpt_columns(frame: pl.DataFrame, exact: bool) -> Columns:
    return _conversation(frame, "conversations", _SHAREGPT_SHAPE, exact, "from", "value", _sharegpt_turn,
                         _sharegpt_role)


def messages_columns(frame: pl.DataFrame, exact: bool) -> Columns:
    return _conversation(frame, "messages", _MESSAGES_SHAPE, exact, "role", "content", _messages_turn, lambda r: r)


@dataclass(frozen=True)
class Mapping:
    """One mapping in both forms, and the fields it consumes (the others pass through as their own columns)."""

    consumed: frozenset[str]
    row: Callable[[dict[str, Any]], Mapped]
    columns: Callable[[pl.DataFrame, bool], Columns]
    """``columns(frame, exact_types)``; with ``exact_types`` False, String values that look coerced from other
    JSON types are marked ``RECHECK``."""

    def check(self, record: Any) -> str | None:
        """The record mapper's error for ``record`` (None when it maps)."""
        try:
            self.row(record)
        except ValueError as err:
            return str(err)
        return None


MAPPINGS: dict[str, Mapping] = {
    "alpaca": Mapping(frozenset({"instruction", "input", "output"}), map_alpaca, alpaca_columns),
    "sharegpt": Mapping(frozenset({"conversations"}), map_sharegpt, sharegpt_columns),
    "messages": Mapping(frozenset({"messages"}), map_messages, messages_columns),
    "text": Mapping(frozenset({"text"}), map_text, text_columns),
}
