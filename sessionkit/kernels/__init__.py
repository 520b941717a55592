"""FlashAttention forward kernels (csrc/) for (B, H, S, D) fp16/bf16 tensors on CUDA.

    from sessionkit.kernels import flash_attention
    out = flash_attention(q, k, v, causal=True)             # like SDPA's is_causal=True
    out, lse = flash_attention(q, k, v, return_lse=True)    # lse: float32 (B, H, Sq), natural log
    flash_attention_into(q, k, v, out, lse)                 # into caller-owned buffers

The first call builds the kernels if no cached build matches (one line says so), later processes
load the cached library. Importing this package does not import torch.
"""

from __future__ import annotations

from .api import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS
from .build import BuildError, BuildInfo


def flash_attention(q, k, v, causal: bool = False, scale: float | None = None,
                    return_lse: bool = False):
    """O = softmax(scale * q @ k^T [causal mask]) @ v; with ``return_lse`` also the LSE."""
    from .api import flash_attention as _impl

    return _impl(q, k, v, causal=causal, scale=scale, return_lse=return_lse)


def flash_attention_into(q, k, v, out, lse, causal: bool = False, scale: float | None = None) -> None:
    """Write O into ``out`` and the LSE into ``lse`` (caller-allocated)."""
    from .api import flash_attention_into as _impl

    _impl(q, k, v, out, lse, causal=causal, scale=scale)


def load_extension(progress=None) -> BuildInfo:
    """Build (if needed) and load the kernels; returns what was built or loaded."""
    from .api import load_extension as _impl

    return _impl(progress)


__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "BuildError",
    "BuildInfo",
    "flash_attention",
    "flash_attention_into",
    "load_extension",
]
