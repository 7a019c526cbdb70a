"""CPU fast paths for LoRA training: a fused LoRA linear layer and per-example causal attention in packed rows.

Both compute what peft's LoRA layer and transformers' sdpa attention compute, with fewer kernels:

* ``fuse_lora``: peft's LoRA forward over a frozen base weight is ~9 kernels per layer (cast the input for the base,
  matmul, cast back, clone, cast the input for A, two matmuls, scale, add) and its backward about as many again,
  most of them full-size copies between fp32 and bf16. ``LoraLinear`` casts the input once, runs the frozen
  matmul in the compute dtype and adds the adapter's rank-r term in place in the input's dtype (as peft adds it),
  and computes the three gradients (input, A, B) with one cast of the incoming gradient. Example: x 1 x 576, W 1536 x 576, A 16 x 576, B 1536 x 16,
  s = 2 -> y 1 x 1536 equal to ``x @ W.T + 2 * (x @ A.T) @ B.T`` (up to bf16 rounding in bf16 compute).
* ``VARLEN``: an attention implementation for packed rows. Given the example boundaries of a packed row
  (``cu_seq_lens_q``, as for flash-attention's varlen kernel), it splits q/k/v at the boundaries and runs sdpa on
  each example with ``is_causal=True``, so it computes each example's causal triangle instead of the row's full
  masked square. Example: a row packing examples of 300 and 200 tokens costs 300²/2 + 200²/2 = 65,000 scores
  instead of 500² = 250,000. Without boundaries (padded batches, generation) it is transformers' sdpa with its
  mask.
"""

from __future__ import annotations

import types
from typing import Any

VARLEN = "gristmill_varlen_sdpa"
"""The attention implementation name registered with transformers (``register_varlen_attention``)."""


def _lora_linear_fn() -> Any:
    import torch

    class LoraLinear(torch.autograd.Function):
        """``y = x W^T (+ bias) + s (x A^T) B^T``; W frozen, gradients for x, A and B.

        The frozen-weight matmuls run in W's dtype (bf16 under bf16 compute), as peft's layer under autocast; the
        adapter's term is added in x's dtype (fp32 on CPU) as peft adds it, so a LoRA delta far smaller than the
        base output is not rounded away in a bf16 sum. The rank-r products stay small (n x r)."""

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scale: float) -> Any:
            dtype = weight.dtype
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            a = lora_a.to(dtype)
            h = flat @ a.t()  # n x r, rounded to the compute dtype as autocast's lora_A output is
            y = flat @ weight.t() if bias is None else torch.addmm(bias.to(dtype), flat, weight.t())
            y = y.to(x.dtype)
            y.addmm_(h.to(x.dtype), lora_b.to(x.dtype).t(), alpha=scale)
            ctx.save_for_backward(flat, h, weight, lora_a, lora_b)
            ctx.scale, ctx.x_dtype = scale, x.dtype
            return y.reshape(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            flat, h, weight, lora_a, lora_b = ctx.saved_tensors
            g = grad.reshape(-1, grad.shape[-1])
            low = g.to(weight.dtype)
            gh = (g @ lora_b.to(g.dtype)).mul_(ctx.scale)  # d loss / d (x A^T), n x r, in the gradient's dtype
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (low @ weight).to(ctx.x_dtype).addmm_(gh.to(ctx.x_dtype), lora_a.to(ctx.x_dtype))
                grad_x = grad_x.reshape(*grad.shape[:-1], weight.shape[1])
            grad_a = (gh.to(flat.dtype).t() @ flat).to(lora_a.dtype) if ctx.needs_input_grad[3] else None
            grad_b = (low.t() @ h).mul_(ctx.scale).to(lora_b.dtype) if ctx.needs_input_grad[4] else None
            return grad_x, None, None, grad_a, grad_b, None

    return LoraLinear


_FN: list[Any] = []


def lora_linear(x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scale: float) -> Any:
    """``x W^T + bias + scale (x A^T) B^T``: the frozen matmul in ``weight``'s dtype, the adapter's term added in
    ``x``'s dtype, returned in ``x``'s dtype, with a hand-written backward (W and bias frozen)."""
    if not _FN:
        _FN.append(_lora_linear_fn())
    return _FN[0].apply(x, weight, bias, lora_a, lora_b, scale)


def fuse_lora(model: Any) -> int:
    """Route every peft LoRA layer whose base is a bitsandbytes 4-bit layer with a dequantized-weight cache
    (``model.cache_dequantized_weights``) through ``lora_linear``; returns the number of layers routed.

    The fused path runs only when it computes exactly what peft would: one active vanilla LoRA adapter (no
    DoRA), not merged, adapters enabled, no dropout, no per-call adapter names; anything else takes peft's own
    forward."""
    routed = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if not hasattr(module, "lora_A") or not hasattr(base, "gristmill_dense_weight") \
                or getattr(module, "gristmill_fused", False):
            continue
        peft_forward = module.forward

        def forward(self: Any, x: Any, *args: Any, _peft: Any = peft_forward, **kwargs: Any) -> Any:
            active = self.active_adapters
            name = active[0] if len(active) == 1 else None
            if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
                    or name in getattr(self, "lora_variant", {}) or self.use_dora.get(name)
                    or not isinstance(self.lora_dropout[name], _identity())):
                return _peft(x, *args, **kwargs)
            base = self.base_layer
            return lora_linear(x, base.gristmill_dense_weight, base.bias, self.lora_A[name].weight,
                               self.lora_B[name].weight, self.scaling[name])

        module.forward = types.MethodType(forward, module)
        module.gristmill_fused = True
        routed += 1
    return routed


def _identity() -> type:
    import torch

    return torch.nn.Identity


def varlen_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: per-example causal sdpa inside one packed row when the batch carries
    ``cu_seq_lens_q`` (its example boundaries), else transformers' sdpa. q: 1 x heads x T x d, k/v: 1 x kv
    heads x T x d; returns 1 x T x heads x d like every transformers attention function."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    lengths = [int(n) for n in torch.diff(bounds.cpu()).tolist()]
    if sum(lengths) != query.shape[2]:
        raise ValueError(f"packed row of {query.shape[2]} tokens but example lengths sum to {sum(lengths)}")
    gqa = query.shape[1] != key.shape[1]
    # In the inputs' dtype (fp32 on CPU) rather than autocast's bf16: the CPU flash kernel ran forward + backward
    # over a batch's examples 1.3x faster in fp32 (21 vs 28 ms, 1 thread), and the six casts go away.
    # split's backward is one cat of the per-example gradients (slicing would zero-fill a full tensor each).
    # Under autocast a plain nn.Linear returns bf16 while rotary returns fp32: one common dtype, the wider.
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with torch.autocast(query.device.type, enabled=False):
        parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                  is_causal=True, enable_gqa=gqa)
                 for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2),
                                    strict=True)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
    return out.transpose(1, 2).contiguous(), None


def register_varlen_attention() -> str:
    """Register ``varlen_sdpa`` (and sdpa's mask builder, for padded batches) under ``VARLEN``; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, sdpa_mask)
    return VARLEN
