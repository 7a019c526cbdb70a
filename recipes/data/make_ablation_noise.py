"""Deterministic builder of ``ablation_noisy.jsonl``, the input of ``recipes/ablation.yaml``: the GPTeacher
role-play slice (MIT, see README.md) as it is, plus planted noise of the kinds real instruction sets carry, each
row labelled in column ``defect`` (``clean`` for the real rows as they are):

- ``duplicate_flood``: 20 real rows copied 6 times each (re-spaced, so an exact-after-normalize duplicate);
- ``truncated``: 60 real rows whose answer is cut mid-sentence at 25-45 % of its words;
- ``refusal``: 40 real prompts answered with a refusal;
- ``off_topic``: 40 real prompts answered with another row's answer;
- ``eval_leak``: every item of the eval set ``ablation_eval.jsonl`` twice, once verbatim and once with a short
  lead-in before its answer (no exact copy: only the eval decontamination's 13-gram overlap catches it), 64 rows.
  Curation must drop them all (reason ``eval_contamination``); the raw variant of ``gristmill ablate`` trains on
  them, so its score on that eval set is inflated, as a model trained on leaked benchmark items is.

The rows "as they are" (no noise) are ``gpteacher_roleplay_slice.json`` itself, the input of
``recipes/ablation_clean.yaml``.

Run: ``python recipes/data/make_ablation_noise.py`` (seeded; writes next to this file).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I cannot fulfill this request.",
    "I apologize, but I am unable to comply with that request.",
    "Sorry, I can't assist with role-play requests like this one.",
    "As an AI language model, I cannot pretend to be someone else.",
]


def build(out: Path = HERE / "ablation_noisy.jsonl") -> list[dict]:
    rng = random.Random(12)
    rows = [dict(r, id=f"gpt-{i:03d}", defect="clean")
            for i, r in enumerate(json.loads((HERE / "gpteacher_roleplay_slice.json").read_text()))]
    noisy: list[dict] = []
    for k, src in enumerate(rng.sample(rows, 20)):
        for c in range(6):
            noisy.append(dict(src, id=f"flood-{k:02d}-{c}", instruction=src["instruction"] + " " * (c + 1),
                              defect="duplicate_flood"))
    victims = rng.sample(rows, 140)
    for k, src in enumerate(victims[:60]):
        words = src["output"].split()
        cut = max(3, int(len(words) * rng.uniform(0.25, 0.45)))
        noisy.append(dict(src, id=f"trunc-{k:02d}", output=" ".join(words[:cut]), defect="truncated"))
    for k, src in enumerate(victims[60:100]):
        noisy.append(dict(src, id=f"refuse-{k:02d}", output=REFUSALS[k % len(REFUSALS)], defect="refusal"))
    for k, src in enumerate(victims[100:140]):
        other = victims[(k + 7) % 40 + 100]
        noisy.append(dict(src, id=f"offtopic-{k:02d}", output=other["output"], defect="off_topic"))
    lead_ins = ["Certainly! ", "Of course. ", "Here is my answer: ", "Gladly! "]
    for k, item in enumerate(json.loads(line) for line in (HERE / "ablation_eval.jsonl").read_text().splitlines()):
        leak = {key: item[key] for key in ("instruction", "input", "output")}
        noisy.append(dict(leak, id=f"leak-{k:02d}-0", defect="eval_leak"))
        noisy.append(dict(leak, id=f"leak-{k:02d}-1", output=lead_ins[k % len(lead_ins)] + leak["output"],
                          defect="eval_leak"))
    everything = rows + noisy
    rng.shuffle(everything)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in everything))
    return everything


if __name__ == "__main__":
    built = build()
    print(f"{len(built)} rows → {HERE / 'ablation_noisy.jsonl'}")
