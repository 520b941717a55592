"""FlashAttention forward kernels (csrc/) for (B, H, S, D) fp16/bf16 tensors on CUDA.

    from sessionkit.kernels import flash_attention
    out = flash_attention(q, k, v, causal=True)             # like SDPA's is_causal=True
    out = flash_attention(q, k, v, causal=True, causal_alignment="bottom_right")  # KV-cache decode
    out = flash_attention(q, k, v, enable_gqa=True)         # k, v with H_q / n heads
    out, lse = flash_attention(q, k, v, return_lse=True)    # lse: float32 (B, H, Sq), natural log
    flash_attention_into(q, k, v, out, lse)                 # into caller-owned buffers

The first call builds the kernels if no cached build matches (one line says so), later processes
load the cached library. Importing this package does not import torch.
"""

from __future__ import annotations

from .api import (CAUSAL_ALIGNMENTS, SUPPORTED_DTYPES, flash_attention, flash_attention_into,
                  head_dims_by_family, supported_head_dims)
from .build import BuildError, BuildInfo, NoCudaError


def __getattr__(name: str):
    if name == "SUPPORTED_HEAD_DIMS":
        return supported_head_dims()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_extension(progress=None, *, force: bool = False) -> BuildInfo:
    """Build (if needed) and load the kernels; returns what was built or loaded.

    ``progress`` (an object with ``note(text)`` and ``update(done, total, label)``) hears the
    build's progress; ``force`` rebuilds even when a cached build matches.

    Raises:
        NoCudaError: torch is missing, is a CPU-only build, or sees no GPU.
        BuildError: the kernels did not compile or load (``first_error`` is file:line: message,
            ``log_path`` the build log); NoCudaError is one too.
    """
    from .api import load_extension as _impl

    return _impl(progress, force=force)


__all__ = [
    "CAUSAL_ALIGNMENTS",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "head_dims_by_family",
    "supported_head_dims",
    "BuildError",
    "BuildInfo",
    "NoCudaError",
    "flash_attention",
    "flash_attention_into",
    "load_extension",
]
