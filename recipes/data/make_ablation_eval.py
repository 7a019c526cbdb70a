"""Deterministic builder of ``ablation_eval.jsonl``, the eval set of ``recipes/ablation.yaml``: the 32 GPTeacher
role-play rows that follow the 700 of ``gpteacher_roleplay_slice.json`` (rows 700-731 of the full file, alpaca
form), so no row of the ablation's input is among them.

Run: ``python recipes/data/make_ablation_eval.py PATH/gpteacher_roleplay_alpaca.json`` (the full GPTeacher
role-play file, see README.md; writes next to this file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
FIRST, COUNT = 700, 32


def build(full: Path, out: Path = HERE / "ablation_eval.jsonl") -> list[dict]:
    rows = json.loads(full.read_text())[FIRST:FIRST + COUNT]
    picked = [{"id": f"gpt-eval-{FIRST + i}", "instruction": r["instruction"], "input": r.get("input", ""),
               "output": r["output"]} for i, r in enumerate(rows)]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))
    return picked


if __name__ == "__main__":
    built = build(Path(sys.argv[1]))
    print(f"{len(built)} rows → {HERE / 'ablation_eval.jsonl'}")
