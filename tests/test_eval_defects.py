"""Generation defect detectors (``gristmill.evaluation.generation_defects``): curation's instruction rules and
Gopher repetition rules applied to model answers, known answers per defect and the shares per side."""

from __future__ import annotations

from pathlib import Path

import pytest

from gristmill.evaluation import (
    DEFECT_METRICS,
    at_token_limit,
    defect_shares,
    generation_defects,
    last_user_turn,
)

CLEAN = ("Ahoy there! I have sailed these seas for twenty years, and no storm has ever frightened me as much as "
         "the calm before one.")
LOOP = "I am the captain of this ship. " * 4


@pytest.mark.parametrize(("answer", "prompt", "at_limit", "expected"), [
    (CLEAN, "Tell me about storms, captain.", False, []),
    # A longer answer whose n-grams occur once each: no repetition (Gopher's "top n-gram" rules would fire).
    ("As I stepped onto the deck, the salt wind filled my lungs and the crew fell silent. Tomorrow we sail for "
     "the southern isles, where the old maps promise gold, fresh water and a harbour no navy has ever found.",
     "You are a pirate captain. Describe the morning you set sail.", False, []),
    ("I cannot help with that.", "Bake bread.", False, ["refusal"]),
    ("As an AI language model, I cannot pretend to be a pirate.", "Pretend to be a pirate.", False, ["refusal"]),
    # The prompt asks for the AI persona: the persona phrase is the answer, not boilerplate (curation's rule).
    ("As an AI language model, I process text.", "Pretend you are an AI language model.", False, []),
    ("Mix the flour and the", "How do I bake bread?", False, ["truncated"]),
    # Cut by the eval's token budget, not by the model: counted apart.
    ("Mix the flour and the", "How do I bake bread?", True, ["at_token_limit"]),
    ("", "Hi", False, ["empty"]),
    ("  ...  ", "Hi", False, ["empty"]),
    (LOOP.strip(), "Who are you?", False, ["repetitive"]),
    ("How do I boil an egg quickly at home?", "How do I boil an egg quickly at home?", False, ["copies_prompt"]),
])
def test_each_defect_has_its_known_answer(answer: str, prompt: str, at_limit: bool, expected: list[str]) -> None:
    assert generation_defects([answer], [prompt], [at_limit]) == [expected]


def test_short_answers_are_not_judged_for_repetition() -> None:
    # Under 10 words n-gram shares are noise: "Yes, yes, yes." is an answer, not a degenerate loop.
    assert generation_defects(["Aye, aye, captain! Aye, aye!"], ["Ready?"], [False]) == [[]]


def test_shares_per_side_known_answer() -> None:
    found = generation_defects(["I cannot help with that.", CLEAN, "", LOOP.strip()],
                               ["Bake bread.", "Storms?", "Hi", "Who?"], [False, True, False, False])
    assert found == [["refusal"], ["at_token_limit"], ["empty"], ["repetitive"]]
    shares = defect_shares(found)
    assert list(shares) == list(DEFECT_METRICS)
    assert shares == {"refusal": 0.25, "truncated": 0.0, "empty": 0.25, "repetitive": 0.25, "copies_prompt": 0.0,
                      "defective": 0.75, "at_token_limit": 0.25}
    assert defect_shares([]) == dict.fromkeys(DEFECT_METRICS, 0.0)
    assert generation_defects([], [], []) == []


def test_at_token_limit_and_prompt_turn(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from tests.test_train_support import tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(tmp_path))
    answer = "the answer is 12 ."
    n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert at_token_limit(tokenizer, [answer, answer, answer], n) == [True] * 3  # used the whole budget
    assert at_token_limit(tokenizer, [answer], n + 1) == [True]  # within one token (re-encoding may merge one)
    assert at_token_limit(tokenizer, [answer, ""], n + 2) == [False, False]  # stopped by itself
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "second"},
                {"role": "assistant", "content": "b"}]
    assert last_user_turn(messages) == "second"
    assert last_user_turn([{"role": "assistant", "content": "b"}]) == ""
