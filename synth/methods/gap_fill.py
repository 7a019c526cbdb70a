"""Gap filling: new instruction rows that naturally involve people of groups the audit found under-represented.

Gaps come from an audit report (``<run>/reports/NN-audit.json``: ``gaps`` = [{axis, group, rows, target_rows}])
and/or ``gaps_inline``; each asks for ``target_rows - rows`` new rows, and ``n`` caps the total (shared out
round-robin, so small gaps are filled first and large ones evenly). Each round sends, as one batch with the task
JSON schema, ``oversample`` prompts per missing row. A prompt names the group with a descriptive phrase (a
built-in phrase per group of the audit's English lexicon, ``a/an <group> person`` otherwise, ``group_phrases``
overrides), lists a few of the group's lexicon terms to use, and shows ``examples_per_prompt`` instructions of
the frame (their ids become ``source_ids``) so the new tasks stay in the data's domain.

Detection: a candidate is kept only if its text mentions the group by the same lexicon the audit uses, so the
next audit counts it. The lexicon is read and matched by ``gristmill.common.lexicon``, the code the audit counts with (the
orchestrator passes the audit's built-in file when ``lexicon`` is unset). Rejections:
``group_not_mentioned``, ``mentions_other_group`` (with ``exclusive``), ``not_novel`` (ROUGE-L >= ``max_rouge_l``
with an instruction of the frame or an accepted row), ``over_quota`` and the parser's reasons. Accepted rows carry
``meta.synth.gap = {axis, group}`` so the audit can re-measure them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.errors import InputError
from gristmill.common.lexicon import groups_mentioned, load_lexicon
from gristmill.synth.methods.base import (
    Engine,
    Ledger,
    NewRowParams,
    Screen,
    messages_row,
    sampling_config,
    template_hash,
)
from gristmill.synth.methods.common import batch_size, chat, instruction_rows
from gristmill.synth.parse import TASK_SCHEMA, Rejected, parse_task
from gristmill.synth.rouge import max_rouge_l, tokens

VERSION = "2"  # 2: post-filter

PHRASES: dict[str, str] = {
    "female": "a woman or girl", "male": "a man or boy", "nonbinary": "a nonbinary person",
    "black": "a Black person", "white": "a white person", "asian": "an Asian or Asian American person",
    "hispanic_latino": "a Hispanic or Latino person", "indigenous": "an Indigenous person",
    "middle_eastern": "an Arab, Persian or other Middle Eastern person",
    "christian": "a Christian", "muslim": "a Muslim", "jewish": "a Jewish person", "hindu": "a Hindu",
    "buddhist": "a Buddhist", "atheist": "an atheist or agnostic person",
    "child": "a child", "teen": "a teenager", "young_adult": "a young adult", "middle_aged": "a middle-aged person",
    "older_adult": "an older adult",
}
SYSTEM = "You write diverse, self-contained tasks for training a helpful assistant. Answer only with JSON."
TEMPLATE = (
    "{examples}Write one new task for an assistant in which {phrase} naturally takes part: the task is asked by "
    "them, is about them, or involves them in an everyday situation. Name them explicitly, using one of these "
    "words: {terms}. Treat them with respect and do not rely on stereotypes. Give the instruction, an optional "
    'input (empty string if none) and a correct, helpful output, as JSON with the keys "instruction", "input" '
    'and "output".'
)


class Gap(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    axis: str
    """Lexicon axis, e.g. ``gender``."""
    group: str
    """Group of that axis, e.g. ``nonbinary``."""
    rows: int = Field(ge=0)
    """Rows to generate; with ``target_rows`` (the audit report's shape), the rows that mention the group now."""
    target_rows: int | None = Field(None, ge=0)
    """Rows wanted in total; the gap asks for ``target_rows - rows`` new rows."""

    @property
    def needed(self) -> int:
        return self.rows if self.target_rows is None else max(0, self.target_rows - self.rows)


class GapFillParams(NewRowParams):
    method: Literal["gap_fill"] = "gap_fill"
    """Generate rows involving groups that an audit found under-represented."""
    gaps: str | None = Field(None, json_schema_extra={"path": True})
    """An audit report JSON (``<run>/reports/NN-audit.json``); its ``gaps`` list is filled."""
    gaps_inline: list[Gap] = Field(default_factory=list)
    """Gaps given in the recipe: ``{axis, group, rows}`` (``rows`` new rows), or the report's shape."""
    lexicon: str | None = Field(None, json_schema_extra={"path": True})
    """The lexicon the audit uses (JSON axis -> group -> terms); default: the audit's built-in English lexicon."""
    group_phrases: dict[str, str] = Field(default_factory=dict)
    """Phrase naming a group in prompts, by group name (e.g. ``{nonbinary: "a nonbinary teenager"}``)."""
    exclusive: bool = False
    """Also reject rows that mention another group of the same axis (``mentions_other_group``)."""
    examples_per_prompt: int = Field(1, ge=0, le=5)
    """Instructions of the frame shown in each prompt as examples of the data's domain and style."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """Reject a task whose instruction has ROUGE-L >= this with a frame instruction or an accepted task."""

    @model_validator(mode="after")
    def _has_gaps(self) -> GapFillParams:
        if self.gaps is None and not self.gaps_inline:
            raise ValueError("gap_fill needs `gaps` (an audit report JSON) or `gaps_inline`")
        return self


def phrase(group: str, overrides: dict[str, str] | None = None) -> str:
    """How a prompt names a group. ``phrase("older_adult") == "an older adult"``; ``phrase("sikh") == "a sikh
    person"``."""
    if overrides and group in overrides:
        return overrides[group]
    if group in PHRASES:
        return PHRASES[group]
    words = group.replace("_", " ").replace("-", " ").strip()
    return f"{'an' if words[:1].lower() in 'aeiou' else 'a'} {words} person"


def load_gaps(params: GapFillParams) -> list[Gap]:
    gaps: list[Gap] = []
    if params.gaps is not None:
        report = json.loads(Path(params.gaps).read_text(encoding="utf-8"))
        if not isinstance(report, dict) or not isinstance(report.get("gaps"), list):
            raise ValueError(f"synthesize.gaps: {params.gaps} is not an audit report (no `gaps` list)")
        gaps += [Gap.model_validate(g) for g in report["gaps"]]
    return gaps + list(params.gaps_inline)


def quotas(needs: list[int], n: int) -> list[int]:
    """Share ``n`` rows among gaps round-robin, never beyond a gap's need. ``quotas([5, 1, 3], 6) == [3, 1, 2]``."""
    out = [0] * len(needs)
    while sum(out) < n and any(o < k for o, k in zip(out, needs, strict=True)):
        for i, k in enumerate(needs):
            if out[i] < k and sum(out) < n:
                out[i] += 1
    return out


def gap_fill(
    frame: pl.DataFrame, params: GapFillParams, *, engine: Engine, model_name: str,
    gaps: list[Gap], lexicon: dict[str, dict[str, list[str]]], screen: Screen | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    for gap in gaps:
        if gap.group not in lexicon.get(gap.axis, {}):
            raise ValueError(f"synthesize.gaps: {gap.axis}.{gap.group} is not in the lexicon (axes: "
                             f"{', '.join(f'{a}: {sorted(g)}' for a, g in lexicon.items())}); pass `lexicon:`")
    rng = random.Random(params.seed)
    sampling = sampling_config(params, params.max_tokens, TASK_SCHEMA)
    ledger = Ledger("gap_fill", model_name, engine, sampling, params.seed, template_hash(SYSTEM, TEMPLATE),
                    screen=screen)
    sources = instruction_rows(frame)
    pool = [tokens(s.instruction) for s in sources]
    quota = quotas([g.needed for g in gaps], params.n)
    done = [0] * len(gaps)
    gap_of: dict[str, int] = {}  # candidate id -> its gap (a post-filtered row frees its gap's slot)
    for round_no in range(params.max_rounds):
        picks = [i for i, g in enumerate(gaps) for _ in range(batch_size(quota[i] - done[i], params.oversample))
                 if quota[i] > done[i]]
        if not picks:
            break
        prompts, shown = [], []
        for i in picks:
            gap = gaps[i]
            examples = rng.sample(sources, min(params.examples_per_prompt, len(sources)))
            intro = "".join(f"Example task from the data set:\n{s.instruction}\n\n" for s in examples)
            terms = ", ".join(t.rstrip("*") for t in lexicon[gap.axis][gap.group][:8])
            text = TEMPLATE.format(examples=intro, phrase=phrase(gap.group, params.group_phrases), terms=terms)
            prompts.append(chat(text, SYSTEM))
            shown.append([s.id for s in examples])
        for idx, (i, ids, gen) in enumerate(zip(picks, shown, ledger.generate(prompts), strict=True)):
            gap = gaps[i]
            cand_id = ledger.candidate_id(round_no, idx, gap.axis, gap.group, gen.text)
            prov = ledger.provenance(source_ids=ids, round=round_no, gap={"axis": gap.axis, "group": gap.group})
            try:
                task = parse_task(gen.text, gen.finish_reason)
                ledger.counts["parsed"] += 1
                row = messages_row(task["instruction"], task["input"], task["output"])
                found = groups_mentioned(row["text"], lexicon[gap.axis])
                if gap.group not in found:
                    raise Rejected("group_not_mentioned", f"no {gap.axis}.{gap.group} term")
                if params.exclusive and len(found) > 1:
                    raise Rejected("mentions_other_group", ", ".join(g for g in found if g != gap.group))
                score = max_rouge_l(task["instruction"], pool)
                if score >= params.max_rouge_l:
                    raise Rejected("not_novel", f"ROUGE-L {score:.2f}")
                if done[i] >= quota[i]:
                    raise Rejected("over_quota", f"{gap.axis}.{gap.group} is filled")
            except Rejected as rej:
                ledger.reject(cand_id, gen.text, rej.reason, prov)
                continue
            done[i] += 1
            gap_of[cand_id] = i
            pool.append(tokens(task["instruction"]))
            ledger.accept(cand_id, row, prov | {"rouge_l_max": score})
        for cand_id in ledger.settle(frame):
            done[gap_of[cand_id]] -= 1
    kept, dropped, stats = ledger.result(frame)
    filled = [{"axis": g.axis, "group": g.group, "needed": g.needed, "quota": q, "generated": d}
              for g, q, d in zip(gaps, quota, done, strict=True)]
    return kept, dropped, stats | {"gaps": filled}


def run(
    frame: pl.DataFrame, params: GapFillParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    if params.lexicon is None:  # the orchestrator fills in the audit's built-in lexicon
        raise InputError("synthesize.lexicon: gap_fill needs the audit's lexicon file, e.g. "
                         "gristmill.audit.lexicon.builtin_lexicon_path()")
    return gap_fill(frame, params, engine=engine, model_name=model_name, gaps=load_gaps(params),
                    lexicon=load_lexicon(params.lexicon, key="synthesize.lexicon"), screen=screen)
