"""What every command module shares: the console, logging setup, exit codes and small table helpers."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import render
from rich.table import Table

EXIT_BUG = 1
EXIT_INVALID = 2
EXIT_GATE = 3
log = logging.getLogger("gristmill")


@dataclass
class State:
    """Per invocation of ``main``: where output goes and whether user errors show their traceback."""

    console: Console = field(default_factory=lambda: Console(stderr=True))
    debug: bool = False


state = State()


class _PlainFormatter(logging.Formatter):
    """One plain line per record (rich markup removed), for logs that go to a file or a batch system."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if getattr(record, "markup", True) is False else render(line).plain


def setup_logging(console: Console, verbose: int, quiet: bool) -> None:
    """Diagnostics through ``logging``: gristmill at INFO by default, DEBUG with ``-v``; other libraries at
    WARNING unless ``-vv``; ``-q`` keeps warnings and errors only. A terminal gets rich's handler; anything else
    (a batch job's log file) gets plain, unwrapped lines."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=False, show_level=verbose > 0,
                              markup=True, rich_tracebacks=True)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter("%(levelname)s %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    log.setLevel(level)


def gate_table(console: Console, failures: list[str]) -> None:
    """The gate's failures as a table: each failure is ``metric | axis | groups | value | threshold``."""
    table = Table("metric", "axis", "groups", "value", "threshold", title="audit gate failures")
    for line in failures:
        cells = line.split(" | ")
        table.add_row(*(cells if len(cells) == 5 else [line, "", "", "", ""]))
    console.print(table)


def dict_table(data: dict[str, Any], title: str | None = None) -> Table:
    """A ``key | value`` table of a (flat or nested) dict; nested values are shown as ``a.b`` keys."""
    table = Table("key", "value", title=title)

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            table.add_row(prefix, f"{value:.4g}" if isinstance(value, float) else str(value))

    add("", data)
    return table


def clip(text: Any, width: int = 80) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(str(text if text is not None else "").split())
    return line if len(line) <= width else line[: width - 1] + "…"
