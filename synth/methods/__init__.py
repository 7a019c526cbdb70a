"""Generation methods. Each module defines ``<Name>Params`` (a ``GenerationParams`` with a ``method`` literal),
``VERSION`` and ``run(frame, params, *, engine, model_name[, screen]) -> (kept, dropped, stats)``; ``METHODS`` maps the
recipe's ``method:`` value to them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from gristmill.synth.methods import answer, evolve, gap_fill, paraphrase, self_instruct
from gristmill.synth.methods.base import Engine, GenerationParams, NewRowParams, Screen


@dataclass(frozen=True)
class Method:
    params: type[GenerationParams]
    version: str
    run: Callable[..., tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]]


METHODS: dict[str, Method] = {
    "self_instruct": Method(self_instruct.SelfInstructParams, self_instruct.VERSION, self_instruct.run),
    "evolve": Method(evolve.EvolveParams, evolve.VERSION, evolve.run),
    "paraphrase": Method(paraphrase.ParaphraseParams, paraphrase.VERSION, paraphrase.run),
    "answer": Method(answer.AnswerParams, answer.VERSION, answer.run),
    "gap_fill": Method(gap_fill.GapFillParams, gap_fill.VERSION, gap_fill.run),
}


def params_for(raw: dict[str, Any]) -> type[GenerationParams]:
    """The params model for a recipe's ``synthesize`` mapping, chosen by its ``method`` (default self_instruct)."""
    method = raw.get("method", "self_instruct") if isinstance(raw, dict) else "self_instruct"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    return METHODS[method].params


def run_method(frame: pl.DataFrame, params: GenerationParams, *, engine: Engine, model_name: str,
               screen: Screen | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Run ``params.method``; ``screen`` (the post-filter, for methods that add rows) checks each round's rows."""
    run = METHODS[params.method].run
    if isinstance(params, NewRowParams):
        return run(frame, params, engine=engine, model_name=model_name, screen=screen)
    return run(frame, params, engine=engine, model_name=model_name)


def versions() -> str:
    """One version string over all methods (part of the synthesize step's fingerprint)."""
    return "-".join(f"{name}{m.version}" for name, m in sorted(METHODS.items()))
