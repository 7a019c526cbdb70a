"""Self-Instruct: new instruction/input/output tasks from seed tasks, with the paper's novelty filter.

Each round (the shared loop, loop.py) builds ``ceil(missing * oversample)`` prompts, each showing
``examples_per_prompt`` tasks sampled from the seeds and the tasks kept so far, sends them as one batch with a
JSON schema, parses and validates each answer, and accepts a task only if its instruction's ROUGE-L against every
instruction in the pool (seeds, real rows, accepted tasks) is below ``max_rouge_l``. Every candidate ends up
either appended (with provenance in ``meta.synth``: ``seed_ids``, ``rouge_l_max``) or dropped with a reason.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Literal

import polars as pl
from pydantic import Field

from gristmill.common.text import instruction_messages
from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import NewRowParams
from gristmill.synth.methods.common import NoveltyPool
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState
from gristmill.synth.parse import TASK_SCHEMA, parse_task
from gristmill.synth.seeds import SeedTask, load_seed_tasks

VERSION = "3"  # 2: post-filter; 3: the shared loop (batch ceil(missing * oversample), quota after novelty)

SYSTEM = "You write diverse, self-contained tasks for training a helpful assistant. Answer only with JSON."
TEMPLATE = (
    "Here are some example tasks.\n\n{examples}\n\n"
    "Write one new task that is different from all of the examples in topic and wording. Give the instruction, "
    "an optional input (empty string if none), and a correct, helpful output. Answer as JSON with the keys "
    '"instruction", "input" and "output".'
)


class SelfInstructParams(NewRowParams):
    method: Literal["self_instruct"] = "self_instruct"
    """Generate new tasks from seed tasks (Self-Instruct)."""
    seeds: str = Field(json_schema_extra={"path": True})
    """Seed tasks: jsonl with instruction + instances (Self-Instruct shape) or instruction/input/output."""
    examples_per_prompt: int = Field(3, ge=1, le=8)
    """Example tasks shown in each prompt."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """Novelty filter: reject a task whose instruction has ROUGE-L >= this with any pool instruction."""


def _format(task: SeedTask | dict[str, str], i: int) -> str:
    get = (lambda k: getattr(task, k)) if isinstance(task, SeedTask) else task.get
    lines = [f"Task {i}", f"Instruction: {get('instruction')}"]
    if get("input"):
        lines.append(f"Input: {get('input')}")
    lines.append(f"Output: {get('output')}")
    return "\n".join(lines)


def prompt_for(examples: list[SeedTask | dict[str, str]]) -> list[dict[str, str]]:
    """The chat prompt that shows ``examples`` (numbered from 1) and asks for one new task."""
    shown = "\n\n".join(_format(task, k + 1) for k, task in enumerate(examples))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEMPLATE.format(examples=shown)}]


class SelfInstruct(LoopMethod[SelfInstructParams]):
    """Prompts show tasks sampled from the seeds and the tasks kept so far; an answer is a task, kept when novel."""

    name, system, template, schema = "self_instruct", SYSTEM, TEMPLATE, TASK_SCHEMA

    def __init__(self, frame: pl.DataFrame, params: SelfInstructParams,
                 seed_tasks: list[SeedTask] | None = None) -> None:
        """``seed_tasks``: given in memory, else read from ``params.seeds``."""
        super().__init__(frame, params)
        self.seed_tasks = load_seed_tasks(params.seeds) if seed_tasks is None else seed_tasks
        msgs = frame["messages"].to_list() if "messages" in frame.columns else []
        real = [m[0]["content"] for m in msgs if m]
        self.pool = NoveltyPool([*(t.instruction for t in self.seed_tasks), *real], params.max_rouge_l)

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        examples: list[tuple[str, SeedTask | dict[str, str]]] = [
            *((t.id, t) for t in self.seed_tasks), *((k.id, k.draft.data) for k in state.kept)]
        out = []
        for _ in range(count):
            picks = [examples[p] for p in rng.sample(range(len(examples)),
                                                     min(self.params.examples_per_prompt, len(examples)))]
            out.append(Proposal(prompt_for([task for _, task in picks]),
                                provenance={"seed_ids": [task_id for task_id, _ in picks]}))
        return out

    def parse(self, proposal: Proposal, gen: Generation) -> dict[str, str]:
        return parse_task(gen.text, gen.finish_reason)

    def judge(self, proposal: Proposal, task: dict[str, str]) -> Draft:
        score = self.pool.check(task["instruction"])
        _, messages = instruction_messages(task["instruction"], task["input"], task["output"])
        return Draft(messages, {"rouge_l_max": score}, data=task)

    def on_accept(self, draft: Draft) -> None:
        self.pool.add(draft.data["instruction"])
