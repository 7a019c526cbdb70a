"""The recipe's eval sets scored for the base model and adapters: ``<out>/<set>.json`` and ``<out>/summary.json``.

``gristmill run`` calls ``evaluate`` after training (out = ``<run>/eval``, one adapter named ``adapter``);
``gristmill eval RUN [--adapter PATH]`` calls ``eval_run``; ``gristmill ablate`` scores its three variants in one
go (the base model is loaded once, each adapter is put on it in turn). The metrics are in
``gristmill.train.eval_metrics``; the eval sets' schema in ``gristmill.eval_params``.

Rows: a chat mapping reads the file through ingest (the same readers and mappings as a recipe's inputs; a malformed
record is an error naming ``file:line``). ``multiple_choice`` reads the question, the choices and the answer (see
``EvalSet``): e.g. a header-less ARC-Easy csv row ``"Which gas ...?","oxygen","carbon dioxide","helium","neon","B"``
is the question, four choices labelled A-D and the gold label B. The first ``max_rows`` rows are scored.

Generation defects (``generation_defects``): besides ROUGE-L and exact match, each side's greedy answers are judged
by curation's own detectors, so an adapter that learned a defect of its training data shows it: the share of
answers that are refusals, that stop by themselves mid-sentence (``truncated``; an answer that ran into
``max_new_tokens`` is counted apart, in ``at_token_limit``: that is the eval's budget, not the model), that are
empty, that repeat themselves, or that copy the prompt, and ``defective`` (any of those five).

Results are reused: each set's result carries a fingerprint of the set's params and file content, the base
model's identity, each adapter's training fingerprint (or its files' hashes), the training params that shape how
the model is loaded and encoded, and the versions of the model libraries; a rerun with all of that unchanged
reads the result back instead of loading the model.
"""

from __future__ import annotations

import ast
import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.checkpoint import ensure_dir, file_sha256, fingerprint, write_json_atomic
from gristmill.common.errors import InputError, MissingFileError, UserError
from gristmill.common.readers import ReadOptions, infer_format, read_table
from gristmill.eval_params import EvalSet
from gristmill.ingest import InputSpec, fingerprint_path, ingest
from gristmill.report import write_report
from gristmill.train.eval_metrics import ChoiceItem
from gristmill.train.params import TrainParams

VERSION = "2"  # 2: generation defect shares
"""Part of every eval result's fingerprint: bump when a change alters the numbers for the same inputs."""

log = logging.getLogger(__name__)
_LETTERS = "ABCDEFGHIJ"
_ANSWER_COLUMNS = ("answerKey", "answer", "label")
_LIBS = ("torch", "transformers", "tokenizers", "peft", "bitsandbytes")
# Training params that change how the model is loaded or the rows are encoded (not the schedule).
_LOAD_KEYS = ("base_model", "method", "double_quant", "bf16", "max_seq_length", "fix_eos")


DEFECTS = ("refusal", "truncated", "empty", "repetitive", "copies_prompt")
"""Generation defects, each a share of a side's answers (``defective``: any of them; ``at_token_limit`` apart)."""
DEFECT_METRICS = (*DEFECTS, "defective", "at_token_limit")
_REPEAT_MIN_WORDS = 10  # n-gram shares of a few words are noise ("Yes, yes."), as the heuristics step documents
# Gopher's "top n-gram" rules count the most frequent n-gram even when it occurs once: in a 30-word answer one
# 4-gram is ~0.2 of the characters (> 0.16). Only what repeats (n-grams, lines, paragraphs) judges an answer.
_ONCE_IS_ENOUGH = {f"gopher_repetition.max_top_{n}gram_frac": 1.0 for n in (2, 3, 4)}


def generation_defects(answers: list[str], prompts: list[str], at_limit: list[bool]) -> list[list[str]]:
    """The defects of each answer to its prompt (the user turn it answers), with curation's detectors:

    - ``refusal``, ``truncated``, ``empty``, ``copies_prompt``: the instruction rule set's ``refusal``,
      ``truncated``, ``min_response_chars`` (< 1) and ``max_echo`` (> 0.6) rules on ``[user: prompt, assistant:
      answer]`` (curation/instruction_rules.py, default thresholds); ``truncated`` only when the answer stopped by
      itself (``at_limit`` False): cut by ``max_new_tokens`` it is ``at_token_limit`` instead;
    - ``repetitive``: a rule of the Gopher repetition set (the ``heuristics`` step, its published thresholds) on
      the answer's prose, for answers of at least 10 words: repeated lines, paragraphs or 5- to 10-grams (the
      "top 2-4-gram" rules are off: they fire on a short answer whose n-grams all occur once);
    - ``at_token_limit``: the generation used its whole token budget.

    Worked example: ``generation_defects(["I cannot help with that.", "Mix the flour and the"], ["Bake bread.",
    "How do I bake bread?"], [False, False]) == [["refusal"], ["truncated"]]``; with ``at_limit=[False, True]``
    the second is ``["at_token_limit"]``.
    """
    from gristmill.curation.instruction_rules import INSTRUCTION, row_metrics
    from gristmill.curation.rulesets import HeuristicsParams, heuristics

    thresholds = {r.name: r.default for r in INSTRUCTION if r.default is not None}
    frame = pl.DataFrame({"id": [str(i) for i in range(len(answers))],
                          "messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                                       for p, a in zip(prompts, answers, strict=True)]})
    repeated: set[str] = set()
    if answers:
        rep = heuristics(frame, HeuristicsParams(rule_sets=["gopher_repetition"], field="assistant",
                                                 min_words_judged=_REPEAT_MIN_WORDS, thresholds=_ONCE_IS_ENOUGH))
        repeated = set(rep.dropped["id"].to_list())
    out = []
    for i, (messages, limit) in enumerate(zip(frame["messages"].to_list(), at_limit, strict=True)):
        m = row_metrics(messages, thresholds)
        found = {"refusal": bool(m["instruction.refusal"]),
                 "truncated": bool(m["instruction.truncated"]) and not limit,
                 "empty": m["instruction.min_response_chars"] < thresholds["instruction.min_response_chars"],
                 "repetitive": str(i) in repeated,
                 "copies_prompt": (m["instruction.max_echo"] or 0.0) > thresholds["instruction.max_echo"],
                 "at_token_limit": limit}
        out.append([k for k, v in found.items() if v])
    return out


def defect_shares(defects: list[list[str]]) -> dict[str, float]:
    """Per defect metric, the share of answers showing it (0 for no answers). ``defect_shares([["refusal"], []])
    == {"refusal": 0.5, ..., "defective": 0.5, "at_token_limit": 0.0}``."""
    n = max(len(defects), 1)
    shares = {k: sum(k in d for d in defects) / n for k in DEFECT_METRICS if k != "defective"}
    shares["defective"] = sum(any(k in d for k in DEFECTS) for d in defects) / n
    return {k: shares[k] for k in DEFECT_METRICS}


def at_token_limit(tokenizer: Any, answers: list[str], max_new_tokens: int) -> list[bool]:
    """Whether each decoded answer used its whole budget: re-encoded, within one token of ``max_new_tokens``
    (decoding strips whitespace and re-encoding can merge a token; a stop token is not part of the text)."""
    return [len(tokenizer(a, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1 for a in answers]


def last_user_turn(messages: list[dict[str, Any]]) -> str:
    """The user turn a generation answers: the last user turn before the last message."""
    return next((m.get("content") or "" for m in reversed(messages[:-1]) if m.get("role") == "user"), "")


def _where(spec: EvalSet) -> str:
    return f"eval set {spec.name!r} ({spec.path})"


def chat_rows(spec: EvalSet, path: Path) -> list[dict[str, Any]]:
    """The file's first ``max_rows`` rows as ``{id, text, messages}`` (ingest's mapping)."""
    rows, _ = ingest(InputSpec(path=str(path), mapping=spec.mapping), path)  # type: ignore[arg-type]
    if spec.max_rows is not None:
        rows = rows.head(spec.max_rows)
    return rows.select([c for c in ("id", "text", "messages") if c in rows.columns]).to_dicts()


def _parse_cell(value: Any, where: str) -> tuple[list[str], list[str] | None]:
    """A choices cell -> (texts, labels or None): a list, a {label, text} mapping, or either as JSON/Python text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError) as err:
                raise InputError(f"{where}: the choices cell is neither a list nor a {{label, text}} mapping "
                                 f"(as JSON or Python literal): {value[:80]!r}") from err
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        labels = value.get("label")
        return [str(t) for t in value["text"]], [str(x) for x in labels] if isinstance(labels, list) else None
    if isinstance(value, list) and all(isinstance(t, str | int | float) for t in value):
        return [str(t) for t in value], None
    raise InputError(f"{where}: the choices cell must be a list of texts or {{label: [...], text: [...]}}, got "
                     f"{type(value).__name__}")


def gold_index(answer: Any, labels: list[str], texts: list[str], where: str) -> int:
    """Index of the right choice: ``answer`` is a label, a 1-based number when the labels are letters, or a
    choice's text. ``gold_index("B", ["A", "B"], ["x", "y"], "") == 1``; ``gold_index("2", ...)`` too."""
    key = str(answer).strip() if answer is not None else ""
    if key in labels:
        return labels.index(key)
    if key.isdigit() and all(lab in _LETTERS for lab in labels) and 1 <= int(key) <= len(labels):
        return int(key) - 1
    if key in texts:
        return texts.index(key)
    raise InputError(f"{where}: answer {key!r} is neither a label ({', '.join(labels)}), a 1-based number, nor "
                     "the text of a choice")


def choice_items(spec: EvalSet, path: Path) -> list[ChoiceItem]:
    """The file's first ``max_rows`` questions (``mapping: multiple_choice``)."""
    from gristmill.curation.decontam import detect_header

    fmt = infer_format(path)
    header = True
    if fmt == "csv":
        header = detect_header(path) if spec.has_header is None else spec.has_header
    table = read_table(path, fmt, ReadOptions(has_header=header))
    if table.bad:
        raise InputError(f"{_where(spec)}: {table.where(table.bad[0].number)}: {table.bad[0].reason}")
    frame, cols = table.frame, table.frame.columns
    bare = fmt == "csv" and not header
    hint = "set it in the eval set's question/choices/answer keys"
    question = spec.question or ("question" if "question" in cols else cols[0] if bare and cols else None)
    answer = spec.answer or next((c for c in _ANSWER_COLUMNS if c in cols), cols[-1] if bare and cols else None)
    choices: str | list[str] | None = spec.choices
    if choices is None:
        letters = [c for c in _LETTERS[:5] if c in cols]
        choices = "choices" if "choices" in cols else letters if len(letters) >= 2 else cols[1:-1] if bare else None
    if question is None or answer is None or not choices:
        missing = [k for k, v in (("question", question), ("answer", answer), ("choices", choices)) if not v]
        raise InputError(f"{_where(spec)}: cannot tell the {', '.join(missing)} column(s) among {cols}; {hint}")
    needed = [question, answer, *([choices] if isinstance(choices, str) else choices)]
    absent = [c for c in needed if c not in cols]
    if absent:
        raise InputError(f"{_where(spec)}: no column(s) {absent} (columns: {cols}; a csv without header has "
                         f"column_1, column_2, ...); {hint}")
    if spec.max_rows is not None:
        frame, numbers = frame.head(spec.max_rows), table.number.head(spec.max_rows).to_list()
    else:
        numbers = table.number.to_list()
    items = []
    for number, row in zip(numbers, frame.iter_rows(named=True), strict=True):
        where = table.where(number)
        if isinstance(choices, str):
            texts, labels = _parse_cell(row[choices], where)
        else:
            present = [(i, row[c]) for i, c in enumerate(choices) if row[c] not in (None, "")]
            texts, labels = [str(v) for _, v in present], [_LETTERS[i] for i, _ in present]
        labels = labels or list(_LETTERS[:len(texts)])
        if len(texts) < 2 or len(labels) != len(texts):
            raise InputError(f"{where}: a question needs at least two choices, each with one label "
                             f"(got {len(texts)} choices, {len(labels)} labels)")
        if not isinstance(row[question], str) or not row[question].strip():
            raise InputError(f"{where}: the question ({question}) is empty")
        item_id = str(row["id"]) if "id" in row and row["id"] is not None else f"{path.name}:{number}"
        items.append(ChoiceItem(item_id, row[question], texts, labels, gold_index(row[answer], labels, texts, where)))
    return items


def _adapter_fingerprint(adapter: Path) -> str:
    metrics = adapter / "train_metrics.json"
    if metrics.is_file() and (fp := json.loads(metrics.read_text()).get("fingerprint")):
        return str(fp)
    files = sorted(p for p in adapter.glob("adapter_*") if p.is_file())
    return fingerprint([(p.name, file_sha256(p)) for p in files])


def _lib_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _LIBS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _score_set(model: Any, tokenizer: Any, spec: EvalSet, data: Any, sides: list[tuple[str, str | None]],
               params: TrainParams, stops: set[int]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metric -> side -> value for one set, and its details (rows, answer tokens, per-row answers / picks)."""
    from gristmill.train import eval_metrics as em

    metrics = spec.resolved_metrics
    table: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {"rows": len(data)}
    batch = max(1, params.batch_size * 2)
    gen_rows = [r for r in data if r.get("messages") and r["messages"][-1]["role"] == "assistant"] \
        if "generation" in metrics else []
    per_row: dict[str, dict[str, Any]] = {}
    for label, adapter in sides:
        with em.side(model, adapter):
            if "loss" in metrics:
                loss = em.answer_loss(model, tokenizer, data, max_len=params.max_seq_length, batch_size=batch,
                                      encode={"stop_ids": stops, "fix_eos": params.fix_eos, "overlength": "truncate"})
                details |= {"loss_rows": loss["rows"], "loss_tokens": loss["tokens"]}
                for k in ("loss", "perplexity"):
                    table.setdefault(k, {})[label] = loss[k]
            if gen_rows:
                preds = em.answers(model, tokenizer, gen_rows, max_new_tokens=spec.max_new_tokens, stop_ids=stops,
                                   batch_size=batch)
                refs = [r["messages"][-1]["content"] for r in gen_rows]
                for k, v in em.generation_scores(preds, refs).items():
                    table.setdefault(k, {})[label] = v
                defects = generation_defects(preds, [last_user_turn(r["messages"]) for r in gen_rows],
                                             at_token_limit(tokenizer, preds, spec.max_new_tokens))
                for k, v in defect_shares(defects).items():
                    table.setdefault(k, {})[label] = v
                for r, ref, pred, found in zip(gen_rows, refs, preds, defects, strict=True):
                    entry = per_row.setdefault(str(r["id"]), {"id": str(r["id"]), "reference": ref, "answers": {},
                                                              "rougeL": {}, "defects": {}})
                    entry["answers"][label] = pred
                    entry["rougeL"][label] = round(em.rouge_l_f1(pred, ref), 4)
                    entry["defects"][label] = found
            if "multiple_choice" in metrics:
                scores, picks = em.multiple_choice(model, tokenizer, data, batch_size=batch)
                for k, v in scores.items():
                    table.setdefault(k, {})[label] = v
                for item, pick in zip(data, picks, strict=True):
                    entry = per_row.setdefault(item.id, {"id": item.id, "gold": item.labels[item.gold],
                                                         "pick": {}, "pick_norm": {}})
                    entry["pick"][label], entry["pick_norm"][label] = pick["pred"], pick["pred_norm"]
    if gen_rows:
        details["generation_rows"] = len(gen_rows)
    details["examples"] = list(per_row.values())
    return table, details


def evaluate(recipe: Any, adapters: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """Score the recipe's eval sets for the base model and each of ``adapters`` (name -> adapter directory);
    writes ``out_dir/<set>.json`` per set and ``out_dir/summary.json``, and returns the summary: the table rows
    ``{set, metric, base, <adapter name>...}``, the files and what was scored. ``recipe`` is a ``Recipe``."""
    from gristmill.models import identity, resolve

    params: TrainParams = recipe.train or TrainParams()
    for name, adapter in adapters.items():
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise MissingFileError(f"adapter {name}: {adapter} has no adapter_config.json (not a trained adapter "
                                   "directory; train the run first)")
    base_id = identity(params.base_model, key="train.base_model")
    shared = {"version": VERSION, "base": base_id, "load": params.model_dump(mode="json", include=set(_LOAD_KEYS)),
              "adapters": {n: _adapter_fingerprint(Path(a)) for n, a in adapters.items()}, "libs": _lib_versions()}
    ensure_dir(out_dir)
    plans = []
    for i, spec in enumerate(recipe.eval):
        path = recipe.resolve(spec.path)
        if not path.is_file():
            raise MissingFileError(f"eval[{i}].path: {path} does not exist (paths are relative to the recipe file "
                                   f"{recipe.path})")
        fp = fingerprint("eval-set", shared, spec.model_dump(mode="json", exclude={"path"}), fingerprint_path(path))
        target = out_dir / f"{spec.name}.json"
        cached = json.loads(target.read_text()) if target.is_file() else None
        plans.append((spec, path, fp, target, cached if cached and cached.get("fingerprint") == fp else None))
    todo = [p for p in plans if p[4] is None]
    model_path = resolve(params.base_model, key="train.base_model")
    if todo:
        from gristmill.train.eval_metrics import load_for_eval
        from gristmill.train.formatting import stop_token_ids

        started = time.perf_counter()
        model, tokenizer = load_for_eval(model_path, params, {n: str(a) for n, a in adapters.items()})
        stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        sides: list[tuple[str, str | None]] = [("base", None), *((n, n) for n in adapters)]
        log.info(f"eval: model loaded in {time.perf_counter() - started:.1f}s; {len(todo)} set(s)")
        for spec, path, fp, target, _ in todo:
            t0 = time.perf_counter()
            data = choice_items(spec, path) if spec.mapping == "multiple_choice" else chat_rows(spec, path)
            if not data:
                raise InputError(f"{_where(spec)}: the file holds no rows to score")
            table, details = _score_set(model, tokenizer, spec, data, sides, params, stops)
            result = {"name": spec.name, "path": str(path), "sha256": fingerprint_path(path),
                      "mapping": spec.mapping, "fingerprint": fp, "base_model": model_path,
                      "adapters": {n: str(a) for n, a in adapters.items()}, "metrics": table,
                      **details, "seconds": round(time.perf_counter() - t0, 2)}
            write_json_atomic(target, result)
            shown = "  ".join(f"{m} " + " → ".join(f"{v[c]:.4g}" for c in ("base", *adapters)) for m, v in table.items())
            log.info(f"[green]✓[/] eval {spec.name:<14} {len(data)} rows  {shown}  [dim](base → {', '.join(adapters)})[/]")
    columns = ["base", *adapters]
    rows = []
    for spec, _, _, target, _ in plans:
        result = json.loads(target.read_text())
        for metric, values in result["metrics"].items():
            rows.append({"set": spec.name, "metric": metric, **{c: values.get(c) for c in columns}})
    summary = {"base_model": model_path, "adapters": {n: str(a) for n, a in adapters.items()},
               "columns": ["set", "metric", *columns],
               "sets": {spec.name: str(target) for spec, _, _, target, _ in plans},
               "resumed": {spec.name: cached is not None for spec, _, _, _, cached in plans}, "table": rows}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def eval_run(run_dir: Path, adapter: Path | None = None) -> dict[str, Any]:
    """Score the eval sets of a finished run's recipe (as recorded in its manifest) for the base model and
    ``adapter`` (default: the run's ``adapter/`` when it was trained, else the base model alone); writes
    ``<run>/eval/`` and records the summary in the manifest. Returns the summary (see ``evaluate``)."""
    import yaml

    from gristmill.recipe import parse_recipe

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise MissingFileError(f"{manifest_path} not found: `gristmill eval` takes the directory of a run")
    manifest = json.loads(manifest_path.read_text())
    recipe = parse_recipe(yaml.safe_dump(manifest["recipe"]), Path(manifest["recipe_path"]))
    if not recipe.eval:
        raise UserError(f"{run_dir}: the run's recipe ({manifest['recipe_path']}) has no `eval:` section; add eval "
                        "sets (e.g. `eval: [{name: qa, path: data/qa.jsonl, mapping: alpaca}]`) and run it again "
                        "(their texts are also kept out of the training data)")
    if adapter is None:
        own = run_dir / "adapter"
        adapters = {"adapter": own} if (own / "adapter_config.json").is_file() else {}
    else:
        adapters = {"adapter": Path(adapter)}
    summary = evaluate(recipe, adapters, run_dir / "eval")
    if manifest.get("status") == "ok":
        manifest["eval"] = summary
        write_json_atomic(manifest_path, manifest)
        write_report(run_dir)  # the report and the data card's model section show the new scores
    return summary
