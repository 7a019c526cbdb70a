"""Model-in-the-loop review through Label Studio: the rows worth a person's look go out as tasks, the verdicts come
back as a recorded input of the next run, recorded rejects and labels for the quality classifier.

``export_tasks(run_dir)`` picks three kinds of rows from a finished run, each ranked most doubtful first:

- ``eval_low_score``: generated eval answers whose ROUGE-L against the reference is below ``LOW_SCORE`` (0.5),
  lowest first: the eval sets' answers (``<run>/eval/<set>.json`` "examples", written by ``gristmill eval`` and
  by a run with an ``eval:`` section; the prompts are read again from the set's file) and the held-out answers
  of training (``<run>/adapter/eval_predictions.parquet``; prompts from ``<run>/dataset/data.parquet``). An
  answer whose prompt cannot be found is left out: it can be neither judged nor trained on.
- ``near_threshold``: rows a ``quality`` or ``signals`` step scored against a threshold (a ``min_<x>``/``max_<x>``
  param, nested ones such as ``judge.min_score`` -> ``meta.judge_score``; ``quality``'s ``keep`` ->
  ``meta.quality_score``, its ``top_fraction`` cut taken as the lowest kept score), kept or dropped, whose score
  lies within ``NEAR`` (0.5) interquartile ranges of the threshold, nearest first. Worked example: scores 0.1,
  0.2, 0.3, 0.4, 0.5 (IQR 0.2) and ``min_score: 0.3``: distances 1.0, 0.5, 0, 0.5, 1.0 IQRs, so the rows scoring
  0.3, 0.2 and 0.4 go out, in that order.
- ``audit_flagged``: rows of the (last) audit step that carry a significant group x attribute association of the
  audit report (the group detected in ``meta.demographics`` and the attribute word in the text), strongest PMI
  first; then rows mentioning a group the report lists as a representation gap, rarest group first.

The kinds take turns until ``limit`` tasks are chosen, so no kind crowds out the others; a row goes out once.
The tasks file is Label Studio's JSON import format: a list of ``{"data": {...}}``, where ``data`` holds what the
labeling config shows (``instruction``, ``response``, ``reference``, ``why``) and what the import needs back
(``row_id``, ``run``, ``step``, ``kind``, ``reason``, ``detail``, ``score``, ``task_key``, ``prompt_messages``).
The labeling config written beside it (``<out stem>.labeling_config.xml``) asks for one choice, ``accept`` /
``reject`` / ``corrected``, a ``corrected_answer`` text area and an optional ``note`` (the reason for a reject).

``import_labels(run_dir, export_file)`` reads Label Studio's JSON export (tasks with ``annotations[].result[]`` of
type ``choices`` / ``textarea``; the newest annotation that was not cancelled counts) or its JSON-MIN export (one
flat record per annotation: the task's data fields plus ``decision``, ``corrected_answer``, ``note``) and
writes, under ``<run>/review/`` (merged with earlier imports, a newer verdict on a task replacing the older one):

- ``accepted.jsonl``: accepted and corrected rows in ``messages`` form (the corrected answer replacing the
  answer), ``source`` = ``review:<export file name>``: list it as an input (``mapping: messages``) of the next run
  (rows that were plain text, without a conversation, go to ``accepted_text.jsonl``, ``mapping: text``);
- ``rejected.jsonl``: rejected rows with ``reason: review_rejected`` and the reviewer's note as ``detail``;
- ``labels.jsonl``: ``id``, ``label`` (1 accepted or corrected, 0 rejected) for the quality classifier
  (``signals.classifier.labels``); a corrected row or an eval answer carries the ``text`` it labels (the
  corrected conversation, the generated answer), which the classifier reads before the id.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import polars as pl

from gristmill.checkpoint import ensure_dir, write_json_atomic
from gristmill.common.errors import MissingFileError, UserError
from gristmill.common.lexicon import mentions
from gristmill.common.rouge import rouge_l, tokens
from gristmill.common.text import messages_text

log = logging.getLogger(__name__)

KINDS = ("eval_low_score", "near_threshold", "audit_flagged")
DEFAULT_LIMIT = 200
LOW_SCORE = 0.5
"""Eval answers with ROUGE-L below this are candidates."""
NEAR = 0.5
"""Scored rows within this many interquartile ranges of a threshold are candidates."""
CHOICES = ("accept", "reject", "corrected")
_SCORED_STEPS = ("quality", "signals")
_NOT_EVAL_SETS = {"summary.json", "model_bias.json"}

LABELING_CONFIG = """<View>
  <Header value="Why this row is here"/>
  <Text name="why" value="$why"/>
  <Header value="Instruction"/>
  <Text name="instruction" value="$instruction"/>
  <Header value="Answer under review"/>
  <Text name="response" value="$response"/>
  <Header value="Reference answer (eval rows)"/>
  <Text name="reference" value="$reference"/>
  <Choices name="decision" toName="response" choice="single" showInline="true" required="true">
{choices}
  </Choices>
  <TextArea name="corrected_answer" toName="response" rows="6" editable="true" maxSubmissions="1"
            placeholder="With 'corrected': the answer as it should be"/>
  <TextArea name="note" toName="response" rows="2" editable="true" maxSubmissions="1"
            placeholder="With 'reject': why (kept as the reject's detail)"/>
</View>
"""


def labeling_config() -> str:
    """The Label Studio labeling config (XML) the tasks are written for."""
    choices = "\n".join(f'    <Choice value="{escape(c)}"/>' for c in CHOICES)
    return LABELING_CONFIG.replace("{choices}", choices)


# ---------------------------------------------------------------------------------------------------- export

def _split(messages: list[dict[str, Any]] | None) -> tuple[list[dict[str, str]] | None, str]:
    """(the turns before the last assistant turn, that turn's content); a row without one has an empty answer."""
    if not messages:
        return None, ""
    turns = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last is None:
        return turns, ""
    return turns[:last], turns[last]["content"]


def _candidate(kind: str, row: dict[str, Any], *, step: str, reason: str, detail: str, score: float | None,
               rank: float, key: str | None = None, response: str | None = None, reference: str = "",
               prompt: list[dict[str, str]] | None = None) -> dict[str, Any]:
    if prompt is None and response is None:
        prompt, response = _split(row.get("messages"))
        if prompt is None:  # a text row: the whole text is under review
            response = row.get("text") or ""
    return {"kind": kind, "rank": rank, "row_id": str(row["id"]), "task_key": key or str(row["id"]), "step": step,
            "reason": reason, "detail": detail, "score": None if score is None else round(float(score), 4),
            "prompt_messages": prompt, "response": response or "", "reference": reference,
            "source": row.get("source")}


def _step_dirs(run_dir: Path) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(step name, checkpoint folder, stats) of each step checkpoint, in order."""
    for folder in sorted((run_dir / "steps").glob("[0-9][0-9]-*")):
        stats_path = folder / "stats.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            yield stats.get("step", folder.name[3:]), folder, stats


def _frames(folder: Path) -> pl.DataFrame:
    parts = [pl.read_parquet(folder / f) for f in ("kept.parquet", "dropped.parquet") if (folder / f).is_file()]
    parts = [p for p in parts if p.height]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _thresholds(step: str, params: dict[str, Any], fields: set[str], path: tuple[str, ...] = ()
                ) -> Iterator[tuple[str, str, float]]:
    """(meta field, "min"|"max", value) for each threshold in a scoring step's params that names a recorded
    score: ``min_relevance`` -> relevance, ``judge.min_score`` -> judge_score, quality's ``keep.min_score`` ->
    quality_score."""
    for key, value in params.items():
        if isinstance(value, dict):
            yield from _thresholds(step, value, fields, (*path, key))
        elif key[:4] in ("min_", "max_") and isinstance(value, int | float) and not isinstance(value, bool):
            name = key[4:]
            names = [f"{path[-1]}_{name}" if path else name, name]
            if step == "quality" and path == ("keep",):
                names = ["quality_score"]
            field = next((n for n in names if n in fields), None)
            if field is not None:
                yield field, key[:3], float(value)


def _near_threshold(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for step, folder, stats in _step_dirs(run_dir):
        if step not in _SCORED_STEPS:
            continue
        frame = _frames(folder)
        if not frame.height or "meta" not in frame.columns or not isinstance(frame.schema["meta"], pl.Struct):
            continue
        fields = {f.name for f in frame.schema["meta"].fields}  # type: ignore[union-attr]
        params = stats.get("params") or {}
        found = list(_thresholds(step, params, fields))
        keep = params.get("keep") or {}
        if step == "quality" and keep.get("top_fraction") is not None and "quality_score" in fields:
            kept = pl.read_parquet(folder / "kept.parquet")
            if kept.height:  # the cut a top_fraction made: the lowest score it kept
                cut = kept.select(pl.col("meta").struct.field("quality_score").min()).item()
                found.append(("quality_score", "min", float(cut)))
        label = folder.name
        for field, side, bound in found:
            scores = frame.select(pl.col("meta").struct.field(field).cast(pl.Float64).alias("s"))["s"]
            valid = scores.drop_nulls().drop_nans()
            if not valid.len():
                continue
            q1, q3 = valid.quantile(0.25), valid.quantile(0.75)
            spread = (q3 - q1) if q3 is not None and q1 is not None and q3 > q1 else float(valid.std() or 0) or 1.0
            op = "<" if side == "min" else ">"
            for row, s in zip(frame.iter_rows(named=True), scores.to_list(), strict=True):
                if s is None or math.isnan(s):
                    continue
                dist = abs(s - bound) / spread
                if dist > NEAR + 1e-9:  # float slack: a row exactly NEAR away counts
                    continue
                fails = s < bound if side == "min" else s > bound
                state = "dropped" if row.get("reason") is not None else "kept"
                detail = (f"{field}={s:.4g}, threshold {side} {bound:.4g} ({'fails' if fails else 'passes'}: "
                          f"drop when {op} {bound:.4g}); {state} at {label}")
                out.append(_candidate("near_threshold", row, step=label, reason=f"near_{side}_{field}",
                                      detail=detail, score=s, rank=dist))
    return sorted(out, key=lambda c: c["rank"])


def _audit_flagged(run_dir: Path) -> list[dict[str, Any]]:
    audits = [(folder, stats) for step, folder, stats in _step_dirs(run_dir) if step == "audit"]
    if not audits:
        return []
    folder, stats = audits[-1]
    report = stats.get("report") or {}
    kept = pl.read_parquet(folder / "kept.parquet") if (folder / "kept.parquet").is_file() else pl.DataFrame()
    if not kept.height or "meta" not in kept.columns:
        return []
    meta_fields = {f.name for f in kept.schema["meta"].fields} if isinstance(kept.schema["meta"], pl.Struct) else set()
    if "demographics" not in meta_fields:
        return []
    rows = kept.with_columns(pl.col("meta").struct.field("demographics").alias("_demo")).to_dicts()
    out: list[dict[str, Any]] = []
    pairs = [(axis, p) for axis, ps in (report.get("associations") or {}).get("axes", {}).items() for p in ps]
    for axis, p in sorted(pairs, key=lambda ap: -ap[1]["pmi"]):
        for row in rows:
            groups = (row["_demo"] or {}).get(axis) or []
            if p["group"] in groups and mentions(row.get("text") or "", [p["attribute"]]):
                out.append(_candidate("audit_flagged", row, step=folder.name, reason="audit_association",
                                      detail=f"{axis}: {p['group']} with '{p['attribute']}' ({p.get('kind')}; PMI "
                                             f"{p['pmi']}, p {p.get('p_value')}, {p.get('rows')} rows)",
                                      score=p["pmi"], rank=-p["pmi"]))
    for gap in sorted(report.get("gaps") or [], key=lambda g: g["rows"]):
        for row in rows:
            if gap["group"] in ((row["_demo"] or {}).get(gap["axis"]) or []):
                out.append(_candidate("audit_flagged", row, step=folder.name, reason="audit_gap",
                                      detail=f"{gap['axis']}: {gap['group']} is a representation gap ({gap['rows']} "
                                             f"rows, target {gap.get('target_rows')})", score=None,
                                      rank=gap["rows"]))
    return out


def _prompts_of_eval_set(result: dict[str, Any]) -> dict[str, list[dict[str, str]] | None]:
    from gristmill.ingest import InputSpec, ingest

    path = Path(result.get("path") or "")
    if not path.is_file():
        log.warning(f"review: eval set file {path} is gone; its answers go out without their prompts")
        return {}
    rows, _ = ingest(InputSpec(path=str(path), mapping=result.get("mapping", "messages"), on_error="skip"), path)
    return {str(r["id"]): _split(r.get("messages"))[0] for r in rows.select("id", "messages").to_dicts()}


def _eval_low_score(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        if path.name in _NOT_EVAL_SETS:
            continue
        result = json.loads(path.read_text())
        examples = [e for e in result.get("examples") or [] if isinstance(e.get("rougeL"), dict)]
        if not examples:
            continue
        prompts = _prompts_of_eval_set(result)
        name = result.get("name", path.stem)
        for e in examples:
            if prompts.get(str(e["id"])) is None:  # an answer cannot be judged (nor trained on) without its prompt
                continue
            for side, score in e["rougeL"].items():
                if side == "base" or score is None or score >= LOW_SCORE:
                    continue
                out.append(_candidate(
                    "eval_low_score", {"id": e["id"], "source": result.get("path")}, step=f"eval/{name}",
                    reason="eval_low_rougeL", detail=f"ROUGE-L {score:.3f} < {LOW_SCORE} ({side} answer, eval set "
                                                     f"{name})", score=score, rank=score,
                    key=f"eval/{name}/{side}/{e['id']}", response=e["answers"].get(side, ""),
                    reference=e.get("reference") or "", prompt=prompts.get(str(e["id"]))))
    held_out = run_dir / "adapter" / "eval_predictions.parquet"
    if held_out.is_file():
        data = run_dir / "dataset" / "data.parquet"
        known = {str(r["id"]): _split(r["messages"])[0]
                 for r in pl.read_parquet(data).select("id", "messages").to_dicts()} \
            if data.is_file() and "messages" in pl.read_parquet_schema(data) else {}
        for r in pl.read_parquet(held_out).to_dicts():
            score = rouge_l(tokens(r["adapter"] or ""), tokens(r["reference"] or ""))
            prompt = known.get(str(r["id"]))  # the recorded prompt is chat-templated text: not a training turn
            if score >= LOW_SCORE or prompt is None:
                continue
            out.append(_candidate(
                "eval_low_score", {"id": r["id"], "source": str(held_out)}, step="adapter/eval_predictions",
                reason="eval_low_rougeL", detail=f"ROUGE-L {score:.3f} < {LOW_SCORE} (adapter answer to a held-out "
                                                 "training row)", score=score, rank=score,
                key=f"eval/held_out/adapter/{r['id']}", response=r["adapter"] or "",
                reference=r["reference"] or "", prompt=prompt))
    return sorted(out, key=lambda c: c["rank"])


def _interleave(kinds: dict[str, list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Round-robin over the kinds, each in its own order, skipping rows already chosen, until ``limit``."""
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    queues = {k: iter(v) for k, v in kinds.items()}
    while queues and len(chosen) < limit:
        for kind in list(queues):
            for cand in queues[kind]:
                if cand["task_key"] not in seen:
                    seen.add(cand["task_key"])
                    chosen.append(cand)
                    break
            else:
                del queues[kind]
            if len(chosen) >= limit:
                break
    return chosen


def _task(c: dict[str, Any], run: str) -> dict[str, Any]:
    prompt = c["prompt_messages"]
    why = f"{c['kind']}: {c['reason']} - {c['detail']}"
    data = {"instruction": messages_text(prompt) if prompt else "", "response": c["response"],
            "reference": c["reference"], "why": why, "row_id": c["row_id"], "task_key": c["task_key"], "run": run,
            "step": c["step"], "kind": c["kind"], "reason": c["reason"], "detail": c["detail"], "score": c["score"],
            "source": c["source"], "prompt_messages": prompt}
    return {"data": data}


def export_tasks(run_dir: Path, out: Path | None = None, limit: int | None = DEFAULT_LIMIT) -> dict[str, Any]:
    """Write Label Studio tasks for the run's doubtful rows (see the module docstring) to ``out`` (default
    ``<run>/review/tasks.json``) and the labeling config beside it; returns the counts per kind. ``limit``: at
    most this many tasks (None: ``DEFAULT_LIMIT``)."""
    run_dir = Path(run_dir)
    limit = DEFAULT_LIMIT if limit is None else limit
    if not (run_dir / "steps").is_dir():
        raise MissingFileError(f"{run_dir} is not a run directory (no steps/): give the output.dir of a run")
    if limit < 1:
        raise UserError(f"review export: --limit must be at least 1 (got {limit})")
    out = Path(out) if out is not None else run_dir / "review" / "tasks.json"
    kinds = {"eval_low_score": _eval_low_score(run_dir), "near_threshold": _near_threshold(run_dir),
             "audit_flagged": _audit_flagged(run_dir)}
    chosen = _interleave(kinds, limit)
    tasks = [_task(c, run_dir.name) for c in chosen]
    write_json_atomic(out, tasks)
    config = out.with_name(f"{out.stem}.labeling_config.xml")
    config.write_text(labeling_config())
    by_kind = {k: sum(c["kind"] == k for c in chosen) for k in KINDS}
    if not tasks:
        log.warning(f"review export: {run_dir} has no eval answers, scored thresholds or audit flags to review")
    return {"tasks": len(tasks), "by_kind": by_kind, "candidates": {k: len({c["task_key"] for c in v}) for k, v in kinds.items()},
            "out": str(out), "labeling_config": str(config)}


# ---------------------------------------------------------------------------------------------------- import

def _text_of(value: Any) -> str | None:
    """A text area's value in either export: ``"..."``, ``["...", ...]`` or ``{"text": [...]}``."""
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    return None if value is None else str(value)


def _choice_of(value: Any) -> Any:
    """A choice in either export: ``"accept"``, ``["accept"]`` or ``{"choices": ["accept"]}``."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        return value[0] if len(value) == 1 else value
    return value


def _verdict_from_json(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(task data, {decision, corrected_answer, note} of its newest annotation that was not cancelled, or None)."""
    annotations = [a for a in task.get("annotations", task.get("completions")) or []
                   if isinstance(a, dict) and not (a.get("was_cancelled") or a.get("skipped"))]
    if not annotations:
        return task["data"], None
    newest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    verdict: dict[str, Any] = {}
    for item in newest.get("result") or []:
        name, value = item.get("from_name"), item.get("value") or {}
        if item.get("type") == "choices" or name == "decision":
            verdict["decision"] = _choice_of(value)
        elif name in ("corrected_answer", "note"):
            verdict[name] = _text_of(value)
    return task["data"], verdict if "decision" in verdict else None


def _records(items: list[Any]) -> tuple[list[tuple[int, dict[str, Any], dict[str, Any] | None]],
                                                     list[str]]:
    """(task index, data, verdict) per task, whichever export format, and the problems found."""
    problems: list[str] = []
    out: list[tuple[int, dict[str, Any], dict[str, Any] | None]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"task {i}: not a JSON object")
            continue
        if isinstance(item.get("data"), dict):  # Label Studio JSON
            data, verdict = _verdict_from_json(item)
        else:  # JSON-MIN: the data fields and one annotation's controls in one flat record
            data = item
            verdict = None
            if item.get("decision") is not None:
                verdict = {"decision": _choice_of(item["decision"]),
                           "corrected_answer": _text_of(item.get("corrected_answer")), "note": _text_of(item.get("note"))}
        if not data.get("task_key") or not data.get("row_id"):
            problems.append(f"task {i}: data has no task_key/row_id, so it did not come from `gristmill review "
                            "export` (import the tasks file it wrote into the Label Studio project, label, export)")
            continue
        prompt = data.get("prompt_messages")
        if prompt is not None and not (isinstance(prompt, list) and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            problems.append(f"task {i} ({data['row_id']}): data.prompt_messages is not a list of {{role, content}} "
                            "turns; re-export the tasks with `gristmill review export`")
            continue
        if verdict is not None:
            if verdict["decision"] not in CHOICES:
                problems.append(f"task {i} ({data['row_id']}): decision {verdict['decision']!r} is not one of "
                                f"{list(CHOICES)}; use the labeling config `gristmill review export` wrote")
                continue
            if verdict["decision"] == "corrected" and not (verdict.get("corrected_answer") or "").strip():
                problems.append(f"task {i} ({data['row_id']}): decision 'corrected' without a corrected_answer; write "
                                "the answer or choose accept/reject")
                continue
        out.append((i, data, verdict))
    return out, problems


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)


def import_labels(run_dir: Path, export_file: Path) -> dict[str, Any]:
    """Read a Label Studio export (JSON or JSON-MIN) of tasks ``export_tasks`` wrote and record the verdicts under
    ``<run>/review/`` (see the module docstring); returns the counts."""
    run_dir, export_file = Path(run_dir), Path(export_file)
    if not export_file.is_file():
        raise MissingFileError(f"{export_file} does not exist: export the Label Studio project as JSON or JSON-MIN")
    try:
        items = json.loads(export_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{export_file}: not JSON ({err}); export the Label Studio project as JSON or JSON-MIN "
                        "(not CSV/TSV)") from err
    if not isinstance(items, list):
        raise UserError(f"{export_file}: a Label Studio export is a JSON list of tasks, this is a "
                        f"{type(items).__name__}; export the project as JSON or JSON-MIN")
    parsed, problems = _records(items)
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UserError(f"{export_file}: {len(problems)} task(s) cannot be imported:\n  " + "\n  ".join(problems[:10])
                        + more)
    # JSON-MIN has one record per annotation: the newest verdict per task counts, as in the JSON export.
    newest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for _, data, verdict in parsed:
        key = str(data["task_key"])
        if verdict is None:
            continue
        stamp = str(data.get("updated_at") or data.get("created_at") or "")
        if key not in newest or stamp > str(newest[key][0].get("updated_at") or newest[key][0].get("created_at") or ""):
            newest[key] = (data, verdict)
    runs = {str(d.get("run")) for d, _ in newest.values()} - {run_dir.name}
    if runs:
        log.warning(f"review import: tasks exported from run(s) {sorted(runs)} are recorded under {run_dir}")
    review = run_dir / "review"
    files = {"accepted": review / "accepted.jsonl", "accepted_text": review / "accepted_text.jsonl",
             "rejected": review / "rejected.jsonl", "labels": review / "labels.jsonl"}
    kept = {name: {r["review_key"]: r for r in _read_jsonl(path)} for name, path in files.items()}
    source = f"review:{export_file.name}"
    counts = {c: 0 for c in CHOICES}
    for key, (data, verdict) in newest.items():
        for records in kept.values():  # a newer verdict replaces any earlier one on the same task
            records.pop(key, None)
        decision = verdict["decision"]
        counts[decision] += 1
        prompt = data.get("prompt_messages")
        answer = verdict["corrected_answer"] if decision == "corrected" else data.get("response") or ""
        messages = [*prompt, {"role": "assistant", "content": answer}] if prompt else None
        common = {"review_key": key, "reviewed_id": str(data["row_id"]), "review_run": data.get("run"),
                  "review_step": data.get("step"), "review_kind": data.get("kind"), "review_reason": data.get("reason"),
                  "source": source}
        label: dict[str, Any] = {"id": str(data["row_id"]), "label": 0 if decision == "reject" else 1,
                                 "decision": decision, "review_key": key}
        if decision == "corrected" or data.get("kind") == "eval_low_score":  # what is labelled is not the row
            label["text"] = messages_text(messages) if messages else answer
        kept["labels"][key] = label
        if decision == "reject":
            kept["rejected"][key] = {"id": str(data["row_id"]), "reason": "review_rejected",
                                     "detail": (verdict.get("note") or "").strip() or "rejected by the reviewer",
                                     "messages": messages, "text": None if messages else answer, **common}
        else:
            row = {"id": f"review:{key}", "review_decision": decision, **common}
            if messages is None:  # a text row (no conversation): its own file, for `mapping: text`
                kept["accepted_text"][key] = {**row, "text": answer}
            else:
                kept["accepted"][key] = {**row, "messages": messages}
    for name, path in files.items():
        _write_jsonl(path, list(kept[name].values()))
    unlabelled = len({str(d["task_key"]) for _, d, _ in parsed} - set(newest))
    return {**counts, "unlabelled": unlabelled, "tasks": len(items),
            "files": {name: str(path) for name, path in files.items()},
            "recorded": {name: len(records) for name, records in kept.items()}}
