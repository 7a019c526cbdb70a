"""``gristmill train`` (and ``train merge``) and ``gristmill ablate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gristmill.cli._common import log, state
from gristmill.common.errors import UserError

PANEL = "Train"


def train(
    run_dir: Annotated[str, typer.Argument(help="The run directory, or `merge` (then RUN_DIR follows).",
                                           show_default=False)],
    target: Annotated[str | None, typer.Argument(hidden=True, show_default=False)] = None,
    base_model: Annotated[str | None, typer.Option(help="Override train.base_model.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override train.max_steps.")] = None,
    search: Annotated[int | None, typer.Option(metavar="N", help="Optuna search over learning rate, LoRA rank and "
                                               "epochs (N trials, eval loss); keeps the best adapter and records "
                                               "every trial in search.json.")] = None,
    out: Annotated[str | None, typer.Option(help="Adapter directory (default: RUN_DIR/adapter, which updates the "
                                                 "manifest); with merge: the merged model's directory (default: "
                                                 "RUN_DIR/merged).")] = None,
) -> int:
    """Train the adapter of a finished run (same path as `run`: fingerprinted); `train merge RUN_DIR` merges it
    into the base model."""
    from gristmill.runner import retrain

    if run_dir == "merge":  # gristmill train merge RUN [--out DIR]
        from gristmill.common.errors import MissingFileError
        from gristmill.train.merge import merge_adapter

        if not target:
            raise UserError("usage: gristmill train merge RUN_DIR [--out DIR]")
        run = Path(target)
        adapter = run / "adapter" if (run / "adapter" / "adapter_config.json").exists() else run
        if not (adapter / "adapter_config.json").exists():
            raise MissingFileError(f"{run}: no adapter there (neither {run}/adapter nor {run} holds "
                                   "adapter_config.json); train it first with `gristmill train RUN_DIR`")
        dest = Path(out) if out else run / "merged"
        check = merge_adapter(adapter, dest)
        log.info(f"merged (bf16, from the dequantized base) → {dest}: logits vs the adapter model max |Δ| "
                 f"{check['max_abs_logit_diff']:.2e} (fp32), argmax agreement {check['bf16']['argmax_agreement']:.1%}"
                 " (bf16)")
        return 0
    if target:
        raise UserError(f"unexpected argument {target!r}: `gristmill train RUN_DIR` or "
                        "`gristmill train merge RUN_DIR`")
    overrides = {k: v for k, v in (("base_model", base_model), ("max_steps", max_steps)) if v}
    dest = Path(out) if out else None
    metrics = retrain(Path(run_dir), overrides, dest, console=state.console, search=search)
    best = f" (best of {search} trials: {metrics['search']['best_params']})" if metrics.get("search") else ""
    log.info(f"adapter → {dest or Path(run_dir) / 'adapter'}: eval loss "
             f"{metrics['eval_loss_before']:.3f} → {metrics['eval_loss_after']:.3f}{best}")
    return 0


def ablate(
    recipe: Annotated[str, typer.Argument(help="The recipe file.", show_default=False)],
    out: Annotated[str | None, typer.Option(help="Run directory (default: the recipe's output.dir).")] = None,
    mode: Annotated[str, typer.Option(help="`steps`: the same optimizer steps for every variant (train.max_steps); "
                                           "`tokens`: the same training tokens (each variant gets budget / (rows "
                                           "per step x its mean tokens per row) steps; the budget is what the "
                                           "curated variant sees in steps mode).")] = "steps",
) -> int:
    """Train on the raw, curated and curated+synthetic rows of a recipe (the last only when synthesis added rows)
    and evaluate them and the base model on the same held-out rows and the recipe's eval sets: loss, ROUGE-L,
    generation defects (refusals, truncation, repetition, ...) and eval-set leaks per variant
    (RUN_DIR/ablation.json)."""
    from gristmill.ablation import ablate as run_ablation
    from gristmill.ablation import render
    from gristmill.recipe import load_recipe

    if mode not in ("steps", "tokens"):
        raise UserError(f"--mode: {mode!r} is not one of steps, tokens")
    summary = run_ablation(load_recipe(recipe), Path(out) if out else None, mode=mode)
    state.console.print(render(summary))
    log.info(f"ablation → {Path(summary['adapters']['raw']).parent.parent / 'ablation.json'}")
    return 0


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel=PANEL)(train)
    app.command(rich_help_panel=PANEL)(ablate)
