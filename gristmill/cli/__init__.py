"""Command line: ``gristmill run | validate | init | inspect | explain | show | diff | report | runs | train | ablate
| eval | review | models`` (typer; ``gristmill --install-completion`` installs shell completion).

Exit codes: 0 ok, 1 a bug (the traceback is shown), 2 invalid recipe or input (the message says where and how to
fix it; ``--debug`` adds the traceback), 3 the audit gate stopped the run before training. A batch ``run`` exits
with the worst code of its recipes.

One module per command group: ``run.py`` (run, validate, init), ``inspect.py`` (inspect, explain, show, diff,
report), ``runs.py`` (runs: the lineage of continued runs), ``train.py`` (train, ablate), ``eval.py`` (eval,
review, models). ``main(argv)`` is what the console script and the tests call.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from gristmill.cli import eval as _eval
from gristmill.cli import inspect as _inspect
from gristmill.cli import run as _run
from gristmill.cli import runs as _runs
from gristmill.cli import train as _train
from gristmill.cli._common import EXIT_GATE, EXIT_INVALID, gate_table, log, setup_logging, state
from gristmill.common.errors import GateFailed, UserError

app = typer.Typer(
    name="gristmill",
    help="Dataset curation and synthetic data for LLM fine-tuning: one recipe from raw data to an audited QLoRA "
         "adapter.",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug keeps Python's own traceback (exit 1); user errors are one line
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True,
                                         help="More diagnostics (-vv: libraries too).")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only warnings and errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for input errors too.")] = False,
) -> None:
    state.debug = debug
    setup_logging(state.console, verbose, quiet)


for _module in (_run, _inspect, _runs, _train, _eval):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    state.console = Console(stderr=True)
    state.debug = False
    try:
        code = app(args=argv, prog_name="gristmill", standalone_mode=False)
        return int(code or 0)
    except GateFailed as err:  # a user error with its own exit code
        log.error("stopped: the audit gate failed at %s; nothing was trained. See the audit report under reports/ "
                  "(or rerun with --allow-audit-failure to record the override and continue).", err.step,
                  exc_info=state.debug, extra={"markup": False})
        gate_table(state.console, err.failures)
        return EXIT_GATE
    except UserError as err:  # bad input: the message says where and how to fix it
        log.error("%s", err, exc_info=state.debug, extra={"markup": False})
        return EXIT_INVALID
    except typer.Exit as err:  # --install-completion and other early exits
        return int(err.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt
        return 130
    except typer.TyperException as err:  # a usage error: unknown option, missing argument (exit 2)
        show = getattr(err, "show", None)
        if show is not None:
            show()
        return int(getattr(err, "exit_code", EXIT_INVALID))
    # Anything else is a bug: Python prints its traceback and exits 1.


__all__ = ["app", "main"]
