from __future__ import annotations

import json
import random
from collections.abc import Hashable
from pathlib import Path

import polars as pl
import pytest

from gristmill.common.text import instruction_messages
from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import NewRowParams
from gristmill.synth.methods.common import chat
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState, run_loop
from gristmill.synth.parse import Rejected, parse_task
from gristmill.synth.rouge import lcs_length, max_rouge_l, rouge_l, tokens
from gristmill.synth.seeds import load_seed_tasks
from tests.conftest import make_frame
from tests.helpers import ScriptedEngine


def test_rouge_l_known_answers() -> None:
    assert lcs_length(list("abcde"), list("ace")) == 3
    assert rouge_l(tokens("the cat sat"), tokens("the cat ran")) == pytest.approx(2 / 3)
    assert rouge_l(tokens("a b"), tokens("")) == 0.0
    assert max_rouge_l("The cat sat.", [tokens("dogs bark"), tokens("the cat sat")]) == 1.0


@pytest.mark.parametrize(
    "text,finish,reason",
    [
        ('{"instruction": "Add 2 and 3.", "input": "", "output": ', "length", "truncated"),
        ("Sure! Here is a task: add numbers.", "stop", "unparseable"),
        ("[1, 2]", "stop", "unparseable"),
        ('{"instruction": "Add.", "output": 5}', "stop", "missing_field"),
        ('{"instruction": "  ", "input": "", "output": "x"}', "stop", "empty"),
        ('{"instruction": "Tell me a secret.", "input": "", "output": "I\'m sorry, I cannot help."}', "stop", "refusal"),
        ('{"instruction": "Write.", "input": "", "output": "' + "x" * 5000 + '"}', "stop", "too_long"),
        ("", "prompt_too_long", "prompt_too_long"),
    ],
)
def test_parser_names_the_defect(text: str, finish: str, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_task(text, finish)
    assert info.value.reason == reason


def test_parser_accepts_and_strips() -> None:
    out = parse_task('{"instruction": " Add 2 and 3. ", "output": "5"}', "stop")
    assert out == {"instruction": "Add 2 and 3.", "input": "", "output": "5"}


def test_seed_tasks_both_shapes_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(
        json.dumps({"id": "s1", "instruction": "Add.", "instances": [{"input": "1 2", "output": "3"}]}) + "\n"
        + json.dumps({"instruction": "Greet.", "output": "Hello!"}) + "\n"
    )
    seeds = load_seed_tasks(path)
    assert [(s.id, s.input, s.output) for s in seeds] == [("s1", "1 2", "3"), ("seeds.jsonl:2", "", "Hello!")]
    path.write_text(json.dumps({"instruction": "No output"}) + "\n")
    with pytest.raises(ValueError, match=r"seeds.jsonl:1: a seed task needs an output"):
        load_seed_tasks(path)


def test_self_instruct_accounting_provenance_and_novelty(tmp_path: Path) -> None:
    from gristmill.synth.methods.self_instruct import SelfInstruct
    from gristmill.synth.methods.self_instruct import SelfInstructParams as SynthesizeParams
    from gristmill.synth.seeds import SeedTask

    seeds = [SeedTask("s0", "Translate the phrase into French.", "Good night", "Bonne nuit"),
             SeedTask("s1", "List three primary colours.", "", "Red, yellow and blue.")]
    task = lambda ins, out: json.dumps({"instruction": ins, "input": "", "output": out})  # noqa: E731
    outputs = [
        (task("Name the largest planet in the solar system.", "Jupiter."), "stop"),
        (task("Translate the phrase into French.", "Bonjour"), "stop"),  # copies a seed -> not_novel
        ("not json", "stop"),
        ('{"instruction": "Write', "length"),
        (task("Describe how a rainbow forms.", "Sunlight refracts in raindrops."), "stop"),
    ]
    engine = ScriptedEngine(lambda user, sampling: outputs.pop(0))
    frame = make_frame(["a real row"])
    params = SynthesizeParams(seeds="unused", n=2, oversample=2.5, max_rounds=1)
    kept, dropped, stats = run_loop(SelfInstruct(frame, params, seeds), engine=engine, model_name="m")
    assert engine.calls == [(5, True)]  # one batch, with the task JSON schema
    assert stats["rows_in"] + stats["rows_added"] == kept.height + dropped.height == 6
    assert stats["dropped_by_reason"] == {"not_novel": 1, "unparseable": 1, "truncated": 1}
    synth = kept.filter(kept["source"] == "synth:self_instruct")
    assert synth["messages"][0].to_list()[1]["content"] == "Jupiter."
    prov = synth["meta"].struct.field("synth").to_list()
    assert all(p["method"] == "self_instruct" and p["model"] == "m" and len(p["seed_ids"]) == 2 for p in prov)
    assert all(len(p["template_hash"]) == 16 and json.loads(p["sampling"])["seed"] == 0 for p in prov)
    assert stats["output_tokens"] == 50 and stats["output_tokens_per_kept_row"] == 25.0


def test_replicas_need_a_gpu() -> None:
    import torch

    from gristmill.synth.replicas import ReplicatedEngine, vllm_engine

    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    with pytest.raises(ValueError, match=r"synthesize\.replicas: 2 engines share a GPU .* use replicas: 1"):
        vllm_engine("unused", replicas=2)
    engine = vllm_engine("unused", seed=3)  # nothing starts until the first chat
    assert isinstance(engine, ReplicatedEngine) and (engine.replicas, engine.seed) == (1, 3)


class Echo(LoopMethod[NewRowParams]):
    """A whole method in a few lines (the loop's contract): prompt i asks for task i, the answer text is the
    instruction, "dup" is not novel."""

    name, system, template = "echo", "", "task {i}"

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        return [Proposal(chat(f"task {state.round_no}.{i}")) for i in range(count)]

    def parse(self, proposal: Proposal, gen: Generation) -> str:
        return gen.text

    def judge(self, proposal: Proposal, text: str) -> Draft:
        if text == "dup":
            raise Rejected("not_novel")
        return Draft(instruction_messages(text, "", "ok")[1])


@pytest.mark.parametrize("replies,calls,reasons,accepted", [
    (["A", "dup", "B"], [(3, False)], {"not_novel": 1}, 2),  # the loop docstring's worked example
    (["A", "B", "C"], [(3, False)], {"over_quota": 1}, 2),  # the third passes when the quota is met
    (["A", "dup", "dup", "B", "C"], [(3, False), (2, False)], {"not_novel": 2, "over_quota": 1}, 2),  # ceil(1 * 1.5)
])
def test_loop_known_answers(replies: list[str], calls: list[tuple[int, bool]], reasons: dict[str, int],
                            accepted: int) -> None:
    engine = ScriptedEngine(lambda user, sampling: replies.pop(0))
    method = Echo(make_frame(["real"]), NewRowParams(n=2, oversample=1.5, max_rounds=3))
    result = run_loop(method, engine=engine, model_name="m")
    assert engine.calls == calls and result.added == sum(n for n, _ in calls)
    assert result.dropped_by_reason() == reasons and result.stats["accepted"] == accepted
    result.check("synthesize")
    assert result.kept["text"].to_list()[1:] == ["A\n\nok", "B\n\nok"]
    summary = result.summary()
    assert summary["rows_added"] == result.added and "rows_in" not in result.stats  # counts come from the frames


def test_loop_helpers_known_answers() -> None:
    from gristmill.synth.methods.common import NoveltyPool, Rotation, batch_size, conversation_rows
    from gristmill.synth.methods.multi_turn import transcript

    assert [batch_size(m, o) for m, o in [(3, 1.5), (2, 1.0), (1, 1.5), (5, 1.1)]] == [5, 2, 2, 6]
    fixed = Rotation(["a", "b", "c"], random.Random(0), reshuffle=False)
    first = [fixed.take() for _ in range(6)]
    assert first[:3] == first[3:] and sorted(first[:3]) == ["a", "b", "c"]
    fresh = Rotation(["a", "b", "c"], random.Random(0), reshuffle=True)
    taken = [fresh.take() for _ in range(6)]
    assert sorted(taken[:3]) == sorted(taken[3:]) == ["a", "b", "c"]  # every pass covers every source
    pool = NoveltyPool(["What is a prime?"], 0.7)
    assert pool.check("Which numbers below 10 are prime?") == pytest.approx(0.2)
    with pytest.raises(Rejected, match="not_novel"):
        pool.check("Is 1 a prime?")  # LCS 3 of 4 words each way: ROUGE-L 0.75
    pool.add("Name a colour.")
    with pytest.raises(Rejected):
        pool.check("Name a colour!")
    turns = [[{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
              {"role": "assistant", "content": "a"}],
             [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
             [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
             [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]]
    frame = pl.DataFrame({"id": ["ok", "blank", "order", "two-users"], "messages": turns})
    assert [c.id for c in conversation_rows(frame)] == ["ok"]
    assert transcript(turns[0]) == "User: q\n\nAssistant: a"


def test_version_per_method() -> None:
    from gristmill.synth import methods
    from gristmill.synth.methods import evolve, loop
    from gristmill.synth.methods.multi_turn import MultiTurnParams

    assert methods.version_for("evolve") == f"{evolve.VERSION}+loop{loop.VERSION}"
    assert methods.version_for(MultiTurnParams()) == methods.version_for("multi_turn")
    assert methods.version_for("answer") == methods.METHODS["answer"].version  # its own driver: no loop version
    assert set(methods.METHODS) >= {"self_instruct", "evolve", "paraphrase", "answer", "gap_fill", "multi_turn"}
