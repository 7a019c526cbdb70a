from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.synth.parse import Rejected, parse_task
from gristmill.synth.rouge import lcs_length, max_rouge_l, rouge_l, tokens
from gristmill.synth.seeds import load_seed_tasks
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
    from gristmill.synth.methods.loop import run_loop
    from gristmill.synth.methods.self_instruct import SelfInstruct
    from gristmill.synth.methods.self_instruct import SelfInstructParams as SynthesizeParams
    from gristmill.synth.seeds import SeedTask
    from tests.conftest import make_frame

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
