"""Checks of a recipe against the files and models it names, without running a step (``gristmill validate``).

``load_recipe`` checks the recipe's shape; ``preflight`` then checks what only the disk can tell, and reports every
problem at once, each naming the recipe key, the file and the fix:

- each input exists and its first records parse under its ``mapping`` (the whole file up to ``SAMPLE_BYTES``,
  else its first ``SAMPLE_RECORDS`` lines);
- every file a step, ``train`` or an ``eval`` set names exists (gold sets, eval sets, seeds, lexicons, earlier datasets) and has
  the columns the recipe names (``decontaminate.text_fields``, ``quality.label_column`` with the classifier,
  ``audit.label_column``/``prediction_column`` among the inputs' columns, ``id``/``text`` of
  ``dedup_minhash.against``, ``messages``/``text`` of ``train.eval_file``);
- every model a step or ``train`` names resolves (a registered name or a local directory; not a remote
  ``engine: openai`` model).

Example: ``decontaminate: {eval_sets: [eval.csv], text_fields: [question]}`` with an ``eval.csv`` whose header is
``prompt,answer`` gives ``steps[4].decontaminate.text_fields: eval.csv has no column 'question' (columns: prompt,
answer)``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gristmill.common.errors import UserError
from gristmill.common.readers import ReadOptions, read_table
from gristmill.recipe import Recipe, path_fields

SAMPLE_BYTES = 32 << 20
SAMPLE_RECORDS = 1000
_MODEL_FIELDS = ("model", "small_model", "base_model")


def _walk(params: BaseModel, where: str) -> Iterator[tuple[str, BaseModel]]:
    """``params`` and every nested params model, with its key path."""
    yield where, params
    for name, value in params:
        if isinstance(value, BaseModel):
            yield from _walk(value, f"{where}.{name}")


def _columns(path: Path, options: ReadOptions | None = None) -> list[str]:
    return read_table(path, options=options).frame.columns


def _sample(path: Path, spec_format: str | None, tmp: Path) -> Path:
    """``path`` itself, or a file of its first ``SAMPLE_RECORDS`` lines when it is a large line-based file."""
    fmt = spec_format or path.suffix.lower().lstrip(".")
    if not path.is_file() or path.stat().st_size <= SAMPLE_BYTES or fmt not in ("jsonl", "ndjson", "csv"):
        return path
    head = tmp / path.name
    with path.open("rb") as src, head.open("wb") as dst:
        for i, line in enumerate(src):
            if i >= SAMPLE_RECORDS + 1:  # + a csv header
                break
            dst.write(line)
    return head


def _check_inputs(recipe: Recipe, errors: list[str]) -> set[str]:
    from gristmill.ingest import ingest_counted

    columns: set[str] = set()
    for i, spec in enumerate(recipe.inputs):
        path = recipe.resolve(spec.path)
        key = f"inputs[{i}].path"
        if not path.exists():
            errors.append(f"{key}: {path} does not exist (paths are relative to the recipe file {recipe.path})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            sample = _sample(path, spec.format, Path(tmp))
            try:
                rows, _, _ = ingest_counted(spec, sample)
            except UserError as err:
                errors.append(f"inputs[{i}]: {str(err).replace(str(sample), str(path))}")
                continue
        columns |= set(rows.columns)
    return columns


def _check_files(recipe: Recipe, errors: list[str]) -> None:
    """Every path field (steps, nested models, train) names an existing file."""
    # eval sets first: the implicit eval_decontaminate step names the same files, reported once under eval[i]
    sections: list[tuple[str, BaseModel]] = [(f"eval[{i}]", spec)
                                             for i, spec in enumerate(getattr(recipe, "eval", None) or [])]
    sections += [(f"steps[{i}].{s.name}", s.params) for i, s in enumerate(recipe.steps)]
    if recipe.train is not None:
        sections.append(("train", recipe.train))
    reported: set[Path] = set()
    for where, params in sections:
        for key, model in _walk(params, where):
            for name in path_fields(model):
                value = getattr(model, name)
                for item in value if isinstance(value, list) else [] if value is None else [value]:
                    path = recipe.resolve(item)
                    if not path.exists() and path not in reported:
                        reported.add(path)
                        errors.append(f"{key}.{name}: {recipe.resolve(item)} does not exist (paths are relative to "
                                      f"the recipe file {recipe.path})")


def _missing(path: Path, wanted: list[str], have: list[str], key: str) -> str | None:
    lacking = [c for c in wanted if c not in have]
    if not lacking:
        return None
    return (f"{key}: {path} has no column {', '.join(repr(c) for c in lacking)} (columns: "
            f"{', '.join(have) or 'none'}); name one of its columns or fix the file")


def _check_step(recipe: Recipe, where: str, name: str, params: Any, input_columns: set[str],
                errors: list[str]) -> None:
    """Column checks of one step's files (they exist: ``_check_files`` ran)."""
    if name == "decontaminate" and params.text_fields:
        from gristmill.curation.decontam import detect_header

        for item in params.eval_sets:
            path = recipe.resolve(item)
            if not path.is_file():
                continue
            header = True
            if path.suffix.lower() == ".csv":
                header = detect_header(path, params.text_fields) if params.has_header is None else params.has_header
            have = _columns(path, ReadOptions(has_header=header, infer_types=True))
            if path.suffix.lower() == ".csv" and not header:
                # detect_header found no header holding the fields: show the first row as the columns it has
                have = list(read_table(path, options=ReadOptions(has_header=True)).frame.columns)
            if problem := _missing(path, params.text_fields, have, f"{where}.text_fields"):
                errors.append(problem)
    if name == "quality" and params.scorer == "classifier":
        path = recipe.resolve(params.reference)
        if path.is_file() and (problem := _missing(path, [params.label_column], _columns(path),
                                                   f"{where}.label_column")):
            errors.append(problem)
    if name == "dedup_minhash":
        for item in params.against:
            path = recipe.resolve(item)
            if path.is_file() and (problem := _missing(path, ["id", "text"], _columns(path), f"{where}.against")):
                errors.append(problem)
    if name == "audit" and input_columns:
        for field in ("label_column", "prediction_column"):
            column = getattr(params, field, None)
            if column and column not in input_columns:
                errors.append(f"{where}.{field}: no input has a column {column!r} (the inputs' columns: "
                              f"{', '.join(sorted(input_columns))}); name a column the inputs carry")
    seeds = getattr(params, "seeds", None)
    if name == "synthesize" and seeds and recipe.resolve(seeds).is_file():
        from gristmill.synth.seeds import load_seed_tasks

        try:
            load_seed_tasks(str(recipe.resolve(seeds)))
        except UserError as err:
            errors.append(f"{where}.seeds: {err}")
    for key, model in _walk(params, where):
        lexicon = getattr(model, "lexicon", None)
        if isinstance(lexicon, str) and recipe.resolve(lexicon).is_file():
            try:
                json.loads(recipe.resolve(lexicon).read_text())
            except ValueError as err:
                errors.append(f"{key}.lexicon: {recipe.resolve(lexicon)} is not valid JSON ({err})")


def _check_train(recipe: Recipe, errors: list[str]) -> None:
    if recipe.train is not None and recipe.train.resume_adapter:
        earlier = recipe.resolve(recipe.train.resume_adapter)
        if not (earlier / "manifest.json").is_file() or not (earlier / "adapter" / "adapter_config.json").is_file():
            errors.append(f"train.resume_adapter: {earlier} is not a finished, trained gristmill run (no manifest.json "
                          "or adapter/adapter_config.json there); name the output.dir of the run to continue")
    if recipe.train is None or not recipe.train.eval_file:
        return
    path = recipe.resolve(recipe.train.eval_file)
    if path.is_file():
        have = _columns(path)
        if "messages" not in have and "text" not in have:
            errors.append(f"train.eval_file: {path} has neither a 'messages' nor a 'text' column (columns: "
                          f"{', '.join(have)})")


def _check_models(recipe: Recipe, errors: list[str]) -> None:
    from gristmill.models import BUILTINS, resolve

    sections: list[tuple[str, BaseModel]] = [(f"steps[{i}].{s.name}", s.params) for i, s in enumerate(recipe.steps)]
    if recipe.train is not None:
        sections.append(("train", recipe.train))
    for where, params in sections:
        for key, model in _walk(params, where):
            if getattr(model, "engine", None) == "openai":
                continue  # a served model: its name is the server's business
            for field in _MODEL_FIELDS:
                value = getattr(model, field, None)
                if isinstance(value, str) and value not in BUILTINS:
                    try:
                        resolve(value, key=f"{key}.{field}")
                    except UserError as err:
                        errors.append(str(err))


def preflight(recipe: Recipe) -> list[str]:
    """Every problem of ``recipe``'s files and models, as ``key: what is wrong and the fix`` lines (empty: ok)."""
    errors: list[str] = []
    input_columns = _check_inputs(recipe, errors)
    _check_files(recipe, errors)
    for i, step in enumerate(recipe.steps):
        try:
            _check_step(recipe, f"steps[{i}].{step.name}", step.name, step.params, input_columns, errors)
        except UserError as err:  # a file the step names cannot be read at all
            errors.append(f"steps[{i}].{step.name}: {err}")
    _check_train(recipe, errors)
    _check_models(recipe, errors)
    return errors
