"""What the machine's CPU can do natively, for stages that pick a precision (embeddings, training)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere bf16 on CPU is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
