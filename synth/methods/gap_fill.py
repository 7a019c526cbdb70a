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
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.errors import InputError
from gristmill.common.lexicon import groups_mentioned, load_lexicon
from gristmill.common.text import instruction_messages
from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import NewRowParams
from gristmill.synth.methods.common import NoveltyPool, chat, instruction_rows
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState
from gristmill.synth.parse import TASK_SCHEMA, Rejected, parse_task

VERSION = "3"  # 2: post-filter; 3: the shared loop

PHRASES: dict[str, str] = {  # one per group of the audit's built-in lexicon; each phrase mentions its group
    "female": "a woman or girl", "male": "a man or boy", "nonbinary": "a nonbinary person",
    "transgender": "a transgender person",
    "black": "a Black person", "white": "a white person", "asian": "an Asian or Asian American person",
    "hispanic_latino": "a Hispanic or Latino person", "indigenous": "an Indigenous person",
    "middle_eastern": "an Arab, Persian or other Middle Eastern person",
    "pacific_islander": "a Pacific Islander", "multiracial": "a multiracial person",
    "christian": "a Christian", "muslim": "a Muslim", "jewish": "a Jewish person", "hindu": "a Hindu",
    "buddhist": "a Buddhist", "sikh": "a Sikh", "atheist": "an atheist or agnostic person",
    "other_faith": "a Jain, Baha'i, pagan or other religious person",
    "child": "a child", "teen": "a teenager", "young_adult": "a young adult", "middle_aged": "a middle-aged person",
    "older_adult": "an older adult",
    "visual": "a blind or low-vision person", "hearing": "a deaf or hard-of-hearing person",
    "mobility": "a wheelchair user or person with a mobility impairment", "cognitive": "an autistic or dyslexic person",
    "mental_health": "a person living with a mental illness", "speech": "a person with a speech impairment",
    "general_disability": "a disabled person",
    "north_american": "an American or Canadian person", "latin_american": "a Mexican or other Latin American person",
    "european": "a European person", "east_asian": "a Chinese, Japanese or Korean person",
    "southeast_asian": "a Filipino, Indonesian or other Southeast Asian person",
    "south_asian": "an Indian, Pakistani or Bangladeshi person", "mena": "a person from the Middle East",
    "african": "an African person", "oceanian": "an Australian or New Zealander", "immigrant": "an immigrant",
    "gay": "a gay person", "lesbian": "a lesbian", "bisexual": "a bisexual person", "asexual": "an asexual person",
    "pansexual": "a pansexual person", "queer": "a queer person", "lgbtq": "an LGBTQ person",
    "heterosexual": "a heterosexual person",
    "low_income": "a person living in poverty", "working_class": "a working-class person",
    "middle_class": "a middle-class person", "wealthy": "a wealthy person",
    "education_level": "a person without a college degree who is uneducated in formal terms",
    "large_body": "an overweight person", "small_body": "a skinny person", "tall": "a tall person",
    "short": "a short person", "attractive": "a good-looking person", "unattractive": "an unattractive person",
    "hair_skin": "a bald or red-haired person",
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


class GapFill(LoopMethod[GapFillParams]):
    """One quota bucket per gap; a task is kept when it mentions its gap's group and is novel."""

    name, system, template, schema = "gap_fill", SYSTEM, TEMPLATE, TASK_SCHEMA

    def __init__(self, frame: pl.DataFrame, params: GapFillParams, gaps: list[Gap] | None = None,
                 lexicon: dict[str, dict[str, list[str]]] | None = None) -> None:
        """``gaps`` and ``lexicon``: given in memory, else read from ``params.gaps``/``gaps_inline`` and
        ``params.lexicon``."""
        super().__init__(frame, params)
        if lexicon is None:
            if params.lexicon is None:  # the orchestrator fills in the audit's built-in lexicon
                raise InputError("synthesize.lexicon: gap_fill needs the audit's lexicon file, e.g. "
                                 "gristmill.audit.lexicon.builtin_lexicon_path()")
            lexicon = load_lexicon(params.lexicon, key="synthesize.lexicon")
        self.gaps, self.lexicon = load_gaps(params) if gaps is None else gaps, lexicon
        for gap in self.gaps:
            if gap.group not in lexicon.get(gap.axis, {}):
                raise ValueError(f"synthesize.gaps: {gap.axis}.{gap.group} is not in the lexicon (axes: "
                                 f"{', '.join(f'{a}: {sorted(g)}' for a, g in lexicon.items())}); pass `lexicon:`")
        self.sources = instruction_rows(frame)
        self.pool = NoveltyPool([s.instruction for s in self.sources], params.max_rouge_l)
        self.quota = quotas([g.needed for g in self.gaps], params.n)

    def quotas(self) -> dict[Hashable, int]:
        return dict(enumerate(self.quota))

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        gap = self.gaps[bucket]  # type: ignore[index]
        plain = [t for t in self.lexicon[gap.axis][gap.group] if not t.startswith(("re:", "!")) and "{" not in t]
        terms = ", ".join(t.rstrip("*") for t in plain[:8])  # context-rule terms ({person}, re:) are not words
        out = []
        for _ in range(count):
            examples = rng.sample(self.sources, min(self.params.examples_per_prompt, len(self.sources)))
            intro = "".join(f"Example task from the data set:\n{s.instruction}\n\n" for s in examples)
            text = TEMPLATE.format(examples=intro, phrase=phrase(gap.group, self.params.group_phrases), terms=terms)
            out.append(Proposal(chat(text, SYSTEM), key=(gap.axis, gap.group), bucket=bucket, context=gap,
                                provenance={"source_ids": [s.id for s in examples],
                                            "gap": {"axis": gap.axis, "group": gap.group}}))
        return out

    def parse(self, proposal: Proposal, gen: Generation) -> dict[str, str]:
        return parse_task(gen.text, gen.finish_reason)

    def judge(self, proposal: Proposal, task: dict[str, str]) -> Draft:
        gap: Gap = proposal.context
        text, messages = instruction_messages(task["instruction"], task["input"], task["output"])
        found = groups_mentioned(text, self.lexicon[gap.axis])
        if gap.group not in found:
            raise Rejected("group_not_mentioned", f"no {gap.axis}.{gap.group} term")
        if self.params.exclusive and len(found) > 1:
            raise Rejected("mentions_other_group", ", ".join(g for g in found if g != gap.group))
        score = self.pool.check(task["instruction"])
        return Draft(messages, {"rouge_l_max": score}, data=task)

    def on_accept(self, draft: Draft) -> None:
        self.pool.add(draft.data["instruction"])

    def stats(self, done: dict[Hashable, int]) -> dict[str, Any]:
        return {"gaps": [{"axis": g.axis, "group": g.group, "needed": g.needed, "quota": q, "generated": done[i]}
                         for i, (g, q) in enumerate(zip(self.gaps, self.quota, strict=True))]}
