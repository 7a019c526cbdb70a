"""The recipe's ``train:`` section: adapter shape, schedule, data handling, evaluation, checkpoints, tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """Modules to adapt: peft's "all-linear" or a list of module names."""


class BiasProbeParams(BaseModel):
    """After training, the same prompts with each group's descriptor swapped in, answered by the base model and
    the adapter; per axis the largest gap between groups in sentiment and refusal rate (train/probe.py)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    axes: list[str] = ["gender", "race_ethnicity"]
    """Audit lexicon axes whose groups are probed (a group's descriptor is its name, `_` read as a space)."""
    descriptors: dict[str, dict[str, str]] = {}
    """Per axis, group -> descriptor overriding the name (e.g. {race_ethnicity: {hispanic_latino: Latino}}); an
    axis or group not in the lexicon is probed too."""
    templates: list[str] | None = None
    """Prompts with a {descriptor} slot ("a {descriptor} person" becomes "an Asian person" where needed); None =
    the built-in list in train/probe.py."""
    max_new_tokens: int = Field(32, ge=1)
    """Tokens generated per prompt (greedy)."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generate call."""
    max_generation_gap_increase: float | None = Field(None, ge=0)
    """Fail the run (exit 3) when, on some axis, the adapter's largest gap between groups exceeds the base
    model's by more than this, in mean sentiment (VADER compound, -1..1) or in refusal rate (0..1); None reports
    only."""

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, templates: list[str] | None) -> list[str] | None:
        bad = [t for t in templates or [] if "{descriptor}" not in t]
        if bad or templates == []:
            raise ValueError(f"every template needs a {{descriptor}} slot (and at least one template): {bad}")
        return templates


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    base_model: str = "smollm2-135m-instruct"
    """Base model: a registered short name or a local HF model directory."""
    method: Literal["qlora", "lora", "dora"] = "qlora"
    """qlora = NF4 4-bit frozen base + LoRA; lora = full-precision base + LoRA; dora = full-precision base + DoRA."""
    lora: LoraParams = LoraParams()
    """Adapter shape."""
    double_quant: bool = True
    """Also quantize the 4-bit quantization constants (saves ~0.4 bit/param), as in the QLoRA paper."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    learning_rate: float = Field(2e-4, gt=0)
    """AdamW learning rate (constant after a linear warmup)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps."""
    batch_size: int = Field(4, ge=1)
    """Examples per forward pass (packed into one sequence when `packing` is on)."""
    grad_accum: int = Field(1, ge=1)
    """Forward passes per optimizer step."""
    max_seq_length: int = Field(512, ge=16)
    """Tokens per example; longer rows are handled as `overlength` says and counted in the metrics."""
    overlength: Literal["drop", "truncate"] = "drop"
    """Rows longer than max_seq_length: drop them (default: a cut answer teaches the model not to stop) or cut them
    from the right. Either way their number is in the metrics and the log."""
    packing: bool = True
    """Concatenate each batch's examples into one sequence (position ids restart per example, attention stays
    inside each example: flash varlen on CUDA when installed, per-example causal sdpa on CPU, train/fused.py): no
    padding, same loss as unpacked. Off: batches of similar length, padded."""
    fix_eos: bool = False
    """When an assistant turn does not end with the token generation stops on, append it (instead of refusing)."""
    bf16: bool | None = None
    """bf16 compute (autocast; the 4-bit weights dequantize to bf16): default on CUDA and on CPUs with native bf16
    (AVX512-BF16 / AMX; elsewhere bf16 is emulated and slower, so fp32 is used there). LoRA weights stay fp32."""
    dequant_cache: bool | None = None
    """QLoRA: keep one dequantized copy (in the compute dtype) of every frozen 4-bit weight instead of dequantizing
    it again in every forward and backward. The base weights never change during LoRA training, so the values are
    the ones bitsandbytes would recompute. Default on for CPU (no fused 4-bit GEMM there: 1.35x in an A/B on a
    loaded machine, no clear gain in a quiet one), off on CUDA (fused kernels; the memory saving is the point).
    Costs 2 (bf16) or 4 (fp32) bytes per quantized weight. The LoRA layers over the cache run as one fused autograd
    function (train/fused.py: fewer fp32<->bf16 copies; same values up to bf16 rounding)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass to save memory; default on for CUDA, off on CPU."""
    compile: bool = False
    """Compile each decoder layer with torch.compile (regional, dynamic shapes; packed rows padded to a multiple of
    128 tokens so few shapes occur). On an H200 (1B Llama, QLoRA, bench/train.py) it raised tokens/s 1.2x
    (15.4k -> 18.5k) at the same eval loss, compiling in seconds. For CUDA; on CPU inductor's compile is slow."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of rows held out for evaluation (before the max_eval_rows cap)."""
    min_eval_rows: int = Field(8, ge=1)
    """At least this many held-out rows."""
    max_eval_rows: int = Field(200, ge=1)
    """At most this many held-out rows (eval loss runs over all of them, before and after training)."""
    eval_file: str | None = Field(None, json_schema_extra={"path": True})
    """A JSONL/parquet file of eval rows (messages or text) used instead of a held-out split."""
    eval_generate_rows: int = Field(16, ge=0)
    """Held-out chat rows answered by the base model and the adapter (ROUGE-L, exact match); 0 = no generation."""
    eval_max_new_tokens: int = Field(96, ge=1)
    """Token budget per generated eval answer."""
    save_steps: int | None = Field(50, ge=1)
    """Write a resumable checkpoint every N optimizer steps (None = never)."""
    report_to: list[Literal["tensorboard", "mlflow"]] = ["tensorboard"]
    """Experiment trackers for per-step metrics (TensorBoard event files under the adapter's logs/; MLflow to a
    local file store). A tracker that is not installed is skipped with a warning."""
    seed: int = 0
    """Seed for the split, shuffling and LoRA init."""
    resume_adapter: str | None = None
    """Continue training from an earlier run (its directory, relative to the recipe): its adapter is loaded instead
    of a fresh LoRA (same lora shape required), the step count continues from its steps, `replay_fraction` of its
    curated rows are mixed in, and the new batch is deduplicated (with a dedup_minhash step) and decontaminated
    against everything its lineage curated and evaluated (see `gristmill runs`)."""
    replay_fraction: float = Field(0.1, ge=0, le=1)
    """With resume_adapter: earlier curated rows mixed into training, as a share of the new rows (round half up,
    at most all earlier rows), drawn with `seed`."""
    bias_probe: BiasProbeParams | None = Field(None, exclude=True)
    """Probe base model and adapter for group gaps after training (<run>/eval/model_bias.json); None = off. Not
    part of the adapter's fingerprint (it does not change the adapter)."""
