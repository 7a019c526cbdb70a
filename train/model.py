"""Loading the base model (NF4 4-bit or full precision) with a LoRA/DoRA adapter, and the weighted loss.

The loss computes logits only where a label exists: the decoder's hidden states at labelled positions go through
the LM head, so prompt and padding positions cost no vocabulary projection and no cross-entropy (on SmolLM2 the
head is a fifth of the forward's multiply-adds, and the logits of a full batch are its largest tensor).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from gristmill.common.errors import InputError
from gristmill.common.hardware import cpu_has_bf16
from gristmill.train.formatting import IGNORE
from gristmill.train.params import TrainParams

HINT = "pip install 'gristmill[cpu]' (CPU) or 'gristmill[gpu]' (CUDA): torch, transformers, peft, bitsandbytes"


def device_of(model: Any) -> Any:
    return next(model.parameters()).device


def use_bf16(params: TrainParams, device: str) -> bool:
    if params.bf16 is not None:
        return params.bf16 and (device == "cuda" or cpu_has_bf16())
    # On CPUs with native bf16 (AVX512-BF16 / AMX) too: bench/train.py measured 370.6 tok/s in bf16 against
    # 222.7 in fp32 (SmolLM2-135M, packed batches whose shapes change every step; eval loss 2.3598 vs 2.3602).
    return device == "cuda" or cpu_has_bf16()


def autocast(model: Any) -> Any:
    """bf16 autocast on the model's device when the model was loaded for bf16 compute, else a no-op context."""
    import torch

    device = device_of(model)
    enabled = bool(getattr(model.config, "gristmill_bf16", False))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def load_base(model_path: str, params: TrainParams, *, device: str | None = None,
              trust_remote_code: bool = False) -> Any:
    """The frozen base model: NF4 + double quant with ``method: qlora``, else in the compute dtype. Code in the
    model directory runs only with ``trust_remote_code`` (off by default)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"training needs the model stack: {HINT}") from err
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(params, device)
    compute = torch.bfloat16 if bf16 else torch.float32
    # On CPU the unquantized parts (norms, embeddings) stay fp32 and autocast runs the matmuls in bf16.
    kwargs: dict[str, Any] = {"dtype": compute if device == "cuda" else torch.float32, "device_map": {"": device},
                              "trust_remote_code": trust_remote_code}
    if device == "cuda":
        # varlen flash attention when installed; sdpa builds the block-diagonal mask from the position ids.
        kwargs["attn_implementation"] = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    if params.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=params.double_quant,
        )
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.gristmill_bf16 = bf16  # read by autocast(); not saved with the adapter
    if params.method == "qlora":
        keep_4bit_weights_trainable(model)
        if params.dequant_cache if params.dequant_cache is not None else device == "cpu":
            cache_dequantized_weights(model, compute)
    return model


def cache_dequantized_weights(model: Any, dtype: Any) -> int:
    """Give every bitsandbytes 4-bit linear layer of ``model`` one dequantized copy of its (frozen) weight in
    ``dtype`` and route its forward through it; returns the number of weights cached.

    bitsandbytes dequantizes a 4-bit weight in every forward and again in every backward; on CPU, without a fused
    4-bit GEMM, one dequantization took 65% as long as the layer's matmul in a micro-benchmark on a loaded 2-core
    machine (a quiet training run showed no clear gain: bench/RESULTS.md). LoRA never updates the base weights, so
    one copy gives the same values for the whole run. The copy is a non-persistent buffer: adapters, checkpoints and merges never
    see it. Example: a 4-bit 1536 x 576 projection gains a 1536 x 576 ``gristmill_dense_weight`` equal to
    ``dequantize_4bit(weight)`` and its output equals ``x @ that.T + bias``.
    """
    import types

    import bitsandbytes as bnb
    import torch

    def dense_forward(self: Any, x: Any) -> Any:
        # As Linear4bit.forward: compute in the compute dtype, return in the input's dtype.
        weight = self.gristmill_dense_weight
        bias = None if self.bias is None else self.bias.to(weight.dtype)
        return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    cached = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
            module.register_buffer("gristmill_dense_weight", weight, persistent=False)
            module.forward = types.MethodType(dense_forward, module)
            cached += weight.numel()
    return cached


def adapter_shape(config: dict[str, Any]) -> dict[str, Any]:
    """The LoRA shape an adapter_config.json records, comparable with ``lora_shape``."""
    targets = config.get("target_modules")
    return {"r": config.get("r"), "alpha": config.get("lora_alpha"), "dora": bool(config.get("use_dora")),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets}


def lora_shape(params: TrainParams) -> dict[str, Any]:
    """The LoRA shape ``params`` asks for. Example: defaults -> ``{r: 16, alpha: 32, dora: False,
    target_modules: 'all-linear'}``."""
    targets = params.lora.target_modules
    return {"r": params.lora.r, "alpha": params.lora.alpha, "dora": params.method == "dora",
            "target_modules": sorted(targets) if isinstance(targets, list) else targets}


def check_resume_shape(adapter: Path, params: TrainParams) -> None:
    """Raise an input error naming both shapes when the adapter in ``adapter`` cannot continue with ``params``
    (rank, alpha, DoRA, and the target modules when the recipe lists them: peft saves "all-linear" expanded)."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise InputError(f"train.resume_adapter: {adapter} has no adapter_config.json (not a trained adapter)")
    have, want = adapter_shape(json.loads(config_path.read_text())), lora_shape(params)
    if want["target_modules"] == "all-linear":
        have, want = {**have, "target_modules": None}, {**want, "target_modules": None}
    if have != want:
        raise InputError(f"train.resume_adapter: the earlier adapter {adapter} has LoRA shape {have} but the recipe's "
                         f"train.lora/method ask for {want}; set train.lora (and method) to the earlier shape to "
                         "continue from it, or drop resume_adapter to train a fresh adapter")


def load_model(model_path: str, params: TrainParams, *, trust_remote_code: bool = False,
               adapter: Path | None = None) -> tuple[Any, Any]:
    """Base model + a fresh adapter (peft), or the trainable adapter saved in ``adapter`` (an earlier run's, to
    continue training it), and the tokenizer (pad = EOS when the tokenizer has none)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer

    if adapter is not None:
        check_resume_shape(adapter, params)  # before the base model loads: a wrong shape fails at once
    model = load_base(model_path, params, trust_remote_code=trust_remote_code)
    on_gpu = device_of(model).type == "cuda"
    checkpointing = on_gpu if params.gradient_checkpointing is None else params.gradient_checkpointing
    if params.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(
            r=params.lora.r,
            lora_alpha=params.lora.alpha,
            lora_dropout=params.lora.dropout,
            target_modules=params.lora.target_modules,
            use_dora=params.method == "dora",
            task_type="CAUSAL_LM",
        ))
    from gristmill.train.fused import fuse_lora, register_varlen_attention

    if not on_gpu and getattr(model.config, "_attn_implementation", None) == "sdpa":
        # CPU: per-example causal attention inside one packed row (no varlen kernel here, and sdpa over a masked
        # square costs about what packing saves; bench/RESULTS.md). A model whose code cannot switch keeps sdpa.
        model.set_attn_implementation(register_varlen_attention())
    fuse_lora(model)  # only LoRA layers over a dequantized-weight cache (train.dequant_cache)
    if params.compile:
        # Regional compilation: one graph per decoder layer, reused by every layer of the same shape, compiles in
        # a fraction of a whole-model compile; dynamic shapes because packed batches change size every step.
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def keep_4bit_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a ``Linear4bit`` weight in place to a packed inference
    layout the first time the module runs in eval mode without grad (our eval-loss pass); training forwards and
    backwards after that silently go wrong. Measured on SmolLM2: 6 steps on one batch took the loss 3.44 -> 1.32
    without an eval pass first and 3.44 -> 3.27 with one. Turning the CPU fast path off keeps the layout fixed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def varlen_attention(model: Any) -> bool:
    """True when attention runs per example inside a packed row (flash-attention's varlen kernel, or on CPU
    ``fused.varlen_sdpa``): a packed batch is then best one row long, with its example boundaries."""
    from gristmill.train.fused import VARLEN

    return getattr(model.config, "_attn_implementation", None) in ("flash_attention_2", VARLEN)


def make_optimizer(trainable: list[Any], lr: float, on_gpu: bool) -> Any:
    """Paged AdamW 8-bit on CUDA (the QLoRA paper's optimizer), torch AdamW elsewhere."""
    import torch

    if on_gpu:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(trainable, lr=lr, weight_decay=0.0)
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)


def token_losses(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Cross-entropy of every labelled next token, and its weight (1-D tensors of the same length).

    Position ``t`` predicts label ``t + 1``; only positions whose next label is not -100 reach the LM head.
    """
    import torch.nn.functional as F

    device = device_of(model)
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()
              if k not in ("labels", "weights")}
    target = batch["labels"][:, 1:].to(device)
    keep = target != IGNORE
    with autocast(model):
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    logits = logits.float()
    losses = F.cross_entropy(logits, target[keep], reduction="none")
    return losses, batch["weights"][:, 1:].to(device)[keep]
