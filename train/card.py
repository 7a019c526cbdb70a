"""The adapter's model card (README.md): base model, data, training figures and the eval table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def write_card(out_dir: Path, metrics: dict[str, Any], evaluation: dict[str, Any], data: dict[str, Any]) -> None:
    """``data`` comes from the caller (the runner): data fingerprint, rows, synthetic share, audit summary."""
    rows = ["| metric | base | adapter |", "|---|---|---|"]
    for key in ("loss", "perplexity", "rougeL", "exact_match"):
        if key in evaluation["base"]:
            rows.append(f"| {key} | {_fmt(evaluation['base'][key])} | {_fmt(evaluation['adapter'][key])} |")
    audit = data.get("audit")
    lines = [
        "---",
        f"base_model: {metrics['base_model']}",
        "library_name: peft",
        "tags: [gristmill, lora, qlora]" if metrics["method"] == "qlora" else "tags: [gristmill, lora]",
        "---",
        "",
        "# Adapter trained by gristmill",
        "",
        f"- base model: `{metrics['base_model']}` ({metrics['method']}, {metrics['trainable_params']:,} trainable "
        "parameters)",
        f"- data fingerprint: `{data.get('data_fingerprint', '-')}`",
        f"- rows: {metrics['train_rows']} train, {metrics['eval_rows']} eval ({evaluation['source']}); "
        f"{metrics['skipped_rows']} skipped ({metrics['overlength_rows']} over max_seq_length)",
        f"- synthetic share: {_fmt(data.get('synthetic_share'))}",
        f"- steps: {metrics['steps']}, tokens seen: {metrics['tokens_seen']:,}, train {metrics['train_seconds']} s,"
        f" eval {metrics['eval_seconds']} s",
        "",
        "## Evaluation",
        "",
        *rows,
        "",
    ]
    if audit:
        lines += ["## Audit summary", "", "```json", json.dumps(audit, indent=2, default=str), "```", ""]
    (out_dir / "README.md").write_text("\n".join(lines))
