"""The recipe's ``eval:`` section (a list of eval sets) and the decontamination it implies.

Each eval set is a held-out file scored for the base model and the run's adapter (``gristmill.evaluation``).
Its texts must not be trained on: when the recipe's own ``decontaminate`` steps do not already cover an eval file,
the recipe gets an implicit ``eval_decontaminate`` step against it (``eval_decontamination``), placed after the
steps that add or change rows and before trailing ``audit`` steps, so the audit sees the data that trains. It is a
step like any other: checkpointed, listed in the manifest, and its drops carry the reason ``eval_contamination``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gristmill.curation.decontam import DecontamParams

EVAL_DECONTAM_STEP = "eval_decontaminate"
Metric = Literal["loss", "generation", "multiple_choice"]
_CHAT_MAPPINGS = ("alpaca", "sharegpt", "messages", "text")


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the set (letters, digits, _ . -): results go to <run>/eval/<name>.json."""
    path: str = Field(json_schema_extra={"path": True})
    """Eval file (jsonl, json, csv or parquet), relative to the recipe file."""
    mapping: Literal["alpaca", "sharegpt", "messages", "text", "multiple_choice"] = "alpaca"
    """How records map to rows: an input mapping (alpaca, sharegpt, messages, text), or multiple_choice
    (a question, its choices and the answer; see question/choices/answer)."""
    metrics: list[Metric] | None = None
    """What to measure: loss (answer loss and perplexity), generation (greedy answers: ROUGE-L F1, exact match),
    multiple_choice (accuracy by log-likelihood: acc, acc_norm). Default: [multiple_choice] for the
    multiple_choice mapping, [loss, generation] for chat mappings, [loss] for text."""
    max_rows: int | None = Field(200, ge=1)
    """Score the first this many rows of the file (None = all)."""
    max_new_tokens: int = Field(64, ge=1)
    """Token budget per generated answer (generation)."""
    question: str | None = None
    """multiple_choice: the question column (default: `question`; in a csv without header, the first column)."""
    choices: str | list[str] | None = None
    """multiple_choice: one column holding the choices (a list, or {label: [...], text: [...]}, also as JSON
    text), or a list of columns, one choice each (labelled A, B, C, ... in that order). Default: a `choices`
    column, else columns A..E; in a csv without header, the columns between the first and the last."""
    answer: str | None = None
    """multiple_choice: the answer column: a choice's label (A, or 1 for the first choice when labels are letters),
    or its text (default: answerKey, answer or label; in a csv without header, the last column)."""
    has_header: bool | None = None
    """csv: whether the first row is a header; unset = detected as the decontaminate step does (a header is a row
    of distinct identifier-like names)."""

    @model_validator(mode="after")
    def _consistent(self) -> EvalSet:
        mc = self.mapping == "multiple_choice"
        metrics = set(self.resolved_metrics)
        if mc and metrics != {"multiple_choice"}:
            raise ValueError("mapping multiple_choice measures only `multiple_choice` (its rows have no reference "
                             "answer to take a loss on or generate)")
        if not mc and "multiple_choice" in metrics:
            raise ValueError(f"metric multiple_choice needs `mapping: multiple_choice` (got mapping {self.mapping})")
        if self.mapping == "text" and "generation" in metrics:
            raise ValueError("mapping text has no question to answer: use metrics [loss]")
        columns = [k for k in ("question", "choices", "answer") if getattr(self, k) is not None]
        if columns and not mc:
            raise ValueError(f"{', '.join(columns)} only apply to `mapping: multiple_choice`")
        return self

    @property
    def resolved_metrics(self) -> list[str]:
        if self.metrics:
            return list(dict.fromkeys(self.metrics))
        if self.mapping == "multiple_choice":
            return ["multiple_choice"]
        return ["loss"] if self.mapping == "text" else ["loss", "generation"]


def _unique(sets: list[EvalSet]) -> list[EvalSet]:
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"eval set names must be unique (each names <run>/eval/<name>.json); repeated: "
                         f"{', '.join(repeated)}")
    return sets


EvalSection = Annotated[list[EvalSet], AfterValidator(_unique)]


def eval_decontamination(steps: list[tuple[str, Any]], sets: list[EvalSet], resolve: Callable[[str], Path]
                         ) -> tuple[int, DecontamParams] | None:
    """Where the implicit decontamination step goes and its params, or None when every eval file is already an
    ``eval_sets`` entry of a ``decontaminate`` step (files compared by resolved path).

    Example: steps ``[normalize, dedup_exact, audit]`` and one eval set ``qa.jsonl`` -> ``(2, DecontamParams(
    eval_sets=["qa.jsonl"]))``: the step goes before the trailing audit.
    """
    covered = {resolve(p).resolve() for name, params in steps if name in ("decontaminate", EVAL_DECONTAM_STEP)
               for p in params.eval_sets}
    missing = list(dict.fromkeys(s.path for s in sets if resolve(s.path).resolve() not in covered))
    if not missing:
        return None
    at = len(steps)
    while at and steps[at - 1][0] == "audit":
        at -= 1
    has_header = {s.has_header for s in sets if s.path in missing and s.mapping == "multiple_choice"}
    return at, DecontamParams(eval_sets=missing,
                              has_header=has_header.pop() if len(has_header) == 1 else None)
