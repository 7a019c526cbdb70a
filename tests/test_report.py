"""report.html: each section on crafted inputs, and a real run's page rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill import report_outcomes, report_sections
from gristmill.cli import main
from gristmill.recipe import load_recipe
from gristmill.report import Charts, RunData, build_report
from gristmill.runner import Runner
from tests.conftest import build_sample
from tests.test_runner import STEPS  # the same five-step run the runner tests use

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart-like run without synthesis or training (fast): the sample data through five steps."""
    tmp = tmp_path_factory.mktemp("quick")
    build_sample(tmp / "data")
    recipe = {"name": "quick", "inputs": [{"path": "data/sample.jsonl", "mapping": "alpaca", "on_error": "skip"}],
              "steps": STEPS, "output": {"dir": str(tmp / "run"), "formats": ["parquet", "jsonl"]}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    Runner(load_recipe(tmp / "recipe.yaml")).run()
    return tmp / "run"


def _run(tmp_path: Path, steps: list[dict], **manifest: object) -> RunData:
    """A crafted run directory: a manifest with ``steps`` (ingest first) and nothing else yet."""
    data = {"name": "crafted", "status": "ok", "versions": {"gristmill": "0"}, "steps": steps, **manifest}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return RunData.load(tmp_path)


def _checkpoint(run: RunData, index: int, kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    folder = run.folder(index)
    folder.mkdir(parents=True)
    kept.write_parquet(folder / "kept.parquet")
    dropped.write_parquet(folder / "dropped.parquet")


def test_funnel_stacks_kept_and_each_reason_per_step(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest", "rows_in": 10, "kept": 9, "dropped": 1,
                           "dropped_by_reason": {"malformed_input": 1}},
                          {"step": "filter", "rows_in": 9, "kept": 6, "dropped": 3,
                           "dropped_by_reason": {"too_few_words": 2, "too_many_symbols": 1}}])
    out = report_sections.funnel(run, Charts())
    assert out.count("plotly-graph-div") == 1 and "plotly.js" in out  # plotly.js inlined with the first chart
    assert '"name":"dropped: too_few_words"' in out and '"y":[0,2]' in out
    assert "<td>too_few_words: 2, too_many_symbols: 1</td>" in out


def test_drop_examples_are_collapsed_per_reason_and_escaped(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "filter"}])
    pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "step": ["filter"] * 4 + ["ingest"],
                  "reason": ["short"] * 4 + ["malformed_input"],
                  "text": ["<script>alert(1)</script>", "x", "y", "z", "{broken"], "detail": [None] * 5}
                 ).write_parquet(tmp_path / "rejects.parquet")
    out = report_sections.drop_examples(run, Charts())
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert out.index("malformed_input") < out.index("short")  # in step order
    assert "<b>filter</b> · short · 4 rows" in out and out.count("<tr><td>") == 3 + 1  # 3 examples + 1


def test_quality_histogram_draws_the_threshold(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "quality", "params": {"keep": {"min_score": 0.3}}}])
    meta = pl.struct(pl.col("s").alias("quality_score"))
    _checkpoint(run, 1, pl.DataFrame({"id": ["a", "b"], "s": [0.5, 0.9]}).select("id", meta.alias("meta")),
                pl.DataFrame({"id": ["c"], "s": [0.1]}).select("id", meta.alias("meta")))
    out = report_sections.quality(run, Charts())
    assert "threshold 0.3 (min_score 0.3)" in out and "kept (2)" in out and "dropped (1)" in out
    assert "No quality step" in report_sections.quality(_run(tmp_path, [{"step": "ingest"}]), Charts())


def test_word_diff_marks_only_the_differing_words() -> None:
    left, right = report_sections.word_diff("the cat sat <here>", "the dog sat <here>")
    assert left == "the <mark>cat</mark> sat &lt;here&gt;" and right == "the <mark>dog</mark> sat &lt;here&gt;"


def test_clusters_show_sizes_and_a_kept_row_beside_its_duplicate(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "dedup_minhash", "dropped": 3}])
    rows = pl.DataFrame({"id": ["k1", "d1", "d2", "k2", "d3", "k3"],
                         "text": ["a b c", "a b d", "a x c", "p q", "p r", "lonely"],
                         "cluster": ["k1", "k1", "k1", "k2", "k2", None]})
    frame = rows.select("id", "text", pl.struct(pl.col("cluster").alias("cluster_id")).alias("meta"))
    _checkpoint(run, 1, frame.filter(pl.col("id").str.starts_with("k")), frame.filter(pl.col("id").str.starts_with("d")))
    out = report_sections.clusters(run, Charts())
    assert "2 clusters, 5 rows in them" in out
    assert out.index("cluster <code>k1</code> (3 rows)") < out.index("cluster <code>k2</code> (2 rows)")
    assert "a b <mark>c</mark>" in out and "a b <mark>d</mark>" in out


def test_synthesis_yield_from_the_steps_stats(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "synthesize", "rows_added": 44, "dropped": 21,
                                              "requested": 44, "generated": 44, "parsed": 39, "post_filtered": 2,
                                              "dropped_by_reason": {"not_novel": 16, "truncated": 5},
                                              "seconds_per_kept_row": 0.5, "params": {"method": "self_instruct"}}])
    out = report_sections.synthesis(run, Charts())
    assert '"x":[44,44,39,37,23]' in out  # requested, generated, parsed, past the post-filter, kept
    assert "<td>seconds_per_kept_row</td>" in out and "self_instruct" in out


def test_audit_charts_and_a_failed_gate(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}], audit_override=[{"step": "03-audit", "failures": []}])
    cell = {"rows": 10, "dropped": 3, "drop_rate": 0.3, "ci95": [0.1, 0.6], "ratio_to_overall": 3.0}
    report = {"rows": 50, "axes": {"gender": {"group_rows": {"female": 20, "male": 2}, "representation_ratio": 10}},
              "gaps": [{"axis": "gender", "group": "male", "rows": 2, "target_rows": 10}],
              "amplification": {"steps": [{"step": "filter", "drop_rate": 0.1, "axes": {"gender": {"female": cell}}}],
                                "flagged": [{"step": "filter", "axis": "gender", "group": "female", "drop_rate": 0.3,
                                             "overall": 0.1, "ratio": 3.0, "ci95": [0.1, 0.6], "rows": 10}]},
              "gate": {"passed": False, "failures": ["representation_ratio | gender | male/female | 10 | 5"],
                       "table": [{"metric": "representation_ratio", "axis": "gender", "groups": "male/female",
                                  "value": "10", "threshold": "5"}]}}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "03-audit.json").write_text(json.dumps(report))
    out = report_outcomes.audit(run, Charts())
    assert out.count("plotly-graph-div") == 2  # representation, disparity heatmap
    assert "FAILED</span> (overridden with --allow-audit-failure)" in out
    assert "<td>representation_ratio</td><td>gender</td><td>male/female</td>" in out
    assert "gender.male (2 of 10 target rows)" in out


def test_training_charts_what_exists_and_says_not_run_otherwise(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}], train={"fingerprint": "f1"})
    assert "Training not run" in report_outcomes.training(run, Charts())
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "train_metrics.json").write_text(json.dumps(
        {"fingerprint": "f1", "loss_curve": [2.0, 1.5, 1.2], "eval_loss_before": 2.1, "eval_loss_after": 1.4,
         "steps": 3, "search": {"trials": [{"trial": 0, "params": {"r": 8}, "eval_loss": 1.4}]}}))
    (tmp_path / "adapter" / "eval.json").write_text(json.dumps(
        {"base": {"loss": 2.1, "rougeL": 0.1}, "adapter": {"loss": 1.4, "rougeL": 0.3}}))
    out = report_outcomes.training(run, Charts())
    assert out.count("plotly-graph-div") == 1 and '"y":[2.0,1.5,1.2]' in out
    assert "<td>rougeL</td><td class=num>0.1</td><td class=num>0.3</td>" in out
    assert "Hyperparameter search" in out and "not the one this run" not in out


def test_missing_inputs_never_break_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0}], status="gate_failed",
               gate_failures=["min_group_rows | gender | male | 0 | 1"])
    page = build_report(run)
    for text in ("No rejects.parquet", "No quality step", "No dedup_minhash step", "No synthesize step",
                 "No audit report", "Training not run", "stopped this run"):
        assert text in page
    assert page.count("plotly.js v") == 1 and "could not be drawn" not in page

    def broken(run: RunData, charts: Charts) -> str:
        raise KeyError("boom")

    monkeypatch.setattr(report_sections, "synthesis", broken)
    page = build_report(run)
    assert "This section could not be drawn: KeyError(&#x27;boom&#x27;)" in page and "Versions and fingerprints" in page


def test_report_command_rewrites_the_page(quick_run: Path, tmp_path: Path) -> None:
    (quick_run / "report.html").unlink()
    assert main(["report", str(quick_run)]) == 0 and (quick_run / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2  # not a run directory


class _Charts(HTMLParser):
    """Counts plotly chart divs and those holding an <svg>."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[int, int]] = []  # (div depth, chart number) of each open chart
        self.divs, self.charts, self.rendered, self.loads = 0, 0, set(), []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.loads.append(a[key])
        if tag == "div":
            self.divs += 1
            if "plotly-graph-div" in (a.get("class") or ""):
                self.charts += 1
                self.open.append((self.divs, self.charts))
        elif tag == "svg" and self.open:
            self.rendered.add(self.open[-1][1])

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self.open and self.open[-1][0] == self.divs:
                self.open.pop()
            self.divs -= 1


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail("Debian's chromium is needed to render the report: `make chromium` "
                    "(or `sudo apt-get install -y chromium`)")
    return found


def test_report_renders_in_headless_chromium(quick_run: Path, tmp_path: Path) -> None:
    page = quick_run / "report.html"
    assert page.is_file()  # written by the run itself
    chromium = _chromium()
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180,
                         check=True).stdout
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,6000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=180, check=True)
    assert shot.stat().st_size > 50_000  # a page with charts, not a blank one
    parser = _Charts()
    parser.feed(dom)
    # funnel, cluster sizes, representation, drop-rate disparity, timings; synthesis, quality and training say
    # "not in this recipe" / "not run"
    assert parser.charts == 5 and len(parser.rendered) == parser.charts
    assert 'data-errors=""' in dom  # no JS error, console error or blocked load
    assert 'data-resources=""' in dom  # the load handler ran and the page fetched nothing
    assert parser.loads == []
    assert "could not be drawn" not in dom


def test_gate_failure_still_writes_the_report(tmp_path: Path, sample_dir: Path) -> None:
    steps = [{"normalize": {}}, {"audit": {"axes": ["gender"], "gate": {"max_representation_ratio": 1.0}}}]
    recipe = {"name": "gated", "inputs": [{"path": str(sample_dir / "sample.jsonl"), "mapping": "alpaca",
                                           "on_error": "skip"}],
              "steps": steps, "output": {"dir": str(tmp_path / "run")}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 3
    page = (tmp_path / "run" / "report.html").read_text()
    assert "The audit gate stopped this run" in page and "representation_ratio" in page


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_dataset_card_is_a_hugging_face_card_that_datasets_loads(
    quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    folder = quick_run / "dataset"
    card = (folder / "README.md").read_text()
    front = _front_matter(card)
    manifest = json.loads((quick_run / "manifest.json").read_text())
    assert front["license"] == "unknown" and front["size_categories"] == ["n<1K"]
    assert front["task_categories"] == ["text-generation"] and front["source_datasets"] == ["data/sample.jsonl"]
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data.parquet"}]}]
    for section in ("## Sources", "## Curation steps", "## Synthetic share and provenance", "## Demographic audit",
                    "## Known limitations"):
        assert section in card
    assert "| dedup_minhash |" in card and "0 of" in card  # no synthetic rows in this recipe
    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert ds["train"].num_rows == manifest["rows_final"] == manifest["dataset"]["rows"]
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "dataset_info.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_dataset_card_front_matter_and_provenance_on_crafted_rows() -> None:
    from types import SimpleNamespace

    from gristmill.export import data_card, size_category

    synth = pl.struct(pl.lit("self_instruct").alias("method"), pl.lit("tiny").alias("model"),
                      pl.lit("vllm").alias("engine"), pl.lit("abc").alias("template_hash"))
    frame = pl.DataFrame({"id": ["1", "2", "3"], "text": ["a", "b", "c"], "source": ["in.jsonl", "in.jsonl", "synth:x"],
                          "lang": ["en", "de", "en"]}).select(
        "id", "text", "source", pl.struct(pl.col("lang").alias("language"), synth.alias("synth")).alias("meta"))
    recipe = SimpleNamespace(name="crafted", path="r.yaml", raw={"license": "cc-by-4.0"},
                             inputs=[SimpleNamespace(path="in.jsonl", mapping="alpaca")],
                             output=SimpleNamespace(formats=["jsonl"]))
    manifest = {"versions": {"gristmill": "0"}, "steps": [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0}],
                "models": {"synthesize": "/models/tiny"}}
    card = data_card(frame, recipe, manifest)
    front = _front_matter(card)
    assert front["license"] == "cc-by-4.0" and front["language"] == ["en", "de"]
    assert front["configs"][0]["data_files"][0]["path"] == "data.jsonl" and "synthetic" in front["tags"]
    assert "1 of 3 rows (33.3%) are synthetic" in card and "| `self_instruct` | `tiny` | `vllm` | `abc` | 1 |" in card
    assert "No demographic audit was run" in card and "| `in.jsonl` | alpaca | 2 |" in card
    assert [size_category(n) for n in (999, 1000, 250_000)] == ["n<1K", "1K<n<10K", "100K<n<1M"]
