"""Seed tasks for self-instruct: Self-Instruct's jsonl shape (instruction + instances) or flat alpaca rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeedTask:
    id: str
    instruction: str
    input: str
    output: str


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Read seed tasks; a bad line raises ``ValueError`` naming ``file:line`` and what is missing."""
    path = Path(path)
    tasks: list[SeedTask] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from err
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise ValueError(f"{where}: a seed task needs a string 'instruction'")
            instances = row.get("instances") or [{"input": row.get("input", ""), "output": row.get("output", "")}]
            first = instances[0] if isinstance(instances, list) and instances else {}
            output = first.get("output") if isinstance(first, dict) else None
            if not isinstance(output, str) or not output.strip():
                raise ValueError(f"{where}: a seed task needs an output (instances[0].output or 'output')")
            tasks.append(
                SeedTask(
                    id=str(row.get("id", f"{path.name}:{lineno}")),
                    instruction=row["instruction"].strip(),
                    input=str(first.get("input") or "").strip(),
                    output=output.strip(),
                )
            )
    if not tasks:
        raise ValueError(f"{path}: no seed tasks found")
    return tasks
