"""``gristmill run`` (one recipe, or a batch), ``validate`` and ``init``."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from gristmill.cli._common import EXIT_BUG, EXIT_GATE, EXIT_INVALID, gate_table, log, state
from gristmill.common.errors import GateFailed, UserError

PANEL = "Run"


def _run_one(recipe_path: str, out: str | None, no_train: bool, allow_audit_failure: bool) -> dict[str, Any]:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    recipe = load_recipe(recipe_path)
    runner = Runner(recipe, Path(out) if out else None, console=state.console)
    result = runner.run(train=not no_train, allow_audit_failure=allow_audit_failure)
    log.info(f"`done` {result.frame.height} rows → {result.run_dir}/dataset "
             f"({result.manifest['seconds']:.1f}s)")
    return {"rows": result.frame.height, "run_dir": str(result.run_dir)}


def _batch_entry(recipe_path: str, out: str | None, no_train: bool, allow_audit_failure: bool) -> dict[str, Any]:
    """Run one recipe of a batch; its failure is recorded (status, exit code, message), not raised."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"recipe": recipe_path, "status": "ok", "rows": None, "exit_code": 0}
    try:
        entry |= _run_one(recipe_path, out, no_train, allow_audit_failure)
    except GateFailed as err:
        log.error("%s: stopped: the audit gate failed at %s; nothing was trained", recipe_path, err.step,
                  extra={"markup": False})
        gate_table(state.console, err.failures)
        entry |= {"status": "gate_failed", "exit_code": EXIT_GATE, "error": str(err)}
    except UserError as err:
        log.error("%s: %s", recipe_path, err, exc_info=state.debug, extra={"markup": False})
        entry |= {"status": "invalid", "exit_code": EXIT_INVALID, "error": str(err)}
    except Exception as err:  # a bug: its traceback is shown, and the batch goes on to the next recipe
        log.error("%s: crashed (a bug):\n%s", recipe_path, traceback.format_exc(), extra={"markup": False})
        entry |= {"status": "error", "exit_code": EXIT_BUG, "error": f"{type(err).__name__}: {err}"}
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def run(
    recipes: Annotated[list[str], typer.Argument(help="Recipe file(s); several run in sequence (a batch).",
                                                 show_default=False)],
    out: Annotated[str | None, typer.Option(help="Run directory (default: the recipe's output.dir); one "
                                                 "recipe only.")] = None,
    no_train: Annotated[bool, typer.Option("--no-train", help="Skip the train section.")] = False,
    allow_audit_failure: Annotated[bool, typer.Option(
        "--allow-audit-failure", help="Continue when the audit gate fails; the override and the failures go into "
                                      "the manifest and the data card.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Batch: stop at the first failed recipe.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
) -> int:
    """Run recipes (completed steps resume from their checkpoints). Several recipes run in sequence with a summary
    table (recipe, status, rows, seconds, exit code); a failed recipe does not stop the others unless
    `--fail-fast`; the exit code is the worst of them."""
    if len(recipes) == 1 and not as_json:  # one recipe: its error is the command's error (exit 2/3, or a bug)
        _run_one(recipes[0], out, no_train, allow_audit_failure)
        return 0
    if out and len(recipes) > 1:
        raise UserError("--out names one run directory: with several recipes each goes to its own output.dir")
    summary = []
    for path in recipes:
        summary.append(_batch_entry(path, out, no_train, allow_audit_failure))
        if fail_fast and summary[-1]["exit_code"]:
            break
    skipped = recipes[len(summary):]
    summary += [{"recipe": p, "status": "skipped", "rows": None, "seconds": 0.0, "exit_code": None}
                for p in skipped]
    table = Table("recipe", "status", "rows", "seconds", "exit code", title="batch")
    for e in summary:
        style = "green" if e["status"] == "ok" else "dim" if e["status"] == "skipped" else "red"
        table.add_row(e["recipe"], Text(e["status"], style=style), "" if e["rows"] is None else str(e["rows"]),
                      f"{e['seconds']:.1f}", "" if e["exit_code"] is None else str(e["exit_code"]))
    state.console.print(table)
    worst = max((e["exit_code"] or 0 for e in summary), default=0)
    if as_json:
        sys.stdout.write(json.dumps({"exit_code": worst, "recipes": summary}) + "\n")
        sys.stdout.flush()
    return worst


def validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files.", show_default=False)],
    shape_only: Annotated[bool, typer.Option("--shape-only", help="Check the recipe's keys and values only, not "
                                             "its files and models.")] = False,
) -> int:
    """Check recipes without running a step: every error at once (file:line, key path, hint), then the files and
    models they name (inputs parse under their mapping, referenced files exist and have the named columns, models
    resolve). Exit 2 if any is invalid."""
    from gristmill.preflight import preflight
    from gristmill.recipe import RecipeError, load_recipe

    console = state.console
    bad = 0
    for file in files:
        try:
            recipe = load_recipe(file)
        except RecipeError as err:
            bad += 1
            # The message is the user's text (file names, YAML) and must not be read as markup.
            console.print(Text("invalid ", style="red") + Text(str(err)), highlight=False, soft_wrap=True)
            continue
        problems = [] if shape_only else preflight(recipe)
        if problems:
            bad += 1
            console.print(Text("invalid ", style="red") + Text(f"{recipe.path}: {len(problems)} error(s)\n"
                                                               + "\n".join(f"  {p}" for p in problems)),
                          highlight=False, soft_wrap=True)
            continue
        console.print(Text("ok ", style="green") + Text(
            f"{file}: {len(recipe.inputs)} input(s), {len(recipe.steps)} step(s)" + (", train" if recipe.train
                                                                                     else "")),
                      highlight=False, soft_wrap=True)
    return EXIT_INVALID if bad else 0


STAGES = ("curation", "synth", "audit", "train")
_TEMPLATES = {
    "curation": """\
  # curation: cheap filters first, then deduplication (see the README's steps table for every reason)
  - normalize: {}                                   # unicode NFKC, control characters, whitespace
  - filter: {min_words: 5, max_words: 2000}         # drops too_few_words / too_many_words
  - dedup_exact: {}                                 # drops exact_duplicate (keeps the first)
  - dedup_minhash: {threshold: 0.8}                 # drops near_duplicate (Jaccard >= threshold)
""",
    "synth": """\
  # synthesis: new rows from the kept ones (runs the model locally with vLLM; `engine: openai` for a server)
  - synthesize: {method: evolve, n: 8, model: smollm2-135m-instruct}
""",
    "audit": """\
  # demographic audit: representation per axis; add `gate: {max_representation_ratio: 10}` to stop bad runs
  - audit: {axes: [gender, religion, age]}
""",
}
_TRAIN = """\
# QLoRA training on the curated rows (`gristmill run --no-train` skips it; `gristmill train RUN` runs it later)
train:
  base_model: smollm2-135m-instruct
  method: qlora
  lora: {r: 16, alpha: 32}
  max_steps: 30
  batch_size: 4
  learning_rate: 0.0005
  max_seq_length: 256
"""


def render_recipe(name: str, input_path: str, mapping: str, stages: list[str], out_dir: str) -> str:
    """A commented recipe: the input, the chosen stages' steps with their main knobs, output and train."""
    steps = "".join(_TEMPLATES[s] for s in STAGES if s in stages and s in _TEMPLATES)
    return (f"# Written by `gristmill init`. Check it with `gristmill validate`, run it with `gristmill run`.\n"
            f"# Input paths are relative to this file; output.dir is relative to the working directory.\n"
            f"name: {name}\n"
            f"inputs:\n"
            f"  - path: {json.dumps(input_path)}\n"
            f"    mapping: {mapping}              # alpaca | sharegpt | messages | text\n"
            f"    on_error: skip              # a malformed record becomes a reject (malformed_input)\n"
            f"steps:\n{steps or '  []' + chr(10)}"
            f"output: {{dir: {json.dumps(out_dir)}, formats: [parquet, jsonl]}}\n"
            + (_TRAIN if "train" in stages else ""))


def init(
    input: Annotated[str | None, typer.Option("--input", help="The input file.")] = None,  # noqa: A002
    mapping: Annotated[str | None, typer.Option(help="alpaca | sharegpt | messages | text.")] = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated: curation,synth,audit,train.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the recipe.")] = Path("recipe.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> int:
    """Write a commented recipe that `gristmill validate` accepts. On a terminal it asks for what the flags
    leave out; elsewhere the defaults are mapping alpaca and every stage."""
    ask = sys.stdin.isatty() and state.console.is_terminal
    if input is None:
        if not ask:
            raise UserError("gristmill init: --input PATH is required (the data file the recipe reads)")
        input = typer.prompt("input file")
    if mapping is None:
        mapping = typer.prompt("mapping (alpaca, sharegpt, messages, text)", default="alpaca") if ask else "alpaca"
    if stages is None:
        stages = typer.prompt("stages", default=",".join(STAGES)) if ask else ",".join(STAGES)
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if mapping not in ("alpaca", "sharegpt", "messages", "text"):
        raise UserError(f"--mapping: {mapping!r} is not one of alpaca, sharegpt, messages, text")
    if out.exists() and not force:
        raise UserError(f"{out} exists: choose another --out or pass --force to overwrite it")
    source = Path(input)
    if not source.exists():
        raise UserError(f"--input: {source} does not exist")
    # The recipe names its input relative to itself, so the two can move together.
    rel = os.path.relpath(source.resolve(), out.resolve().parent)
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in out.stem) or "recipe"
    text = render_recipe(name, rel, mapping, chosen, f"runs/{name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info(f"recipe → {out} (check it: gristmill validate {out})")
    return 0


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(run)
    app.command(rich_help_panel=PANEL)(validate)
    app.command(rich_help_panel=PANEL)(init)
