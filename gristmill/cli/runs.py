"""``gristmill runs [DIR]``: the lineage of continued runs (``train.resume_adapter``), read by
``gristmill.lineage.describe``: which run continued which, rows added and trained per generation, and each
generation's adapter on every eval set, so a user sees whether a round helped or forgot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gristmill.cli._common import state

PANEL = "Inspect"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def runs(
    directory: Annotated[Path, typer.Argument(help="A run directory (its lineage) or a folder of runs (all).")]
    = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the lineage as JSON on stdout.")] = False,
) -> int:
    """List run lineages: generations, what each continued, rows added, steps, eval metrics per generation."""
    from gristmill.lineage import describe

    found = describe(directory)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return 0
    table = Table("gen", "run", "continues", "rows curated", "train rows (replayed)", "steps", "eval loss",
                  title=f"runs in {directory}")
    for r in found["runs"]:
        table.add_row(str(r["generation"]), r["run"], Path(r["continues"]).name if r["continues"] else "",
                      _fmt(r["rows_curated"]), f"{_fmt(r['rows_trained'])} ({r['replay_rows'] or 0})",
                      f"{r['start_step']}→{_fmt(r['global_step'])}", _fmt(r["eval_loss"]))
    state.console.print(table)
    if found["eval_table"]:
        names = [r["run"] for r in found["runs"]]
        evals = Table("set", "metric", "base", *names, title="adapter per generation on every eval set")
        for row in found["eval_table"]:
            evals.add_row(row["set"], row["metric"], _fmt(row.get("base")), *(_fmt(row.get(n)) for n in names))
        state.console.print(evals)
    return 0


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(runs)
