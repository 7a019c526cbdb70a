"""Seed tasks for self-instruct: Self-Instruct's jsonl shape (instruction + instances) or flat alpaca rows.

Any input format reads (jsonl, json, csv, parquet, a save_to_disk folder: ``gristmill.common.readers``); the
format comes from the extension. Worked example: the line ``{"instruction": "Add.", "instances": [{"input":
"1 2", "output": "3"}]}`` is the task (Add., 1 2, 3); ``{"instruction": "Greet.", "output": "Hello!"}`` on line 2
of ``seeds.jsonl`` is (Greet., "", Hello!) with id ``seeds.jsonl:2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.common.errors import InputError
from gristmill.common.readers import Bad, Table, read_table


@dataclass(frozen=True)
class SeedTask:
    id: str
    instruction: str
    input: str
    output: str


def _task(row: dict[str, Any], fallback_id: str, where: str) -> SeedTask:
    if not isinstance(row.get("instruction"), str):
        raise InputError(f"{where}: a seed task needs a string 'instruction'")
    instances = row.get("instances") or [{"input": row.get("input", ""), "output": row.get("output", "")}]
    first = instances[0] if isinstance(instances, list) and instances else {}
    output = first.get("output") if isinstance(first, dict) else None
    if not isinstance(output, str) or not output.strip():
        raise InputError(f"{where}: a seed task needs an output (instances[0].output or 'output')")
    return SeedTask(
        id=str(row["id"]) if row.get("id") is not None else fallback_id,
        instruction=row["instruction"].strip(),
        input=str(first.get("input") or "").strip(),
        output=output.strip(),
    )


def _unreadable(table: Table, bad: Bad) -> InputError:
    return InputError(f"{table.where(bad.number)}: {bad.reason}; each record must be one JSON object")


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Read seed tasks; a bad record raises ``InputError`` (a ``ValueError``) naming ``file:line`` and what is
    missing."""
    path = Path(path)
    table = read_table(path, missing="seed tasks file not found")
    tasks: list[SeedTask] = []
    for i, number in enumerate(table.number.to_list()):
        if table.bad and table.bad[0].number < number:  # the first problem in file order is the one reported
            raise _unreadable(table, table.bad[0])
        tasks.append(_task(table.record(i), f"{path.name}:{number}", table.where(number)))
    if table.bad:
        raise _unreadable(table, table.bad[0])
    if not tasks:
        raise InputError(f"{path}: no seed tasks found")
    return tasks
