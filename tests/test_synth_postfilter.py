"""The synthesize step's post-filter: the screen's known answers, replacement rounds in the methods, and the
recipe wiring (nested path fields resolved relative to the recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from gristmill.postfilter import build_screen
from gristmill.synth.engine import SamplingConfig
from gristmill.synth.methods.base import PostFilter
from tests.conftest import make_frame
from tests.helpers import ScriptedEngine

REAL = ("Explain how photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen in green plants, "
        "naming the role of chlorophyll in the leaves, the light reactions in the thylakoid membranes and the Calvin "
        "cycle in the stroma, and say why the process matters for nearly all life on Earth.")
EVAL = "Which gas do plants absorb from the air during photosynthesis to build glucose molecules in their leaves"


def id_text(ids: list[str], texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "text": texts})


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": EVAL}) + "\n")
    return path


def test_screen_known_answers(eval_file: Path) -> None:
    screen = build_screen(PostFilter(eval_sets=[str(eval_file)]))
    assert screen is not None
    novel = "Write a short poem about autumn leaves drifting across a quiet pond at dusk while geese fly south."
    candidates = id_text(
        ["copy", "leak", "novel", "novel-again"],
        [REAL + " Be brief.", f"Answer this: {EVAL}? Carbon dioxide.", novel, novel],
    )
    reasons = screen(candidates, id_text(["r0"], [REAL]))
    assert reasons == {"copy": "near_duplicate_of_earlier", "leak": "contaminated", "novel-again": "near_duplicate"}
    assert build_screen(PostFilter(near_duplicates=False)) is None
    only_dedup = build_screen(PostFilter())
    assert only_dedup is not None and "leak" not in only_dedup(candidates, id_text(["r0"], [REAL]))


def test_missing_eval_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"post_filter\.eval_sets: .*nope\.csv does not exist"):
        build_screen(PostFilter(eval_sets=[str(tmp_path / "nope.csv")]))


def test_self_instruct_replaces_post_filtered_rows(eval_file: Path) -> None:
    from gristmill.synth.methods.loop import run_loop
    from gristmill.synth.methods.self_instruct import SelfInstruct, SelfInstructParams
    from gristmill.synth.seeds import SeedTask

    seeds = [SeedTask("s0", "List three primary colours.", "", "Red, yellow and blue.")]
    task = lambda ins, out: json.dumps({"instruction": ins, "input": "", "output": out})  # noqa: E731
    replies = [
        task(REAL.replace("Explain", "Describe"), "Sugar."),  # near-duplicates the real row
        task("Name a gas plants absorb.", f"{EVAL}: carbon dioxide."),  # leaks the eval item
        task("Name the largest planet in the solar system.", "Jupiter is the largest planet."),
        task("Give two tips for sleeping better at night.", "Keep a regular bedtime and avoid screens late."),
    ]
    engine = ScriptedEngine(lambda user, sampling: replies.pop(0))
    params = SelfInstructParams(seeds="unused", n=2, oversample=1.0, max_rounds=3)
    screen = build_screen(PostFilter(eval_sets=[str(eval_file)]))
    kept, dropped, stats = run_loop(SelfInstruct(make_frame([REAL]), params, seeds), engine=engine, model_name="m",
                                    screen=screen)
    assert engine.calls == [(2, True), (2, True)]  # round 2 asks again for the two rows round 1 lost
    assert stats["dropped_by_reason"] == {"post_filter.near_duplicate_of_earlier": 1, "post_filter.contaminated": 1}
    assert stats["post_filtered"] == 2 and stats["accepted"] == 2
    assert stats["rows_in"] + stats["rows_added"] == kept.height + dropped.height == 5
    synth = kept.filter(pl.col("source") == "synth:self_instruct")
    assert [m[0]["content"] for m in synth["messages"].to_list()] == [
        "Name the largest planet in the solar system.", "Give two tips for sleeping better at night."]
    assert dropped["meta"].struct.field("synth").struct.field("method").to_list() == ["self_instruct"] * 2


def test_paraphrase_counts_only_rows_that_pass_the_screen() -> None:
    from gristmill.synth.methods import run_method
    from gristmill.synth.methods.paraphrase import ParaphraseParams

    rows = make_frame(["What is the boiling point of water at sea level?\n\n100 degrees Celsius."],
                      messages=[[{"role": "user", "content": "What is the boiling point of water at sea level?"},
                                 {"role": "assistant", "content": "100 degrees Celsius."}]])
    same = {"instruction": "At sea level, what is the boiling point of water, in degrees?",
            "output": "Water boils at 100 degrees Celsius at sea level."}
    replies = [json.dumps(same), json.dumps(same),
               json.dumps({"instruction": "At what temperature does water boil when you are at sea level?",
                           "output": "It boils at one hundred degrees Celsius."})]
    engine = ScriptedEngine(lambda user, sampling: replies.pop(0))
    params = ParaphraseParams(n=2, oversample=1.0, max_rounds=3, max_rouge_l=0.95)
    kept, dropped, stats = run_method(rows, params, engine=engine, model_name="m", screen=build_screen(PostFilter()))
    assert stats["dropped_by_reason"] == {"post_filter.near_duplicate": 1}  # the 2nd copy in round 1
    assert stats["accepted"] == 2 and engine.calls == [(2, True), (1, True)]
    assert kept.height == 3 and stats["rows_in"] + stats["rows_added"] == kept.height + dropped.height


def test_recipe_resolves_nested_post_filter_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gristmill import steps as steps_mod
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(json.dumps({"instruction": "Say hi politely.", "output": "Hi!"}))
    (tmp_path / "data" / "seeds.jsonl").write_text(json.dumps({"instruction": "Add 2 and 3.", "output": "5"}))
    (tmp_path / "data" / "eval.jsonl").write_text(json.dumps({"question": EVAL}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\ninputs: [{path: data/rows.jsonl, mapping: alpaca}]\n"
        "steps:\n  - synthesize: {method: self_instruct, seeds: data/seeds.jsonl, n: 1, oversample: 1, max_rounds: 2,\n"
        "                 post_filter: {eval_sets: [data/eval.jsonl]}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    replies = [json.dumps({"instruction": "Quiz", "input": "", "output": EVAL}),
               json.dumps({"instruction": "Name a primary colour.", "input": "", "output": "Red."})]
    engine = ScriptedEngine(lambda user, sampling: replies.pop(0))
    monkeypatch.setattr(steps_mod, "_synth_engine", lambda params, ctx: engine)
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path / "cache"))
    Runner(load_recipe(recipe)).run()
    stats = json.loads((tmp_path / "run" / "steps" / "01-synthesize" / "stats.json").read_text())
    assert stats["dropped_by_reason"] == {"post_filter.contaminated": 1} and stats["accepted"] == 1

    recipe.write_text(recipe.read_text().replace("data/eval.jsonl", "data/missing.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"steps\.synthesize\.post_filter\.eval_sets: .*missing\.jsonl"):
        Runner(load_recipe(recipe)).run()


def test_quality_gate_drops_rows_far_from_the_reference(tmp_path: Path) -> None:
    """A bag-of-words embedder stands in for MiniLM (the slow test below uses the real one): the gate's job is
    the arithmetic and the wiring, scored against the reference file read through the alpaca mapping."""
    import numpy as np

    from gristmill.synth.methods.base import QualityGate

    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"instruction": "bake bread", "output": "knead dough oven"}) + "\n")
    vocab = ["bake", "bread", "knead", "dough", "oven", "tax", "filing"]

    def embed(texts: list[str]) -> np.ndarray:
        vecs = np.array([[t.lower().split().count(w) for w in vocab] for t in texts], dtype=np.float32) + 1e-6
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    seen: list[QualityGate] = []
    gate = QualityGate(reference=str(gold), min_score=0.5, k=1, model="bow")
    screen = build_screen(PostFilter(near_duplicates=False, quality=gate), lambda g: seen.append(g) or embed)
    assert screen is not None and [g.model for g in seen] == ["bow"]
    reasons = screen(id_text(["a", "b"], ["bake bread in the oven", "tax filing deadline"]), id_text([], []))
    assert reasons == {"b": "low_quality"}
    with pytest.raises(TypeError, match="post_filter.quality needs an embedding model"):  # a wiring bug, not input
        build_screen(PostFilter(quality=gate))


@pytest.mark.slow
def test_quality_gate_with_real_minilm(tmp_path: Path) -> None:
    from gristmill.curation.embed import Embedder
    from gristmill.models import resolve
    from gristmill.synth.methods.base import QualityGate

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in [
        ("How do I bake sourdough bread at home?", "Feed the starter, mix, proof overnight, bake hot."),
        ("Give tips for roasting vegetables.", "Cut evenly, oil lightly, roast at 220 C until browned.")]))
    embedder = Embedder(resolve("minilm-l6"), cache_path=tmp_path / "emb.sqlite")
    gate = QualityGate(reference=str(gold), min_score=0.3, k=1)
    screen = build_screen(PostFilter(near_duplicates=False, quality=gate), lambda m: embedder.encode)
    assert screen is not None
    candidates = id_text(["bread", "noise"], ["A simple recipe for baking a loaf of crusty bread in a home oven.",
                                             "qzv 88 ##### lorem xx yy"])
    assert screen(candidates, id_text([], [])) == {"noise": "low_quality"}


def test_multi_turn_screens_only_the_new_turns() -> None:
    """A continued conversation repeats its source by design (here the whole text of the extension would be a
    near-duplicate of its source: Jaccard >= 0.8): the screen compares only the two new turns, so the extension is
    kept, while a second identical extension is a near-duplicate and is replaced in round 2."""
    from gristmill.synth.methods import run_method
    from gristmill.synth.methods.multi_turn import MultiTurnParams

    answer = REAL + (" Plants also store the sugar they make as starch in roots, seeds and tubers, release oxygen "
                     "through small pores called stomata on the underside of the leaves, and slow down when water "
                     "is scarce, light is weak or the air is too cold for the enzymes of the cycle to work well.")
    source = [{"role": "user", "content": "How do plants make food?"}, {"role": "assistant", "content": answer}]
    frame = make_frame([f"How do plants make food?\n\n{answer}"], messages=[source])
    first, second = ("Which wavelengths of light does chlorophyll absorb best?",
                     "How do cacti keep photosynthesis going while saving water?")
    answers = {first: "Red and blue light, mostly; green is reflected.",
               second: "They open their pores at night and store carbon dioxide for the day."}
    questions = [first, first, second]

    def reply(user: str, sampling: SamplingConfig) -> str:
        if sampling.json_schema is not None:
            return json.dumps({"question": questions.pop(0)})
        return answers[user.splitlines()[-1]]

    engine = ScriptedEngine(reply)
    params = MultiTurnParams(n=2, oversample=1.0, max_rounds=2)
    kept, dropped, stats = run_method(frame, params, engine=engine, model_name="m", screen=build_screen(PostFilter()))
    assert engine.calls == [(2, True), (2, False), (1, True), (1, False)]
    assert stats["dropped_by_reason"] == {"post_filter.near_duplicate": 1} and stats["accepted"] == 2
    new = kept.filter(pl.col("source") == "synth:multi_turn")["messages"].to_list()
    assert [m[2]["content"] for m in new] == [first, second] and all(m[:2] == source for m in new)
