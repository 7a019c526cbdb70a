"""Score the adapters of finished ablations again on the recipe's eval sets with a larger generation budget.

    python bench/ablation_rescore.py --ablation noisy=RUN_A --ablation clean=RUN_B --max-new-tokens 192 --out DIR

``gristmill ablate`` scores the eval sets with the recipe's ``max_new_tokens`` (64 in recipes/ablation*.yaml, to
keep the run near 25 minutes on a 2-core CPU). With references of ~104 tokens at the median, most answers then end
at the budget, which hides the defects that show at an answer's end (truncation, where it stops). This re-scores
the raw and curated adapters of one or more finished ablation runs — and the base model once — with a budget long
enough for the references, without training again: the adapters are read from ``<run>/ablation/<variant>/``, the
eval sets from the first run's recipe (the runs must share them). Output: ``DIR/<set>.json`` and
``DIR/summary.json`` (``gristmill.evaluation.evaluate``), and one JSON line per metric table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gristmill.evaluation import evaluate  # noqa: E402
from gristmill.recipe import parse_recipe  # noqa: E402

VARIANTS = ("raw", "curated")


def _recipe(run: Path):  # noqa: ANN202 - Recipe
    manifest = json.loads((run / "manifest.json").read_text())
    return parse_recipe(yaml.safe_dump(manifest["recipe"]), Path(manifest["recipe_path"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ablation", action="append", required=True, metavar="NAME=RUN",
                    help="a finished `gristmill ablate` output directory, named (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    runs: dict[str, Path] = {}
    for item in args.ablation:
        name, sep, run = item.partition("=")
        if not sep or not name:
            ap.error(f"--ablation {item!r}: expected NAME=RUN_DIR")
        runs[name] = Path(run)
    adapters: dict[str, Path] = {}
    for name, run in runs.items():
        for variant in VARIANTS:
            adapter = run / "ablation" / variant
            if not (adapter / "adapter_config.json").is_file():
                sys.exit(f"{adapter}: no trained adapter (is {run} a finished `gristmill ablate` output?)")
            adapters[f"{name}_{variant}"] = adapter
    recipes = {name: _recipe(run) for name, run in runs.items()}
    first = next(iter(recipes.values()))
    sets = {name: [(s.name, s.path, s.mapping) for s in r.eval] for name, r in recipes.items()}
    if len({json.dumps(v) for v in sets.values()}) != 1:
        sys.exit(f"the runs' recipes score different eval sets ({sets}); rescore them separately")
    first.eval = [s.model_copy(update={"max_new_tokens": args.max_new_tokens}) for s in first.eval]

    started = time.perf_counter()
    summary = evaluate(first, adapters, args.out)
    seconds = round(time.perf_counter() - started, 1)
    for row in summary["table"]:
        print(f"{row['set']:<20} {row['metric']:<16} " + "  ".join(
            f"{c}={row[c]:.4g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in summary["columns"][2:]))
    print(json.dumps({"bench": "ablation_rescore", "max_new_tokens": args.max_new_tokens, "seconds": seconds,
                      "runs": {n: str(r) for n, r in runs.items()}, "table": summary["table"]}))


if __name__ == "__main__":
    main()
