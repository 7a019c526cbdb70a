"""Recipe files: YAML -> a validated ``Recipe``, with every error reported at once.

Each error names the file, the YAML line, the key path (``steps[3].dedup_minhash.threshold``), what is wrong and a
hint (the field's documentation, or the nearest known name for a typo). ``yaml.safe_load`` only: a recipe never
names a Python object. Relative paths inside a recipe are relative to the recipe file's directory, except
``output.dir``, which is relative to the working directory (so ``gristmill run recipes/x.yaml`` writes ``runs/x``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gristmill.common.errors import UserError
from gristmill.eval_params import EVAL_DECONTAM_STEP, EvalSection, EvalSet, eval_decontamination
from gristmill.ingest import InputSpec
from gristmill.steps import STEPS
from gristmill.train.qlora import TrainParams


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    dir: str
    """Run directory (relative to the working directory): checkpoints, dataset, manifest, adapter."""
    formats: list[Literal["parquet", "jsonl", "hf_disk"]] = ["parquet", "jsonl"]
    """Dataset files to write under <dir>/dataset/."""


class _RecipeShape(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Recipe name (letters, digits, _ . -)."""
    license: str | None = None
    """License of the curated dataset for its card (an SPDX id such as ``apache-2.0`` or ``cc-by-4.0``); the card
    says ``unknown`` when unset. It must allow what the inputs' licenses allow."""
    inputs: list[InputSpec] = Field(min_length=1)
    """Input files."""
    steps: list[Any] = []
    """Ordered steps, each a one-key mapping {step_name: {params}}."""
    output: OutputSpec
    """Where the run goes."""
    train: TrainParams | None = None
    """Optional QLoRA training on the curated set."""
    trust_remote_code: bool = False
    """Let the embedding and synthesis models run Python code shipped in their model directories (Hugging Face
    `trust_remote_code`). Off by default: such code runs with your permissions; when on, the run warns and the
    manifest records it."""
    eval: EvalSection = []
    """Eval sets scored for the base model and the adapter after training (<run>/eval/); their texts are kept out
    of the training data (an implicit eval_decontaminate step unless a decontaminate step covers them)."""


@dataclass
class Step:
    name: str
    params: BaseModel


@dataclass
class Recipe:
    name: str
    path: Path
    inputs: list[InputSpec]
    steps: list[Step]
    output: OutputSpec
    train: TrainParams | None
    raw: dict[str, Any] = field(default_factory=dict)
    eval: list[EvalSet] = field(default_factory=list)
    trust_remote_code: bool = False

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


class RecipeError(UserError, ValueError):
    def __init__(self, path: Path, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        super().__init__(f"{path}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map key paths to 1-based YAML line numbers, so errors can point at the line."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*path, k.value)] = k.start_mark.line + 1
                walk(v, (*path, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _fmt_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str | None:
    """The docstring of the field at ``loc`` (relative to ``model``), for the error hint."""
    current: Any = model
    doc = None
    for part in loc:
        if isinstance(part, int) or current is None or not hasattr(current, "model_fields"):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        doc = info.description
        ann = info.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (args[0] if args else None)
    return doc


def _pydantic_errors(
    err: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel], lines: dict[tuple[Any, ...], int],
    where: str,
) -> list[str]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        full = (*prefix, *loc)
        line = next((lines[full[:n]] for n in range(len(full), -1, -1) if full[:n] in lines), None)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = model
            for part in loc[:-1]:
                if isinstance(part, str) and parent is not None and part in getattr(parent, "model_fields", {}):
                    ann = parent.model_fields[part].annotation
                    parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            known = sorted(getattr(parent, "model_fields", {}) or [])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key; known keys: {', '.join(known)}" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict | list):
            msg += f" (got {e['input']!r})"
        else:
            doc = _describe(model, loc)
            if doc:
                msg += f" — {doc}"
        out.append(f"{where}:{line if line else '?'}: {_fmt_path(full)}: {msg}")
    return out


_MAX_NODES = 100_000  # a real recipe has hundreds; YAML aliases can make a few lines expand to billions


def _expanded_nodes(text: str) -> int:
    """How many nodes the YAML document has once its aliases are expanded (counted without expanding them).

    Example: ``a: &x [1, 2]`` then ``b: [*x, *x]`` is 1 root + a (1 list + 2) + b (1 list + 2 x 3) = 11 nodes.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 0  # safe_load reports it with its line
    memo: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = 1  # a recursive alias counts once (safe_load builds such a cycle without expanding it)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        memo[id(node)] = n
        return n

    return size(root) if root is not None else 0


def _output_dir_problem(directory: str) -> str | None:
    """Why ``output.dir`` cannot be a directory (a regular file stands at it or above it), else None."""
    p = Path(directory).expanduser()
    for parent in [p, *p.parents]:
        if parent.exists():
            return None if parent.is_dir() else (f"{parent} is a file, so {p} cannot be a directory; choose another "
                                                 "`output.dir`")
    return None


def parse_recipe(text: str, path: Path) -> Recipe:
    """Validate recipe text; raise ``RecipeError`` listing every problem."""
    where = str(path)
    nodes = _expanded_nodes(text)
    if nodes > _MAX_NODES:
        raise RecipeError(path, [f"{where}: the recipe expands to {nodes:,} YAML nodes through its aliases (&/*), "
                                 f"more than {_MAX_NODES:,}; write the values out instead of nesting aliases"])
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise RecipeError(path, [f"{where}:{line}: not valid YAML: {getattr(err, 'problem', err)}"]) from err
    if not isinstance(raw, dict):
        raise RecipeError(path, [f"{where}:1: a recipe must be a mapping with name, inputs, steps, output"])
    lines = _line_index(text)
    errors: list[str] = []
    shape = None
    try:
        shape = _RecipeShape.model_validate(raw)
    except ValidationError as err:
        errors += _pydantic_errors(err, (), _RecipeShape, lines, where)
    steps: list[Step] = []
    raw_steps = raw.get("steps") or []
    for i, entry in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        loc = ("steps", i)
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            errors.append(f"{where}:{lines.get(loc, '?')}: {_fmt_path(loc)}: a step is one mapping "
                          "{step_name: {params}}, e.g. `- dedup_minhash: {threshold: 0.8}`")
            continue
        name, params = next(iter(entry.items()))
        if name not in STEPS:
            close = difflib.get_close_matches(str(name), list(STEPS), n=1)
            errors.append(f"{where}:{lines.get((*loc, name), lines.get(loc, '?'))}: {_fmt_path((*loc, name))}: "
                          f"unknown step; known steps: {', '.join(STEPS)}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        definition = STEPS[name]
        try:
            model = definition.select(params or {}) if definition.select else definition.params
        except ValueError as err:
            errors.append(f"{where}:{lines.get((*loc, name, 'method'), lines.get(loc, '?'))}: "
                          f"{_fmt_path((*loc, name, 'method'))}: {err}")
            continue
        try:
            steps.append(Step(name, model.model_validate(params or {})))
        except ValidationError as err:
            errors += _pydantic_errors(err, (*loc, name), model, lines, where)
    if shape is not None and (problem := _output_dir_problem(shape.output.dir)):
        errors.append(f"{where}:{lines.get(('output', 'dir'), '?')}: output.dir: {problem}")
    if errors or shape is None:
        raise RecipeError(path, errors)
    recipe = Recipe(shape.name, path, shape.inputs, steps, shape.output, shape.train, raw, eval=shape.eval,
                    trust_remote_code=shape.trust_remote_code)
    implicit = eval_decontamination([(s.name, s.params) for s in steps], shape.eval, recipe.resolve)
    if implicit is not None:
        recipe.steps.insert(implicit[0], Step(EVAL_DECONTAM_STEP, implicit[1]))
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(path, [f"{path}: recipe file not found"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes().count(b"\n", 0, err.start) + 1
        raise RecipeError(path, [f"{path}:{line}: not UTF-8 (byte 0x{err.object[err.start]:02x}); save the recipe "
                                 "as UTF-8"]) from err
    return parse_recipe(text, path.resolve())


def path_fields(params: BaseModel) -> list[str]:
    """Names of fields marked as file paths (resolved relative to the recipe)."""
    return [n for n, f in type(params).model_fields.items() if (f.json_schema_extra or {}).get("path")]
