"""``gristmill ablate RECIPE``: does the curation pay off? Train the recipe's adapter three times from the same
inputs and evaluate all of them, and the base model, on the same held-out rows.

Variants (each trained through ``Runner.train``, so fingerprints, atomic adapter writes and resumable checkpoints
apply; each lives in ``<run>/ablation/<variant>/``):

- ``raw``: the ingested rows (``steps/00-ingest/kept.parquet``), before any step;
- ``curated``: the run's final dataset without synthetic rows (``source`` not starting with ``synth:``);
- ``curated_synthetic``: the run's final dataset. When it holds no synthetic row (the recipe has no synthesis
  step, or it kept nothing) it is the curated set again and would retrain the same adapter: it is not trained and
  ``ablation.json`` records it under ``same_as`` (``{"curated_synthetic": "curated"}``), its cells ``null``, and the
  table says "same as curated".

Eval rows. The recipe's ``train.eval_file`` when set; else a seeded split of the curated (non-synthetic) rows, drawn
before anything trains (the trainer's own size rule: ``eval_fraction``, at least ``min_eval_rows``, at most
``max_eval_rows``), written to ``<run>/ablation/eval.parquet`` and given to every variant as its eval file. Either
way every variant's training rows exclude the eval rows by id and by content: a row sharing a word 13-gram with an
eval row (the ``decontaminate`` step's rule, so a re-cased or re-spaced copy in the raw set or a synthetic
paraphrase that quotes it is caught too) is left out and counted (``excluded_eval``).

Budgets (``gristmill ablate RECIPE --mode steps|tokens``). ``steps`` mode: every variant runs the same number of
optimizer steps (``train.max_steps``, else the curated variant's ``epochs`` worth of steps). ``tokens`` mode: the
same number of training tokens, approximated by giving each variant ``round(budget / (batch_size * grad_accum *
mean tokens per example))`` steps, where the token counts come from the trainer's own encoding (tokenizer, chat
template, ``max_seq_length``, ``overlength``) and the budget is what the curated variant sees in ``steps`` mode.
Worked example: 30 steps of 4 rows, curated rows of 180 tokens on average -> budget 21,600; raw rows of 150 tokens
-> round(21600 / 600) = 36 steps for raw. Batches are drawn at random, so the tokens actually trained differ by a
little; ``ablation.json`` reports them (``tokens_trained``) next to the planned steps and the budget.

Eval sets. When the recipe has an ``eval:`` section, its sets are scored for the base model and the three adapters
in one pass (``gristmill.evaluation``; ``<run>/ablation/eval/``) and ``ablation.json`` holds them under
``eval_sets``: set -> metric -> base / raw / curated / curated_synthetic. The curated variants never train on the
eval sets' texts (the recipe's ``eval_decontaminate`` step); the raw variant trains on the ingested rows as they
are, so an eval leak in the raw data shows in its numbers, as it would for a model trained on the raw set. How
many training rows of each variant copy an eval-set item is counted with the same rule as the recipe's eval
decontamination (``decontaminate`` against the ``eval:`` files, word 13-grams): ``data.<variant>.eval_leaks``.

Generation defects. Next to loss and ROUGE-L, the table gives for every side the share of its generations that
refuse, stop mid-sentence, are empty, repeat themselves or copy the prompt (``gristmill.evaluation
.generation_defects``): on the held-out rows (from each adapter's ``eval_predictions.parquet``) and on each eval
set. A defect planted in the raw data (refusals, truncated answers) shows there even when the loss on clean
references barely moves.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from rich.table import Table

from gristmill.checkpoint import ensure_dir, fingerprint, write_json_atomic, write_parquet_atomic
from gristmill.common.errors import InputError, MissingFileError
from gristmill.common.text import messages_text
from gristmill.recipe import Recipe, parse_recipe
from gristmill.report import write_report
from gristmill.report_outcomes import VARIANTS, ablation_rows
from gristmill.runner import Runner

log = logging.getLogger(__name__)
Mode = Literal["steps", "tokens"]
_ROW_COLUMNS = ("id", "messages", "text", "weight")
_NGRAM = 13  # the decontaminate step's default (GPT-3 / Llama reports)


def _texts(frame: pl.DataFrame) -> pl.Series:
    if "text" in frame.columns:
        return frame["text"].fill_null("")
    return pl.Series("text", [messages_text(m or []) for m in frame["messages"].to_list()])


def held_out(curated: pl.DataFrame, recipe: Recipe) -> pl.DataFrame:
    """The seeded eval split of the curated rows, with the trainer's size rule (``train.split``)."""
    params = recipe.train
    assert params is not None
    n_eval = min(params.max_eval_rows, max(params.min_eval_rows, math.ceil(params.eval_fraction * curated.height)))
    order = list(range(curated.height))
    random.Random(params.seed).shuffle(order)
    return curated[sorted(order[:n_eval])]


def exclude_eval(frame: pl.DataFrame, eval_frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``frame`` without the eval rows: same id, or sharing a word 13-gram with one (short eval rows: their whole
    text). Returns the rows kept and how many were left out."""
    from gristmill.curation.decontam import contamination_hits, eval_ngrams

    ids = set(eval_frame["id"].cast(pl.String).to_list()) if "id" in eval_frame.columns else set()
    hits = contamination_hits(_texts(frame), eval_ngrams(_texts(eval_frame), _NGRAM, min_item_words=4))
    bad = pl.Series("bad", [False] * frame.height)
    if hits.height:
        bad = bad.scatter(hits["row"].unique().to_list(), True)
    keep = ~(bad | frame["id"].cast(pl.String).is_in(list(ids)))
    return frame.filter(keep), int(frame.height - keep.sum())


def _read_rows(path: Path) -> pl.DataFrame:
    # The same readers as Runner.train, so the rows excluded are the rows evaluated.
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.select([c for c in _ROW_COLUMNS if c in frame.columns]).to_dicts()


def _tokenizer(recipe: Recipe) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    from gristmill.models import resolve

    assert recipe.train is not None
    path = resolve(recipe.train.base_model, key="train.base_model")
    return AutoTokenizer.from_pretrained(path), path


def token_counts(recipe: Recipe, frames: dict[str, pl.DataFrame]) -> dict[str, dict[str, Any]]:
    """Per variant: examples the trainer keeps and their tokens, from the trainer's own encoding."""
    from transformers import GenerationConfig

    from gristmill.train.formatting import encode_rows, stop_token_ids

    params = recipe.train
    assert params is not None
    tokenizer, path = _tokenizer(recipe)
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the tokenizer's EOS is the stop token, as in the trainer
        generation = None
    enc = {"stop_ids": stop_token_ids(tokenizer, generation), "fix_eos": params.fix_eos,
           "overlength": params.overlength}
    out = {}
    for name, frame in frames.items():
        examples, stats = encode_rows(tokenizer, _rows(frame), params.max_seq_length, **enc)
        tokens = sum(len(e.input_ids) for e in examples)
        out[name] = {"examples": len(examples), "tokens": tokens, "encode": stats.as_dict(),
                     "mean_tokens": tokens / max(len(examples), 1)}
    return out


def plan_steps(recipe: Recipe, counts: dict[str, dict[str, Any]], mode: Mode) -> tuple[dict[str, int], int]:
    """Optimizer steps per variant and the reference token budget (see the module docstring)."""
    params = recipe.train
    assert params is not None
    per_step = params.batch_size * params.grad_accum
    ref = counts["curated"]
    steps = params.max_steps or max(1, math.ceil(params.epochs * math.ceil(ref["examples"] // params.batch_size
                                                                           / params.grad_accum)))
    budget = round(steps * per_step * ref["mean_tokens"])
    if mode == "steps":
        return dict.fromkeys(counts, steps), budget
    return {name: max(1, round(budget / (per_step * c["mean_tokens"]))) for name, c in counts.items()}, budget


def _variant_recipe(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    raw = dict(recipe.raw)
    raw["train"] = {**(raw.get("train") or {}), **overrides}
    return parse_recipe(yaml.safe_dump(raw), recipe.path)


def _dropped_shares(manifest: dict[str, Any], ingested: int) -> dict[str, float]:
    totals: dict[str, int] = {}
    for step in manifest["steps"][1:]:  # ingest's malformed records never reach the raw rows either
        for reason, n in (step.get("dropped_by_reason") or {}).items():
            totals[reason] = totals.get(reason, 0) + n
    return {k: round(v / max(ingested, 1), 4) for k, v in sorted(totals.items())}


def _metrics(side: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in side.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def same_as(frames: dict[str, pl.DataFrame]) -> dict[str, str]:
    """Variants that need no training of their own: ``curated_synthetic`` is ``curated`` when the final dataset
    holds no synthetic row (``{"curated_synthetic": "curated"}``), else nothing."""
    if frames["curated_synthetic"].height == frames["curated"].height:
        return {"curated_synthetic": "curated"}
    return {}


def eval_leaks(recipe: Recipe, frames: dict[str, pl.DataFrame]) -> dict[str, int] | None:
    """Per variant, its training rows that copy an item of the recipe's eval sets: the rows the recipe's eval
    decontamination (the ``decontaminate`` step on the ``eval:`` files, word 13-grams) would drop. None without
    an ``eval:`` section."""
    from gristmill.curation.decontam import decontaminate
    from gristmill.eval_params import eval_decontamination

    found = eval_decontamination([], recipe.eval, recipe.resolve) if recipe.eval else None
    if found is None:
        return None
    params = found[1]
    params = params.model_copy(update={"eval_sets": [str(recipe.resolve(p)) for p in params.eval_sets]})
    out = {}
    for name, frame in frames.items():
        texts = frame.select(pl.col("id").cast(pl.String), _texts(frame).alias("text"))
        out[name] = decontaminate(texts, params).dropped.height
    return out


def held_out_defects(recipe: Recipe, adapter: Path, eval_frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Generation defect shares (``gristmill.evaluation.defect_shares``) of the base model's and the adapter's
    answers to the held-out rows (the trainer's ``eval_predictions.parquet``): metric -> {base, adapter}."""
    from gristmill.evaluation import at_token_limit, defect_shares, generation_defects, last_user_turn

    path = adapter / "eval_predictions.parquet"
    if not path.is_file():
        return {}
    assert recipe.train is not None
    preds = pl.read_parquet(path)
    if preds.height == 0:  # train.eval_generate_rows: 0
        return {}
    prompts: dict[str, str] = {}
    if "messages" in eval_frame.columns:
        prompts = {str(i): last_user_turn(m or []) for i, m in zip(eval_frame["id"].cast(pl.String).to_list(),
                                                                    eval_frame["messages"].to_list(), strict=True)}
    asked = [prompts.get(str(i), "") for i in preds["id"].to_list()]
    tokenizer, _ = _tokenizer(recipe)
    out: dict[str, dict[str, float]] = {}
    for side in ("base", "adapter"):
        answers = [a or "" for a in preds[side].to_list()]
        limit = at_token_limit(tokenizer, answers, recipe.train.eval_max_new_tokens)
        for k, v in defect_shares(generation_defects(answers, asked, limit)).items():
            out.setdefault(k, {})[side] = v
    return out


def ablate(recipe: Recipe, run_dir: Path | None = None, mode: Mode = "steps") -> dict[str, Any]:
    """Curate (resuming the run's steps), train the variants and write ``<run>/ablation.json``."""
    if recipe.train is None:
        raise InputError(f"{recipe.path}: `gristmill ablate` trains adapters; add a `train:` section (at least "
                         "`train: {base_model: smollm2-135m-instruct, max_steps: 50}`)")
    if mode not in ("steps", "tokens"):
        raise InputError(f"ablation mode {mode!r} is not one of steps, tokens")
    runner = Runner(recipe, run_dir)
    previous = runner.run_dir / "manifest.json"
    before = json.loads(previous.read_text()) if previous.is_file() else {}
    result = runner.run(train=False)
    manifest = result.manifest
    if before.get("train") and before.get("fingerprint") == manifest["fingerprint"]:
        # run(train=False) rewrote the manifest without the run's own adapter, which is still current: keep it.
        manifest["train"] = before["train"]
        write_json_atomic(previous, manifest)
    root = result.run_dir / "ablation"
    ensure_dir(root)
    ingest = result.run_dir / "steps" / "00-ingest" / "kept.parquet"
    if not ingest.is_file():
        raise MissingFileError(f"{ingest} is missing after the run; delete {result.run_dir / 'steps'} and rerun")
    final = result.frame
    synthetic = pl.col("source").str.starts_with("synth:") if "source" in final.columns else pl.lit(False)
    frames = {"raw": pl.read_parquet(ingest), "curated": final.filter(~synthetic), "curated_synthetic": final}
    same = same_as(frames)
    variants = [n for n in VARIANTS if n not in same]

    overrides: dict[str, Any] = {}
    if recipe.train.eval_file:
        eval_frame = _read_rows(recipe.resolve(recipe.train.eval_file))
        eval_source = "eval_file"
    else:
        eval_frame = held_out(frames["curated"], recipe)
        eval_path = root / "eval.parquet"
        write_parquet_atomic(eval_frame.select([c for c in _ROW_COLUMNS if c in eval_frame.columns]), eval_path)
        overrides["eval_file"] = str(eval_path.resolve())
        eval_source = "held_out_from_curated"
    excluded = {}
    for name in VARIANTS:
        frames[name], excluded[name] = exclude_eval(frames[name], eval_frame)
    leaks = eval_leaks(recipe, frames)
    counts = token_counts(recipe, frames)
    for name, c in counts.items():
        if c["examples"] < recipe.train.batch_size:
            raise InputError(f"ablation variant {name}: {c['examples']} trainable rows after leaving out the "
                             f"{eval_frame.height} eval rows, fewer than train.batch_size={recipe.train.batch_size}; "
                             "curate more rows or lower train.max_eval_rows / train.batch_size")
    steps, budget = plan_steps(recipe, counts, mode)

    evals, trained = {}, {}
    for name in variants:
        variant = _variant_recipe(recipe, overrides | {"max_steps": steps[name]})
        trainer = Runner(variant, result.run_dir, console=runner.console)
        rows = _rows(frames[name])
        data_fp = fingerprint("ablation", name, manifest["fingerprint"], rows)
        log.info(f"ablation: {name} ({frames[name].height} rows, {steps[name]} steps)")
        trained[name] = trainer.train(frames[name], data_fp, target=root / name)
        evals[name] = json.loads((root / name / "eval.json").read_text())
    for name, like in same.items():
        log.info(f"ablation: {name} not trained: same data as {like}")

    eval_sets: dict[str, dict[str, dict[str, float | None]]] = {}
    if recipe.eval:
        from gristmill.evaluation import evaluate

        scored = evaluate(recipe, {n: root / n for n in variants}, root / "eval")
        for row in scored["table"]:
            eval_sets.setdefault(row["set"], {})[row["metric"]] = {c: row.get(c) for c in ("base", *VARIANTS)}
    base = _metrics(evals["curated"]["base"])  # same model, same eval rows: every variant measures the same base
    table: dict[str, dict[str, float | None]] = {}
    for metric, value in base.items():
        table[metric] = {"base": value} | {n: _metrics(evals[n]["adapter"]).get(metric) if n in evals else None
                                           for n in VARIANTS}
    defects = {n: held_out_defects(recipe, root / n, eval_frame) for n in variants}
    for metric in defects["curated"]:
        table[metric] = {"base": defects["curated"][metric]["base"]} | {
            n: defects[n][metric]["adapter"] if n in defects else None for n in VARIANTS}
    ingested = frames["raw"].height + excluded["raw"]
    shares = _dropped_shares(manifest, ingested)
    data = {name: {"rows": frames[name].height, "excluded_eval": excluded[name],
                   "eval_leaks": None if leaks is None else leaks[name],
                   "synthetic_rows": frames[name].filter(pl.col("source").str.starts_with("synth:")).height
                   if "source" in frames[name].columns else 0,
                   "examples": counts[name]["examples"], "tokens": counts[name]["tokens"],
                   "encode": counts[name]["encode"],
                   "dropped_share_by_reason": {} if name == "raw" else shares}
            for name in VARIANTS}

    def per_variant(key: str) -> dict[str, Any]:
        return {n: trained[n][key] if n in trained else None for n in VARIANTS}

    out = {
        "recipe": str(recipe.path), "mode": mode, "run_fingerprint": manifest["fingerprint"],
        "eval": {"source": eval_source, "rows": evals["curated"]["rows"],
                 "generation_rows": (evals["curated"].get("generation") or {}).get("rows", 0),
                 "max_new_tokens": recipe.train.eval_max_new_tokens},
        "token_budget": budget if mode == "tokens" else None,
        "metrics": table,
        "eval_sets": eval_sets,
        "same_as": same,
        "steps": {n: steps[n] if n in trained else None for n in VARIANTS},
        "tokens_trained": per_variant("tokens_seen"),
        "train_rows": per_variant("train_rows"),
        "resumed": per_variant("resumed"),
        "data": data,
        "adapters": {n: str(root / n) if n in trained else None for n in VARIANTS},
    }
    write_json_atomic(result.run_dir / "ablation.json", out)
    write_report(result.run_dir)  # the report's ablation table
    return out


def render(summary: dict[str, Any]) -> Table:
    """``ablation.json`` as a table (``report_outcomes.ablation_rows``, as in the report)."""
    budget = f", token budget {summary['token_budget']}" if summary.get("token_budget") else ""
    table = Table("metric", "base", *VARIANTS, title=f"ablation ({summary['mode']} mode{budget}, "
                  f"{summary['eval']['rows']} eval rows: {summary['eval']['source']})")
    for row in ablation_rows(summary):
        table.add_row(*row)
    return table
