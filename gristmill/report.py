"""``<run>/report.html``: one self-contained page about a run, written at the end of every run (also when the audit
gate stops it) and by ``gristmill report RUN``.

Everything is read back from the run directory (manifest, step checkpoints, rejects, reports, adapter), so the
page can be rebuilt for any finished run. plotly.js is inlined once, with the first chart; the page sets a strict
Content-Security-Policy, so it opens offline and could not load anything from the network even if it tried.
A section whose inputs are missing says so; a section that fails to draw says why, and the rest of the page stays.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.checkpoint import write_text_atomic

log = logging.getLogger(__name__)

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"

# Runs before anything else on the page: JS errors, console errors and blocked loads (CSP violations) are recorded
# on <html data-errors>, which a headless browser's DOM dump shows (the Chromium test checks it stays empty),
# and after load the resources it fetched on <html data-resources>.
_ERROR_PROBE = """<script>
(function () {
  var root = document.documentElement;
  function record(msg) { root.setAttribute('data-errors', (root.getAttribute('data-errors') || '') + msg + '\\n'); }
  window.addEventListener('error', function (e) { record('error: ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { record('rejection: ' + e.reason); });
  document.addEventListener('securitypolicyviolation', function (e) {
    record('blocked: ' + e.blockedURI + ' (' + e.violatedDirective + ')');
  });
  window.addEventListener('load', function () {  // every fetch the page attempted (none: it is self-contained)
    var names = performance.getEntriesByType('resource').map(function (e) { return e.name; });
    root.setAttribute('data-resources', names.join(' '));
  });
  var original = console.error;
  console.error = function () { record('console: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); };
})();
</script>"""

_STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem 4rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
nav a { margin-right: .8rem; } .muted { color: #666; } .missing { color: #8a6d3b; font-style: italic; }
.failed { color: #b00020; font-weight: bold; } .passed { color: #1b7f3b; font-weight: bold; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 640px; white-space: pre-wrap; word-break: break-word; }
details { margin: .3rem 0; } summary { cursor: pointer; }
mark { background: #ffe08a; } code { font-size: .85rem; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.side > div { border: 1px solid #ddd; padding: .5rem; white-space: pre-wrap; word-break: break-word; font-size: .9rem; }
</style>"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text (row text is untrusted: it never reaches the page unescaped)."""
    return html.escape("" if value is None else str(value))


def table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    """An HTML table of escaped cells; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>' for i, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value: Any) -> str:
    """A number as shown in tables: 4 significant digits for floats, ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


@dataclass
class Charts:
    """Turns plotly figures into page fragments; plotly.js goes in once, with the first chart."""

    count: int = 0

    def html(self, fig: Any, height: int = 360) -> str:
        fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 40, "b": 60}, template="plotly_white")
        out = fig.to_html(full_html=False, include_plotlyjs=self.count == 0, include_mathjax=False,
                          config={"displaylogo": False, "responsive": True})
        self.count += 1
        return out


@dataclass
class RunData:
    """What the report reads from a run directory, loaded on demand."""

    run_dir: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, run_dir: Path) -> RunData:
        from gristmill.common.errors import MissingFileError

        path = run_dir / "manifest.json"
        if not path.is_file():
            raise MissingFileError(f"{path} not found: `gristmill report` takes the directory of a run")
        return cls(run_dir, json.loads(path.read_text()))

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.manifest.get("steps", [])

    def folder(self, index: int) -> Path:
        return self.run_dir / "steps" / f"{index:02d}-{self.steps[index]['step']}"

    def find(self, name: str) -> int | None:
        """Index of the first step called ``name`` (0 is ingest), or None when the recipe has none."""
        return next((i for i, s in enumerate(self.steps) if s.get("step") == name), None)

    def scan(self, index: int, which: str) -> pl.LazyFrame | None:
        """``kept`` or ``dropped`` rows of step ``index`` as a lazy scan (None when the checkpoint is gone): a section
        that needs a few columns or rows of a million-row checkpoint selects and filters them before anything is
        read (reading the MinHash checkpoint whole made write_report's peak at 1M rows, bench/RESULTS.md Scale)."""
        file = self.folder(index) / f"{which}.parquet"
        return pl.scan_parquet(file) if file.is_file() else None

    def json(self, relative: str) -> dict[str, Any] | None:
        file = self.run_dir / relative
        return json.loads(file.read_text()) if file.is_file() else None


Section = tuple[str, str, Callable[[RunData, Charts], str]]  # anchor, title, builder


def _sections() -> list[Section]:
    from gristmill import report_outcomes as o
    from gristmill import report_sections as s

    return [
        ("funnel", "Curation funnel", s.funnel),
        ("drops", "Examples of dropped rows", s.drop_examples),
        ("quality", "Quality scores", s.quality),
        ("clusters", "Near-duplicate clusters (MinHash)", s.clusters),
        ("synthesis", "Synthetic yield", s.synthesis),
        ("audit", "Demographic audit", o.audit),
        ("mitigation", "Bias mitigation", o.mitigation),
        ("training", "Training and evaluation", o.training),
        ("evalsets", "Eval sets", o.evaluation),
        ("modelbias", "Model bias probe", o.model_bias),
        ("ablation", "Ablation", o.ablation),
        ("lineage", "Lineage (continued runs)", o.lineage),
        ("timings", "Timings", o.timings),
        ("provenance", "Versions and fingerprints", o.provenance),
    ]


def build_report(run: RunData) -> str:
    """The page as a string."""
    from gristmill.report_sections import overview

    charts = Charts()
    body = []
    for anchor, title, builder in _sections():
        try:
            content = builder(run, charts)
        except Exception as err:  # a broken section must not cost the user the rest of the page (or the run)
            log.warning(f"report: the section {title!r} could not be drawn: {err!r}")
            log.debug("report section failure", exc_info=True)
            content = f'<p class="failed">This section could not be drawn: {esc(repr(err))}</p>'
        body.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{content}\n</section>')
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in _sections())
    name = run.manifest.get("name", run.run_dir.name)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en" data-errors="">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gristmill report: {esc(name)}</title>", _ERROR_PROBE, _STYLE, "</head>", "<body>",
        f"<h1>{esc(name)}</h1>", overview(run), f"<nav>{nav}</nav>", *body, "</body>", "</html>", ""])


def write_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report.html`` (atomically, readable as the user's umask allows) and return its path.

    The data card (``dataset/README.md``) is written at export, before training; its model section (eval sets,
    bias probe) is brought up to date here too, since every place that changes those results ends here."""
    from gristmill.export import refresh_card

    run = RunData.load(run_dir)
    refresh_card(run_dir, run.manifest)
    page = build_report(run)
    path = run_dir / "report.html"
    write_text_atomic(path, page)
    log.debug(f"report → {path} ({os.path.getsize(path) // 1024} KiB)")
    return path
