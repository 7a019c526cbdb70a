"""Hyperparameter search: an optuna study (TPE, seeded) over learning rate, LoRA rank and epochs, minimising the
held-out eval loss, with a trial budget. Every trial is recorded (``search.json``) and the best trial's adapter is
the result (its files are copied into ``out_dir``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gristmill.train.params import TrainParams
from gristmill.train.qlora import train_qlora

RANKS = [8, 16, 32, 64]


def search_qlora(rows: list[dict[str, Any]], params: TrainParams, n_trials: int, *, model_path: str, out_dir: Path,
                 progress: Callable[[str, int, int, str], None] | None = None, **train_kw: Any) -> dict[str, Any]:
    """Run ``n_trials`` trainings; returns the best trial's metrics with ``search`` (every trial) added.

    Trials skip generation (it does not enter the objective); the best configuration's adapter is kept as
    trained. With ``max_steps`` set, epochs are not searched (max_steps overrides them)."""
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("--search needs optuna: pip install 'gristmill[models]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_dir = out_dir / "trials"
    records: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        update: dict[str, Any] = {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
                                  "lora": params.lora.model_copy(update={"r": trial.suggest_categorical("r", RANKS)})}
        update["lora"] = update["lora"].model_copy(update={"alpha": 2 * update["lora"].r})
        if params.max_steps is None:
            update["epochs"] = trial.suggest_int("epochs", 1, 3)
        trial_params = params.model_copy(update=update | {"eval_generate_rows": 0, "save_steps": None})
        if progress:
            progress("search", trial.number, n_trials, f"trial {trial.number + 1}")
        metrics = train_qlora(rows, trial_params, model_path=model_path, out_dir=trials_dir / f"{trial.number:03d}",
                              progress=progress, **{k: v for k, v in train_kw.items() if k != "checkpoint_dir"})
        records.append({"trial": trial.number, "params": trial.params, "eval_loss": metrics["eval_loss_after"],
                        "train_seconds": metrics["train_seconds"]})
        return float(metrics["eval_loss_after"])

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=params.seed))
    study.optimize(objective, n_trials=n_trials)
    best = trials_dir / f"{study.best_trial.number:03d}"
    for item in best.iterdir():
        target = out_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    shutil.rmtree(trials_dir, ignore_errors=True)  # other trials' adapters: recorded, not kept
    summary = {"n_trials": n_trials, "best_trial": study.best_trial.number, "best_params": study.best_trial.params,
               "best_eval_loss": study.best_value, "trials": records}
    (out_dir / "search.json").write_text(json.dumps(summary, indent=2))
    metrics = json.loads((out_dir / "train_metrics.json").read_text())
    metrics["search"] = summary
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
