"""The step registry: recipe step names -> params model, version and an adapter that calls the stage function.

Stage packages stay free of orchestration; the adapters here load what a stage needs (reference files, seed
tasks, models from the registry, the embedding cache) and hand it over as plain data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import BaseModel

from gristmill.audit import audit as audit_mod
from gristmill.audit import counterfactual as counterfactual_mod
from gristmill.audit import reweigh as reweigh_mod
from gristmill.common.contract import StatsMerge, StepResult, TwoPass, sum_stats
from gristmill.common.embedding import EmbeddingParams
from gristmill.common.errors import InputError
from gristmill.curation import decontam, dedup_exact, filters, minhash, normalize, quality, rulesets, semdedup
from gristmill.curation import pii as pii_mod
from gristmill.curation import signals as signals_mod
from gristmill.synth import methods
from gristmill.synth.methods.base import GenerationParams, NewRowParams

if TYPE_CHECKING:
    from gristmill.curation.embed import Embedder

@dataclass
class Context:
    """What a step may use besides its frame and params."""

    cache_dir: Path
    progress: Callable[[int], None] = lambda n: None
    models: dict[str, str] = field(default_factory=dict)
    """Filled by steps: model role -> resolved local path (recorded in the manifest)."""
    trust_remote_code: bool = False
    """The recipe's ``trust_remote_code``: passed to every model this step loads (off unless the recipe sets it)."""


@dataclass(frozen=True)
class StepDef:
    """A recipe step: its params model, its version and how to run it.

    ``stage`` is a pure stage function ``(frame, params) -> StepResult``; ``adapter`` is used instead when the
    step needs what only the orchestrator has (reference files read by ingest, models from the registry, the
    embedding cache) and calls the stage function with them.
    """

    params: type[BaseModel]
    version: str | Callable[[Any], str]
    """A version string, or ``params -> version`` for steps whose code depends on a key (synthesize's method)."""
    stage: Callable[[pl.DataFrame, Any], StepResult] | None = None
    adapter: Callable[[pl.DataFrame, Any, Context], StepResult] | None = None
    select: Callable[[dict[str, Any]], type[BaseModel]] | None = None
    """For steps whose params depend on a key (synthesize's ``method``): raw mapping -> params model."""
    row_local: bool = False
    """The output for a row depends on that row alone (no gate or added rows; a report only with ``merge_report``):
    the runner streams the step, a slice of its input at a time, from the previous checkpoint into its own."""
    merge: StatsMerge = sum_stats
    """A row-local step's stats on the whole input from those of its slices (default: counts added)."""
    merge_report: Callable[[list[dict[str, Any]], list[dict[str, Any]], int],
                           tuple[dict[str, Any], dict[str, Any]]] | None = None
    """A row-local step with a report: (slices' stats, slices' reports, rows in) -> the whole input's stats and
    report (used instead of ``merge``)."""
    plan: Callable[[Any, Context, pl.Schema, int], TwoPass] | None = None
    """A global step in two passes (``TwoPass``, built from params, context, the input's schema and row count): the
    runner streams it, a slice at a time in each pass, from the previous checkpoint into its own; ``stage`` or
    ``adapter`` is the same step on a whole frame."""

    def run(self, frame: pl.DataFrame, params: Any, ctx: Context) -> StepResult:
        if self.adapter is not None:
            return self.adapter(frame, params, ctx)
        assert self.stage is not None, "a StepDef needs a stage or an adapter"
        return self.stage(frame, params)

    def version_of(self, params: Any) -> str:
        return self.version if isinstance(self.version, str) else self.version(params)


def _embedder(role: str, params: EmbeddingParams, ctx: Context) -> Embedder:
    """The embedder ``params`` describe, with the shared embedding cache; recorded in ``ctx.models[role]``."""
    from gristmill.curation.embed import Embedder
    from gristmill.models import resolve

    model_path = resolve(params.model, key=f"{role}.model")
    ctx.models[role] = model_path
    return Embedder(model_path, cache_path=ctx.cache_dir / "embeddings.sqlite", batch_size=params.batch_size,
                    max_seq_length=params.max_seq_length, precision=params.precision,
                    trust_remote_code=ctx.trust_remote_code)


def _quality(frame: pl.DataFrame, params: quality.QualityParams, ctx: Context) -> StepResult:
    from gristmill.ingest import InputSpec, ingest

    ref, _ = ingest(InputSpec(path=params.reference, mapping=params.reference_mapping), Path(params.reference))
    embedder = _embedder("quality", params, ctx)
    labels = None
    if params.scorer == "classifier":
        if params.label_column not in ref.columns:
            raise InputError(f"quality.label_column: {params.reference} has no column {params.label_column!r}; "
                             f"columns: {ref.columns}")
        labels = ref[params.label_column].cast(pl.Boolean).fill_null(False).cast(pl.Int8).to_numpy()
    result = quality.score_quality(
        frame, params, embed=lambda texts: embedder.encode(texts, ctx.progress),
        reference=embedder.encode(ref["text"].to_list()), labels=labels,
    )
    result.stats |= {"embeddings_computed": embedder.computed, "embeddings_cached": embedder.cached}
    return result


def _signals(frame: pl.DataFrame, params: signals_mod.SignalsParams, ctx: Context) -> StepResult:
    """Hand the signals stage its models as plain callables: the embedder, the small LM's losses, the judge."""
    from contextlib import ExitStack

    embedder = _embedder("signals", params, ctx) if params.relevance or params.classifier else None
    losses = None
    if params.small_model is not None:
        from gristmill.curation.lm_loss import response_losses
        from gristmill.models import resolve

        lm_path = resolve(params.small_model, key="signals.small_model")
        ctx.models["signals.small_model"] = lm_path

        def losses(prompts: list[Any], responses: list[str]) -> tuple[list[float], list[float]]:
            return response_losses(lm_path, prompts, responses, max_tokens=params.lm_max_tokens,
                                   batch_size=params.lm_batch_size)
    embed = (lambda texts: embedder.encode(texts, ctx.progress)) if embedder else None
    classifier = None
    if params.classifier is not None:
        assert embedder is not None and embed is not None
        classifier = signals_mod.fit_classifier(frame, params.classifier, embed=embed, model_key=embedder.model_key,
                                                cache_dir=ctx.cache_dir)
    with ExitStack() as stack:
        judge, cached = _judge(params.judge, ctx, stack) if params.judge is not None else (None, None)
        result = signals_mod.score_signals(frame, params, embed=embed, losses=losses, judge=judge,
                                           classifier=classifier)
        if cached is not None:
            result.stats |= {f"judge_{k}": v for k, v in cached.stats().items()}
    if embedder is not None:
        result.stats |= {"embeddings_computed": embedder.computed, "embeddings_cached": embedder.cached}
    return result


def _judge(params: signals_mod.JudgeParams, ctx: Context, stack: Any, engine: Any = None
           ) -> tuple[Callable[[list[Any]], list[str]], Any]:
    """The synthesis engine (or ``engine``) as a judge callable through the request cache (greedy, JSON-schema
    output), and the cached engine (its hit/miss counters)."""
    from gristmill.synth.cache import CachedEngine
    from gristmill.synth.engine import SamplingConfig

    if params.engine == "openai" and params.base_url is None:
        raise InputError("signals.judge.base_url: engine openai needs the server's base URL")
    if engine is None:
        engine = _engine("signals.judge", ctx, engine=params.engine, model=params.model, base_url=params.base_url,
                         api_key_env=params.api_key_env)
        stack.callback(engine.close)
    cached = stack.enter_context(CachedEngine(engine, ctx.cache_dir / "synth_requests.sqlite"))
    sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=params.max_tokens,
                              json_schema=signals_mod.JUDGE_SCHEMA)
    return (lambda prompts: [g.text for g in cached.chat(prompts, sampling)]), cached


def _dedup_minhash(frame: pl.DataFrame, params: minhash.MinhashParams, ctx: Context) -> StepResult:
    """Earlier sets (``against``) come with their sketch: read from an earlier run's persisted index
    (``gristmill.lineage``) when current, else hashed (and persisted there for the next round)."""
    from gristmill.lineage import earlier_sketches

    earlier, sketch, counts = earlier_sketches(params)
    result = minhash.dedup_minhash(frame, params, earlier=earlier, earlier_sketch=sketch)
    result.stats |= counts
    return result


def _minhash_plan(params: minhash.MinhashParams, ctx: Context, schema: pl.Schema, rows: int) -> TwoPass:
    """``_dedup_minhash`` as a two-pass plan (the runner streams it)."""
    from gristmill.lineage import earlier_sketches

    earlier, sketch, counts = earlier_sketches(params)
    return minhash.MinhashDedup(params, schema, rows, *minhash.earlier_rows(earlier, sketch, params),
                                extra_stats=counts)


def _dedup_semantic(frame: pl.DataFrame, params: semdedup.SemanticDedupParams, ctx: Context) -> StepResult:
    embedder = _embedder("dedup_semantic", params, ctx)
    result = semdedup.dedup_semantic(frame, params, embed=lambda texts: embedder.encode(texts, ctx.progress))
    result.stats |= {"embeddings_computed": embedder.computed, "embeddings_cached": embedder.cached}
    return result


def _eval_decontaminate(frame: pl.DataFrame, params: decontam.DecontamParams, ctx: Context) -> StepResult:
    """The decontaminate step against the recipe's eval sets (added by the recipe, ``gristmill.eval_params``); its
    drops say why in their own words: ``eval_contamination``."""
    result = decontam.decontaminate(frame, params)
    return replace(result, dropped=result.dropped.with_columns(reason=pl.lit("eval_contamination")))


def _synthesize(frame: pl.DataFrame, params: GenerationParams, ctx: Context) -> StepResult:
    """Run the method on the chosen engine, through the request cache unless ``cache: false``, with the method's
    post-filter (gristmill/postfilter.py) screening each round's new rows.

    The engine starts lazily (vLLM loads on the first cache miss), so a fully cached rerun never loads a model.
    Cache counters go into the step's stats.
    """
    from gristmill.postfilter import build_screen
    from gristmill.synth.cache import CachedEngine

    screen = None
    if isinstance(params, NewRowParams):
        def embedder(gate: EmbeddingParams) -> Callable[[list[str]], Any]:
            return _embedder("synthesize.post_filter.quality", gate, ctx).encode

        screen = build_screen(params.post_filter, embedder)
    if getattr(params, "method", None) == "gap_fill" and params.lexicon is None:  # type: ignore[attr-defined]
        from gristmill.audit.lexicon import builtin_lexicon_path

        params = params.model_copy(update={"lexicon": str(builtin_lexicon_path())})
    engine = _synth_engine(params, ctx)
    try:
        if not params.cache:
            return methods.run_method(frame, params, engine=engine, model_name=params.model, screen=screen)
        with CachedEngine(engine, ctx.cache_dir / "synth_requests.sqlite", chunk_size=params.cache_chunk) as cached:
            result = methods.run_method(frame, params, engine=cached, model_name=params.model, screen=screen)
            result.stats |= cached.stats()
            return result
    finally:
        engine.close()


def _synth_engine(params: GenerationParams, ctx: Context) -> Any:
    # A per-request seed only when the recipe sets one (vLLM-CPU crashes on them at scale, docs/platform.md).
    request_seed = params.seed if "seed" in params.model_fields_set else None
    return _engine("synthesize", ctx, engine=params.engine, model=params.model, base_url=params.base_url,
                   api_key_env=params.api_key_env, concurrency=params.concurrency,
                   request_timeout_s=params.request_timeout_s, max_retries=params.max_retries,
                   request_seed=request_seed, seed=params.seed, replicas=params.replicas)


def _engine(role: str, ctx: Context, *, engine: str, model: str, base_url: str | None, api_key_env: str | None,
            concurrency: int = 8, request_timeout_s: float = 300.0, max_retries: int = 3,
            request_seed: int | None = None, seed: int = 0, replicas: int = 1) -> Any:
    """A generation engine for ``role`` (synthesis, the judge): an OpenAI-compatible server at ``base_url``, or
    vLLM in-process on the registry's ``model``; recorded in ``ctx.models[role]``."""
    if engine == "openai":
        from gristmill.synth.http_engine import OpenAIEngine

        assert base_url is not None  # the params' validators
        ctx.models[role] = f"{model} @ {base_url}"
        return OpenAIEngine(base_url, model, api_key_env, concurrency, request_timeout_s, max_retries,
                            seed=request_seed)
    from gristmill.models import resolve
    from gristmill.synth.replicas import vllm_engine

    model_path = resolve(model, key=f"{role}.model")
    ctx.models[role] = model_path
    return vllm_engine(model_path, replicas=replicas, seed=seed, trust_remote_code=ctx.trust_remote_code)


STEPS: dict[str, StepDef] = {
    "normalize": StepDef(normalize.NormalizeParams, normalize.VERSION, stage=normalize.normalize, row_local=True),
    "filter": StepDef(filters.FilterParams, filters.VERSION, stage=filters.filter_rows, row_local=True),
    "heuristics": StepDef(rulesets.HeuristicsParams, rulesets.VERSION, stage=rulesets.heuristics, row_local=True,
                          merge=rulesets.merge_stats),
    "dedup_exact": StepDef(dedup_exact.ExactDedupParams, dedup_exact.VERSION, stage=dedup_exact.dedup_exact,
                           plan=lambda params, ctx, schema, rows: dedup_exact.ExactDedup(params, schema, rows)),
    "dedup_minhash": StepDef(minhash.MinhashParams, minhash.VERSION, adapter=_dedup_minhash, plan=_minhash_plan),
    "dedup_semantic": StepDef(semdedup.SemanticDedupParams, semdedup.VERSION, adapter=_dedup_semantic),
    "quality": StepDef(quality.QualityParams, quality.VERSION, adapter=_quality),
    "signals": StepDef(signals_mod.SignalsParams, signals_mod.VERSION, adapter=_signals),
    "decontaminate": StepDef(decontam.DecontamParams, decontam.VERSION, stage=decontam.decontaminate, row_local=True,
                             merge_report=decontam.merge_slices),
    "eval_decontaminate": StepDef(decontam.DecontamParams, decontam.VERSION, adapter=_eval_decontaminate,
                                  row_local=True, merge_report=decontam.merge_slices),
    "synthesize": StepDef(GenerationParams, methods.version_for, adapter=_synthesize, select=methods.params_for),
    "audit": StepDef(audit_mod.AuditParams, audit_mod.VERSION, stage=audit_mod.audit_rows,
                     plan=lambda params, ctx, schema, rows: audit_mod.Audit(params, schema, rows)),
    "reweigh": StepDef(reweigh_mod.ReweighParams, reweigh_mod.VERSION, stage=reweigh_mod.reweigh),
    "counterfactual_augment": StepDef(counterfactual_mod.CounterfactualParams, counterfactual_mod.VERSION,
                                      stage=counterfactual_mod.counterfactual_augment),
    "scrub_pii": StepDef(pii_mod.PiiParams, pii_mod.VERSION, stage=pii_mod.scrub_pii, row_local=True),
}
