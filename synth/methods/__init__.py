"""Generation methods. ``METHODS`` maps the recipe's ``method:`` value to its params model (a
``GenerationParams`` with a ``method`` literal), its version and how it runs; ``run_method`` is the one entry
point and returns a ``StepResult``.

A method that adds rows is one short module: params, prompt template and a ``LoopMethod`` subclass saying how it
proposes prompts and judges answers; the rounds, quotas, answer stage and post-filter are the shared loop's
(loop.py). ``answer`` rewrites rows in place with its own small driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from gristmill.common.contract import StepResult
from gristmill.synth.methods import answer, evolve, gap_fill, loop, multi_turn, paraphrase, self_instruct
from gristmill.synth.methods.base import Engine, GenerationParams, Screen
from gristmill.synth.methods.loop import LoopMethod, run_loop


@dataclass(frozen=True)
class Method:
    params: type[GenerationParams]
    version: str
    """The synthesize step's version when it runs this method (part of the step's fingerprint)."""
    loop: type[LoopMethod[Any]] | None = None
    """The method's ``LoopMethod``; None for ``answer``, which has its own driver."""


def _looped(params: type[GenerationParams], version: str, method: type[LoopMethod[Any]]) -> Method:
    # The loop's version is part of each looped method's: a change to the loop reruns all of them, a change to
    # one method only its own steps.
    return Method(params, f"{version}+loop{loop.VERSION}", method)


METHODS: dict[str, Method] = {
    "self_instruct": _looped(self_instruct.SelfInstructParams, self_instruct.VERSION, self_instruct.SelfInstruct),
    "evolve": _looped(evolve.EvolveParams, evolve.VERSION, evolve.Evolve),
    "paraphrase": _looped(paraphrase.ParaphraseParams, paraphrase.VERSION, paraphrase.Paraphrase),
    "answer": Method(answer.AnswerParams, answer.VERSION),
    "gap_fill": _looped(gap_fill.GapFillParams, gap_fill.VERSION, gap_fill.GapFill),
    "multi_turn": _looped(multi_turn.MultiTurnParams, multi_turn.VERSION, multi_turn.MultiTurn),
}


def params_for(raw: dict[str, Any]) -> type[GenerationParams]:
    """The params model for a recipe's ``synthesize`` mapping, chosen by its ``method`` (default self_instruct)."""
    method = raw.get("method", "self_instruct") if isinstance(raw, dict) else "self_instruct"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    return METHODS[method].params


def version_for(method: str | GenerationParams) -> str:
    """The synthesize step's version when it runs ``method`` (a name, or the step's params), e.g.
    ``version_for("evolve") == "3+loop1"``; usable as ``StepDef.version``."""
    name = method if isinstance(method, str) else method.method  # type: ignore[attr-defined]
    return METHODS[name].version


def run_method(frame: pl.DataFrame, params: GenerationParams, *, engine: Engine, model_name: str,
               screen: Screen | None = None) -> StepResult:
    """Run ``params.method`` on ``frame``; ``screen`` (the post-filter) checks each round's new rows (methods that
    rewrite rows, ``answer``, ignore it)."""
    method = METHODS[params.method]  # type: ignore[attr-defined]
    if method.loop is None:
        return answer.run(frame, params, engine=engine, model_name=model_name)  # type: ignore[arg-type]
    return run_loop(method.loop(frame, params), engine=engine, model_name=model_name, screen=screen)
