"""The embedding fields every step that embeds text shares (``quality``, ``dedup_semantic``, the synthesis
post-filter's quality floor), defined once so that a recipe names them the same way everywhere and the runner
builds every embedder from the same four values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingParams(BaseModel):
    """Which sentence-transformers model embeds the texts, and how."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = "minilm-l6"
    """Sentence-transformers model: a registered short name or a local model directory."""
    batch_size: int | None = Field(None, ge=1)
    """Texts per forward pass (default: 16 on CPU, 256 on GPU)."""
    max_seq_length: int = Field(256, ge=16)
    """Tokens per text the model sees (longer texts are truncated)."""
    precision: Literal["fast", "fp32", "int8"] = "fast"
    """fast: bf16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, GPUs; Spearman 0.9998 of scores vs
    fp32 in bench/embed.py); fp32: sentence-transformers' default; int8: OpenVINO static int8 on CPU (BERT-family
    models; needs openvino + nncf; 1.7-1.9x the bf16 path on an AVX512-VNNI CPU at Spearman 0.997)."""
