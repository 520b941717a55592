"""The Python face of the kernels: argument checks, the torch ops and their fake implementations.

torch is imported inside functions only. The ops live in the built library (``TORCH_LIBRARY
(sessionkit, ...)`` in csrc/flash_api.cpp); :func:`load_extension` builds it when needed, loads it
and registers the fake (meta) implementations that ``torch.compile`` and ``opcheck`` use.
"""

from __future__ import annotations

import math
import sys
import threading

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = ("float16", "bfloat16")  # torch dtype names, without the "torch." prefix

_FAKES_LOCK = threading.Lock()
_FAKES_REGISTERED = False


class _LineProgress:
    """Default progress when a caller passes none: one line to stderr when a build starts."""

    def note(self, text: str) -> None:
        print(f"sessionkit: {text}", file=sys.stderr, flush=True)

    def update(self, done: int, total: int, label: str = "") -> None:
        pass


def load_extension(progress=None, *, force: bool = False):
    """Build the kernels if no cached build matches, load them, and return a ``BuildInfo``.

    With a cached build this only loads the library (well under 2 s once torch is imported).
    """
    from . import build

    info = build.loaded()
    if info is None or force:
        info = build.build_extension(progress=progress or _LineProgress(), force=force)
    # Also when the build step loaded the library first: the op needs its fake implementations.
    _register_fakes()
    return info


def _ensure_loaded() -> None:
    from . import build

    if build.loaded() is None or not _FAKES_REGISTERED:
        load_extension()


def _register_fakes() -> None:
    global _FAKES_REGISTERED
    import torch

    with _FAKES_LOCK:
        if _FAKES_REGISTERED:
            return

        @torch.library.register_fake("sessionkit::flash_attn_fwd")
        def _fwd_fake(q, k, v, causal, scale):
            batch, heads, seq_q, head_dim = q.shape
            out = q.new_empty((batch, heads, seq_q, head_dim))
            lse = q.new_empty((batch, heads, seq_q), dtype=torch.float32)
            return out, lse

        @torch.library.register_fake("sessionkit::flash_attn_fwd_out")
        def _fwd_out_fake(q, k, v, out, lse, causal, scale):
            return None

        _FAKES_REGISTERED = True


# --------------------------------------------------------------------------------------------
# Checks (before the op, so that bad input gets a plain Python error)

def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def check_inputs(q, k, v) -> None:
    """Raise TypeError/ValueError naming the problem when (q, k, v) cannot go to the kernel.

    Device checks come last so that every shape and dtype rule can be exercised on CPU tensors.
    """
    import torch

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"flash_attention: {name} must be 4-D (batch, heads, seq_len, head_dim); "
                             f"got shape {_shape(t)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if _dtype_name(t.dtype) not in SUPPORTED_DTYPES:
            raise TypeError(f"flash_attention: {name} has dtype {_dtype_name(t.dtype)}; supported "
                            f"dtypes are {', '.join(SUPPORTED_DTYPES)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"flash_attention: q, k and v must share one dtype; got "
                        f"{_dtype_name(q.dtype)}, {_dtype_name(k.dtype)}, {_dtype_name(v.dtype)}")
    head_dim = q.shape[3]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attention: head_dim {int(head_dim)} is not supported; supported head "
                         f"dims are {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if k.shape[3] != head_dim or v.shape[3] != head_dim:
        raise ValueError(f"flash_attention: q, k and v must share head_dim; got shapes {_shape(q)}, "
                         f"{_shape(k)}, {_shape(v)}")
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(f"flash_attention: batch sizes differ: q {_shape(q)}, k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
        raise ValueError(f"flash_attention: head counts differ: q {_shape(q)}, k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"flash_attention: k and v sequence lengths differ: k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[2] == 0:
        raise ValueError("flash_attention: k and v have no keys (seq_len_k == 0); softmax over no "
                         "keys is undefined")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            raise ValueError(f"flash_attention: the last dimension of {name} must be contiguous "
                             f"(stride 1); got strides {tuple(t.stride())}; call .contiguous() first")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"flash_attention: q and {name} are on different devices "
                             f"({q.device} and {t.device})")
    if q.device.type != "cuda":
        raise ValueError(f"flash_attention: needs CUDA tensors; q, k and v are on {q.device}")


def check_outputs(q, out, lse) -> None:
    import torch

    for name, t in (("out", out), ("lse", lse)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash_attention_into: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
    if tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"flash_attention_into: out must have the shape of q {_shape(q)}; got "
                         f"{_shape(out)}")
    if tuple(lse.shape) != tuple(q.shape[:3]):
        batch, heads, seq_q = (int(s) for s in q.shape[:3])
        raise ValueError(f"flash_attention_into: lse must have shape (batch, heads, seq_len_q) = "
                         f"({batch}, {heads}, {seq_q}); got {_shape(lse)}")
    if out.dtype != q.dtype:
        raise TypeError(f"flash_attention_into: out must have dtype {_dtype_name(q.dtype)}; got "
                        f"{_dtype_name(out.dtype)}")
    if lse.dtype != torch.float32:
        raise TypeError(f"flash_attention_into: lse must be float32; got {_dtype_name(lse.dtype)}")
    for name, t in (("out", out), ("lse", lse)):
        if t.device != q.device:
            raise ValueError(f"flash_attention_into: {name} is on {t.device}, q on {q.device}")


def resolve_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"flash_attention: scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"flash_attention: scale must be finite, got {scale}")
    return float(scale)


def _resolve_causal(causal) -> bool:
    if isinstance(causal, bool):
        return causal
    if isinstance(causal, int) and causal in (0, 1):
        return bool(causal)
    raise TypeError(f"flash_attention: causal must be a bool, got {causal!r}")


def _kernel_ready(t) -> bool:
    """16-byte aligned rows: outer strides (of dims longer than 1) and offset multiples of 8."""
    if t.storage_offset() % 8 != 0:
        return False
    return all(t.shape[i] <= 1 or t.stride(i) % 8 == 0 for i in range(3))


def _prepare(t):
    import torch

    if _kernel_ready(t):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _out_ready(out) -> bool:
    if out.stride(3) != 1 or out.storage_offset() % 2 != 0:
        return False
    return all(out.shape[i] <= 1 or out.stride(i) % 2 == 0 for i in range(3))


# --------------------------------------------------------------------------------------------
# Public functions

def flash_attention(q, k, v, causal: bool = False, scale: float | None = None,
                    return_lse: bool = False):
    """Softmax attention like ``scaled_dot_product_attention`` on (B, H, S, D) tensors.

    ``causal`` means SDPA's ``is_causal=True`` (query i sees keys j <= i, top-left aligned);
    ``scale`` defaults to 1/sqrt(D). Returns O in the input dtype, or (O, LSE) with
    ``return_lse``: LSE is float32 (B, H, Sq), the natural-log logsumexp of the scaled scores.
    """
    import torch

    check_inputs(q, k, v)
    causal = _resolve_causal(causal)
    scale = resolve_scale(scale, int(q.shape[3]))
    _ensure_loaded()
    out, lse = torch.ops.sessionkit.flash_attn_fwd(_prepare(q), _prepare(k), _prepare(v), causal,
                                                   scale)
    return (out, lse) if return_lse else out


def flash_attention_into(q, k, v, out, lse, causal: bool = False, scale: float | None = None) -> None:
    """Like :func:`flash_attention`, writing O into ``out`` (B, H, Sq, D) and the LSE into ``lse``
    (B, H, Sq, float32), both allocated by the caller."""
    import torch

    check_inputs(q, k, v)
    check_outputs(q, out, lse)
    causal = _resolve_causal(causal)
    scale = resolve_scale(scale, int(q.shape[3]))
    _ensure_loaded()
    q, k, v = _prepare(q), _prepare(k), _prepare(v)
    if _out_ready(out):
        torch.ops.sessionkit.flash_attn_fwd_out(q, k, v, out, lse, causal, scale)
    else:
        tmp = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        torch.ops.sessionkit.flash_attn_fwd_out(q, k, v, tmp, lse, causal, scale)
        out.copy_(tmp)
