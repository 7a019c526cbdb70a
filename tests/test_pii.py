"""scrub_pii: known answers (Luhn, IBAN mod-97, the worked example), near-misses that must stay, the step's
accounting and messages, custom patterns, and precision/recall on the labelled set (tests/data/pii_labelled.jsonl).

``python -m tests.test_pii`` prints the per-type table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from gristmill.common.contract import MESSAGES_DTYPE
from gristmill.curation.pii import PiiParams, card_ok, find, iban_ok, luhn_ok, scrub, scrub_pii

LABELLED = Path(__file__).parent / "data" / "pii_labelled.jsonl"


def test_luhn_and_iban_known_answers() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")  # the textbook example
    assert card_ok("4111 1111 1111 1111") and card_ok("3782-822463-10005") and not card_ok("1234567812345670")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82 WEST 1234 5698 7654 33") and not iban_ok("XX82WEST12345698765432")


def test_the_worked_example() -> None:
    text, counts, _ = scrub("Mail jo@example.org or call +44 20 7946 0958; card 4111 1111 1111 1111 "
                            "(v1.2.3.4 on 2024-01-15)")
    assert text == "Mail [EMAIL] or call [PHONE]; card [CREDIT_CARD] (v1.2.3.4 on 2024-01-15)"
    assert counts == Counter({"email": 1, "phone": 1, "credit_card": 1})


@pytest.mark.parametrize("text", [
    "Upgrade to version 2.4.1 or version 10.0.0.1", "v1.2.3.4", "on 2024-01-15 at 12:30:45", "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2", "4111 1111 1111 1112", "GB82 WEST 1234 5698 7654 33", "999.1.1.1", "1.2.3.4.5",
    "localhost:8080", "user@localhost", "ratio 1:2:3", "$1,234.56", "SN-4471-2231-9982", "Call 911",
])
def test_near_misses_are_left_alone(text: str) -> None:
    assert find(text) == []


def test_ip_addresses() -> None:
    assert find("from 192.168.1.20 and fe80::1ff:fe23:4567:890a") == [
        ("ipv6", "fe80::1ff:fe23:4567:890a"), ("ipv4", "192.168.1.20")]


def _frame() -> pl.DataFrame:
    messages = [[{"role": "user", "content": "Email me at ana@example.com"},
                 {"role": "assistant", "content": "Sure, or call +1 415 555 0132."}],
                [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]]
    return pl.DataFrame({"id": ["a", "b"],
                         "text": ["Email me at ana@example.com\n\nSure, or call +1 415 555 0132.", "What is 2+2?\n\n4"],
                         "messages": pl.Series(messages, dtype=MESSAGES_DTYPE)})


def test_step_replaces_in_text_and_messages_and_counts() -> None:
    frame = _frame()
    result = scrub_pii(frame, PiiParams())
    result.check("scrub_pii", frame)
    kept = result.kept
    assert kept["text"][0] == "Email me at [EMAIL]\n\nSure, or call [PHONE]."
    assert [m["content"] for m in kept["messages"][0]] == ["Email me at [EMAIL]", "Sure, or call [PHONE]."]
    assert kept["meta"].struct.field("pii").to_list() == [2, 0]
    assert result.stats["pii_items"]["email"] == 1 and result.stats["pii_items"]["phone"] == 1
    assert result.stats["pii_rows"] == 1 and "ana@" not in json.dumps(result.stats)


def test_step_drop_action_and_custom_patterns() -> None:
    frame = _frame().with_columns(pl.Series("text", ["no pii here", "ticket EMP-123456 opened"]))
    result = scrub_pii(frame, PiiParams(types=["email"], custom={"employee_id": r"EMP-\d{6}"}, action="drop"))
    result.check("scrub_pii", frame)
    assert result.kept["id"].to_list() == ["a"] and result.dropped["reason"].to_list() == ["pii"]
    assert result.dropped["detail"].to_list() == ["employee_id 1"]
    with pytest.raises(ValueError, match="not a valid regex"):
        PiiParams(custom={"bad": "("})


def measure() -> dict[str, dict[str, float]]:
    """Per type: true positives, false positives, false negatives, precision, recall (exact type + value)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for line in LABELLED.read_text().splitlines():
        row = json.loads(line)
        truth = Counter((p["type"], p["value"]) for p in row["pii"])
        got = Counter(find(row["text"]))
        for item, n in (truth & got).items():
            tp[item[0]] += n
        for item, n in (got - truth).items():
            fp[item[0]] += n
        for item, n in (truth - got).items():
            fn[item[0]] += n
    out = {}
    for t in sorted(set(tp) | set(fp) | set(fn)) + ["all"]:
        a, b, c = (sum(x.values()) for x in (tp, fp, fn)) if t == "all" else (tp[t], fp[t], fn[t])
        out[t] = {"tp": a, "fp": b, "fn": c, "precision": round(a / (a + b), 3) if a + b else 1.0,
                  "recall": round(a / (a + c), 3) if a + c else 1.0}
    return out


def test_precision_and_recall_on_the_labelled_set() -> None:
    scores = measure()
    assert scores["all"]["tp"] + scores["all"]["fn"] == 203  # every labelled item counted
    assert scores["all"]["precision"] >= 0.98 and scores["all"]["recall"] >= 0.95, scores
    for t in ("email", "ipv4", "ipv6", "credit_card", "iban"):
        assert scores[t]["recall"] >= 0.95 and scores[t]["precision"] >= 0.95, (t, scores[t])


if __name__ == "__main__":
    for name, s in measure().items():
        print(f"{name:<12} tp {s['tp']:>4}  fp {s['fp']:>3}  fn {s['fn']:>3}  precision {s['precision']:.3f}  "
              f"recall {s['recall']:.3f}")


def test_scrub_pii_in_a_recipe(tmp_path: Path) -> None:
    import yaml

    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Who do I email about order {i}?", "input": "",
                                        "output": f"Write to orders{i}@example.com or call +1 415 555 01{i:02d}."})
                            + "\n" for i in range(5)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pii", "inputs": [{"path": str(data)}], "steps": [{"scrub_pii": {}}],
                                      "output": {"dir": str(tmp_path / "run"), "formats": ["jsonl"]}}))
    result = Runner(load_recipe(recipe)).run()
    out = (tmp_path / "run" / "dataset" / "data.jsonl").read_text()
    assert "@example.com" not in out and "415 555" not in out and out.count("[EMAIL]") == 5
    step = result.manifest["steps"][1]
    assert step["pii_items"]["email"] == 5 and step["pii_items"]["phone"] == 5 and step["pii_rows"] == 5
