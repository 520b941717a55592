"""The Python face of the kernels: argument checks, the torch ops, their fake implementations and
the autograd formula.

torch is imported inside functions only. The forward ops live in the built library
(``TORCH_LIBRARY(sessionkit, ...)`` in csrc/flash_api.cpp); :func:`load_extension` builds it when
needed, loads it, registers the fake (meta) implementations that ``torch.compile`` and ``opcheck``
use, and attaches the backward of :mod:`sessionkit.kernels.backward`.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import threading

SUPPORTED_DTYPES = ("float16", "bfloat16")  # torch dtype names, without the "torch." prefix
CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")
DEVICE_TYPES = ("cuda",)  # devices the ops have kernels for

_INSTANCE = re.compile(r"flash_fwd_(?P<family>[a-z0-9]+)_(?:fp16|bf16)_hdim(?P<dim>[0-9]+)_")


_HEAD_DIMS: dict[str, tuple[int, ...]] | None = None  # read once (a plain global: torch.compile
# reads it as a constant, where it could not trace the file listing)


def head_dims_by_family() -> dict[str, tuple[int, ...]]:
    """The head dims each kernel family has kernels for, read from the shipped instantiation files
    (``csrc/instantiations/flash_fwd_<family>_<dtype>_hdim<D>_<mask>.cu``), e.g.
    ``{"sm80": (64, 128), "sm90": (64, 96, 128, 256)}``. csrc/flash_api.cpp holds the same table."""
    global _HEAD_DIMS
    if _HEAD_DIMS is None:
        from .build import csrc_dir, kernel_names

        found: dict[str, set[int]] = {}
        for name in kernel_names(csrc_dir()):
            match = _INSTANCE.match(name)
            if match:
                found.setdefault(match["family"], set()).add(int(match["dim"]))
        _HEAD_DIMS = {family: tuple(sorted(dims)) for family, dims in sorted(found.items())}
    return _HEAD_DIMS


def supported_head_dims() -> tuple[int, ...]:
    """Head dims some family runs; the op then accepts those of the family on q's device."""
    return tuple(sorted(set().union(*head_dims_by_family().values())))


def __getattr__(name: str):
    if name == "SUPPORTED_HEAD_DIMS":  # kept for callers of the earlier constant
        return supported_head_dims()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_FAKES_LOCK = threading.Lock()
_FAKES_REGISTERED = False  # fakes and autograd are attached: the ops are ready to call and trace


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
    """Load the ops on first use. Under ``torch.compile`` nothing is built or loaded (that cannot
    be traced): the first eager call, or :func:`load_extension`, must come before."""
    if _FAKES_REGISTERED:
        return
    import torch

    if torch.compiler.is_compiling():
        raise RuntimeError("flash_attention: the sessionkit kernels are not loaded yet; call "
                           "sessionkit.kernels.load_extension() (or the op once, eagerly) before "
                           "torch.compile or torch.export traces a model that uses it")
    load_extension()


def _register_fakes() -> None:
    global _FAKES_REGISTERED
    import torch

    with _FAKES_LOCK:
        if _FAKES_REGISTERED:
            return

        register_fakes_and_autograd()
        _FAKES_REGISTERED = True


def register_fakes_and_autograd() -> None:
    """The fake implementations of the forward ops and their autograd formula.

    The fakes give O the shape of q (B, H_q, Sq, D) in q's dtype and the LSE (B, H_q, Sq) float32,
    contiguous like the kernel's outputs, for every head count, causal alignment and length.
    Called once, after the library that defines the ops is loaded.
    """
    import torch

    from . import backward

    head_dims_by_family()  # read now, so that a traced call finds it read

    @torch.library.register_fake("sessionkit::flash_attn_fwd")
    def _fwd_fake(q, k, v, causal, scale, causal_bottom_right=False):
        batch, heads, seq_q, head_dim = q.shape
        out = q.new_empty((batch, heads, seq_q, head_dim))
        lse = q.new_empty((batch, heads, seq_q), dtype=torch.float32)
        return out, lse

    @torch.library.register_fake("sessionkit::flash_attn_fwd_out")
    def _fwd_out_fake(q, k, v, out, lse, causal, scale, causal_bottom_right=False):
        return None

    backward.register_autograd("sessionkit::flash_attn_fwd")


# --------------------------------------------------------------------------------------------
# Checks (before the op, so that bad input gets a plain Python error)

def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def check_inputs(q, k, v, *, enable_gqa: bool = False, fn: str = "flash_attention",
                 require_cuda: bool = True) -> None:
    """Raise TypeError/ValueError naming the problem when (q, k, v) cannot go to the kernel.

    q: (B, H_q, Sq, D); k, v: (B, H_kv, Sk, D). H_kv may differ from H_q only with ``enable_gqa``,
    and H_q must then be a multiple of H_kv (SDPA's rule). Device checks come last, so that every
    shape and dtype rule can be exercised on CPU tensors; ``require_cuda=False`` leaves out the
    check that they are CUDA tensors (:func:`check_cuda`), for a caller with more arguments to
    check first. ``fn`` begins each message.
    """
    import torch

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} must be 4-D (batch, heads, seq_len, head_dim); "
                             f"got shape {_shape(t)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if _dtype_name(t.dtype) not in SUPPORTED_DTYPES:
            raise TypeError(f"{fn}: {name} has dtype {_dtype_name(t.dtype)}; supported "
                            f"dtypes are {', '.join(SUPPORTED_DTYPES)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{fn}: q, k and v must share one dtype; got "
                        f"{_dtype_name(q.dtype)}, {_dtype_name(k.dtype)}, {_dtype_name(v.dtype)}")
    head_dim = q.shape[3]
    if head_dim not in supported_head_dims():
        by_family = "; ".join(f"{family}: {', '.join(map(str, dims))}"
                              for family, dims in head_dims_by_family().items())
        raise ValueError(f"{fn}: head_dim {int(head_dim)} is not supported; supported "
                         f"head dims are {', '.join(map(str, supported_head_dims()))} "
                         f"(per kernel family: {by_family})")
    if k.shape[3] != head_dim or v.shape[3] != head_dim:
        raise ValueError(f"{fn}: q, k and v must share head_dim; got shapes {_shape(q)}, "
                         f"{_shape(k)}, {_shape(v)}")
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(f"{fn}: batch sizes differ: q {_shape(q)}, k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"{fn}: k and v head counts differ: k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[1] != q.shape[1]:
        if not enable_gqa:
            raise ValueError(f"{fn}: head counts differ: q {_shape(q)}, k {_shape(k)}, "
                             f"v {_shape(v)}; pass enable_gqa=True for grouped-query attention")
        if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
            raise ValueError(f"{fn}: grouped-query attention needs the query heads "
                             f"({int(q.shape[1])}) to be a multiple of the key/value heads "
                             f"({int(k.shape[1])}); got q {_shape(q)}, k {_shape(k)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"{fn}: k and v sequence lengths differ: k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[2] == 0:
        raise ValueError(f"{fn}: k and v have no keys (seq_len_k == 0); softmax over no "
                         "keys is undefined")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            raise ValueError(f"{fn}: the last dimension of {name} must be contiguous "
                             f"(stride 1); got strides {tuple(t.stride())}; call .contiguous() first")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{fn}: q and {name} are on different devices "
                             f"({q.device} and {t.device})")
    if require_cuda:
        check_cuda(q, fn)


def check_cuda(q, fn: str = "flash_attention") -> None:
    """ValueError unless q (and so k and v, on q's device) is a CUDA tensor: there are no CPU or
    meta kernels."""
    if q.device.type not in DEVICE_TYPES:
        raise ValueError(f"{fn}: needs CUDA tensors; q, k and v are on {q.device}")


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


_FLOAT32_MAX = 3.4028234663852886e38  # the kernels take the scale as a float32


def resolve_scale(scale, head_dim: int, name: str = "flash_attention") -> float:
    """The softmax scale: 1/sqrt(head_dim) for None, else ``scale`` as a float. A Python int or
    float, a NumPy integer or floating scalar, or, under ``torch.compile`` with dynamic shapes, a
    symbolic float (one computed from q's shape, say), compared but not converted. TypeError for
    anything else (a bool, a tensor, a string, a Fraction); ValueError for NaN or a value a
    float32 cannot hold."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if _is_symbolic(scale):
        # Comparisons rather than math.isfinite, which torch.compile cannot trace on a symbolic
        # float (NaN fails both).
        if not -_FLOAT32_MAX <= scale <= _FLOAT32_MAX:
            raise ValueError(f"{name}: scale must be finite, got {scale}")
        return scale
    if not _real_scalar(scale):
        raise TypeError(f"{name}: scale must be a number or None, got {type(scale).__name__}")
    try:
        value = float(scale)
    except (OverflowError, ValueError):
        value = math.inf
    if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:  # NaN fails too
        raise ValueError(f"{name}: scale must be finite (a float32), got {_described(scale)}")
    return value


def _scalar_kind(value) -> str | None:
    """The dtype kind of a NumPy scalar (0-dim, with a dtype): "b", "i", "u", "f", ...; None for
    anything else."""
    if getattr(value, "ndim", None) != 0:
        return None
    return getattr(getattr(value, "dtype", None), "kind", None)


def _real_scalar(value) -> bool:
    """A Python int or float (not a bool), or a NumPy integer or floating scalar."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return _scalar_kind(value) in ("i", "u", "f") and isinstance(value, numbers.Real)


def _is_symbolic(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, (torch.SymFloat, torch.SymInt))


def _flag(value) -> bool | None:
    """A Python bool, a NumPy bool scalar, or the int 0 or 1 (Python or NumPy), as a bool; None
    for anything else."""
    if isinstance(value, bool):
        return value
    kind = _scalar_kind(value)
    if kind == "b":
        return bool(value)
    if (isinstance(value, int) or kind in ("i", "u")) and value in (0, 1):
        return bool(value)
    return None


def _described(value) -> str:
    """``value`` in a one-line message: the repr of a short plain value, else its type's name
    (a tensor is never printed)."""
    if isinstance(value, (str, numbers.Number)) or value is None:
        try:
            text = repr(value)
        except ValueError:  # an int past Python's digit limit for str()
            return f"an int of {value.bit_length()} bits"
        text = " ".join(text.split())
        return text if len(text) <= 40 else text[:37] + "..."
    return type(value).__name__


def _resolve_causal(causal, name: str = "flash_attention", position: str = "fourth") -> bool:
    """``causal`` as a bool (see :func:`_flag`); TypeError naming it otherwise. A None or a tensor
    (an SDPA ``attn_mask`` passed positionally) gets the hint that ``causal`` is the ``position``
    positional argument."""
    flag = _flag(causal)
    if flag is not None:
        return flag
    hint = (f"; its {position} positional argument is causal: it takes no attn_mask (SDPA's "
            "fourth), only causal=True or False"
            if causal is None or any(t.__name__ == "Tensor" for t in type(causal).__mro__) else "")
    raise TypeError(f"{name}: causal must be a bool, got {_described(causal)}{hint}")


def resolve_alignment(causal_alignment, name: str = "flash_attention") -> bool:
    """``"top_left"`` -> False, ``"bottom_right"`` -> True (the op's ``causal_bottom_right``)."""
    if not isinstance(causal_alignment, str) or causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(f"{name}: causal_alignment must be 'top_left' or 'bottom_right', "
                         f"got {_described(causal_alignment)}")
    return causal_alignment == "bottom_right"


def _resolve_flag(value, what: str, name: str = "flash_attention") -> bool:
    """``value`` as a bool (see :func:`_flag`); TypeError naming ``what`` otherwise."""
    flag = _flag(value)
    if flag is None:
        raise TypeError(f"{name}: {what} must be a bool, got {_described(value)}")
    return flag


def _resolve_gqa(enable_gqa, name: str = "flash_attention") -> bool:
    return _resolve_flag(enable_gqa, "enable_gqa", name)


def _refuse_tracing_before_load(name: str) -> None:
    """Under ``torch.compile`` before the kernels are loaded, say so first: the checks that follow
    read the kernel list from the package's files, which Dynamo cannot trace."""
    if _FAKES_REGISTERED:
        return
    import torch

    if torch.compiler.is_compiling():
        raise RuntimeError(f"{name}: the sessionkit kernels are not loaded yet; call "
                           "sessionkit.kernels.load_extension() (or the op once, eagerly) before "
                           "torch.compile or torch.export traces a model that uses it")


def _out_ready(out) -> bool:
    if out.stride(3) != 1 or out.storage_offset() % 2 != 0:
        return False
    return all(out.shape[i] <= 1 or out.stride(i) % 2 == 0 for i in range(3))


# --------------------------------------------------------------------------------------------
# Public functions

def flash_attention(q, k, v, causal: bool = False, scale: float | None = None,
                    return_lse: bool = False, *, causal_alignment: str = "top_left",
                    enable_gqa: bool = False):
    """Softmax attention like ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: (B, H_q, Sq, D) float16 or bfloat16 on a CUDA device.
        k, v: (B, H_kv, Sk, D), q's dtype and device. Any strides whose last dimension is
            contiguous: a (B, S, H, D) tensor passed as ``.transpose(1, 2)`` is read in place.
        causal: mask key j for query row i when j lies after the row (see ``causal_alignment``).
        scale: multiplies q @ k^T before the softmax; default 1/sqrt(D).
        return_lse: also return the LSE.
        causal_alignment: where the causal diagonal sits when Sq != Sk (equal lengths: the same).
            ``"top_left"`` (the default, SDPA's ``is_causal=True``): row i sees keys j <= i.
            ``"bottom_right"`` (FlashAttention 2+, SDPA's ``causal_lower_right``, decoding with a
            KV cache): row i sees keys j <= i + Sk - Sq, so the last query sees every key.
            Sq=3, Sk=5 (x: seen)::

                top_left        bottom_right
                x . . . .       x x x . .
                x x . . .       x x x x .
                x x x . .       x x x x x

            With bottom_right and Sq > Sk the first Sq - Sk rows see no key: their output is 0
            and their LSE is -inf (never NaN), as in FlashAttention. SDPA returns NaN there.
        enable_gqa: allow grouped-query and multi-query attention (SDPA's argument): H_q a
            multiple of H_kv; query head h reads key/value head h // (H_q // H_kv), without a
            copy of k or v.

    Returns:
        O (B, H_q, Sq, D) in q's dtype; with ``return_lse`` the tuple (O, LSE), LSE float32
        (B, H_q, Sq), the natural-log logsumexp of the scaled, masked scores of each row.

    Gradients: O and the LSE are differentiable in q, k and v. There is no backward kernel of our
    own yet: the backward is the FlashAttention-2 backward written in PyTorch ops
    (:mod:`sessionkit.kernels.backward`, op ``sessionkit::flash_attn_bwd``), fp32 math on blocks of
    query rows, reusing the saved LSE instead of recomputing the softmax. It covers GQA, both
    alignments and Sq != Sk; it is much slower than a fused backward.

    ``torch.compile(fullgraph=True)`` traces this function (static and dynamic shapes) once the
    kernels are loaded, which the first eager call or :func:`load_extension` does.

    Repeated calls with the same inputs on the same GPU give the same bits. On Hopper, non-causal
    calls whose last round of tiles is split across the SMs take up to about 50 MB of scratch
    memory from PyTorch's caching allocator for the split's partial results; where that memory
    cannot be had the call runs unsplit, equally correct but not bitwise the same.

    Raises:
        TypeError: a non-tensor, an unsupported or mixed dtype, a ``causal``, ``enable_gqa`` or
            ``return_lse`` that is not a bool (a NumPy bool and the ints 0 and 1 count as one;
            there is no ``attn_mask``: the fourth positional argument is ``causal``), a
            ``scale`` that is not a number.
        ValueError: a bad shape, head dim, head ratio, alignment or ``scale`` (NaN or beyond
            float32; the message names it), or a device that is not CUDA (there are no CPU or
            meta kernels), checked last so that every other rule can be tried on CPU tensors.
        RuntimeError: from the op, a head dim the family on q's device lacks (D=96 and 256 off
            Hopper) or a batch or head count over 65535; under ``torch.compile`` before the
            kernels are loaded. With ``fullgraph=True``, Dynamo reports an error raised here as
            ``Unsupported: Observed exception``, the message in its debug context.
    """
    import torch

    _refuse_tracing_before_load("flash_attention")
    causal = _resolve_causal(causal)
    bottom_right = resolve_alignment(causal_alignment)
    check_inputs(q, k, v, enable_gqa=_resolve_gqa(enable_gqa), require_cuda=False)
    scale = resolve_scale(scale, int(q.shape[3]))
    return_lse = _resolve_flag(return_lse, "return_lse")
    check_cuda(q)  # last, so that every other rule can be exercised on CPU tensors
    _ensure_loaded()
    # Inputs whose rows are not 16-byte aligned are copied once by the op itself.
    out, lse = torch.ops.sessionkit.flash_attn_fwd(q, k, v, causal, scale, bottom_right)
    return (out, lse) if return_lse else out


def flash_attention_into(q, k, v, out, lse, causal: bool = False, scale: float | None = None, *,
                         causal_alignment: str = "top_left", enable_gqa: bool = False) -> None:
    """Like :func:`flash_attention`, writing O into ``out`` (B, H_q, Sq, D) and the LSE into ``lse``
    (B, H_q, Sq, float32), both allocated by the caller.

    Not differentiable: with grad mode on and an input that requires grad it raises a
    RuntimeError (use :func:`flash_attention`).
    """
    import torch

    name = "flash_attention_into"
    _refuse_tracing_before_load(name)
    causal = _resolve_causal(causal, name, position="sixth")
    bottom_right = resolve_alignment(causal_alignment, name)
    check_inputs(q, k, v, enable_gqa=_resolve_gqa(enable_gqa, name), fn=name, require_cuda=False)
    check_outputs(q, out, lse)
    scale = resolve_scale(scale, int(q.shape[3]), name)
    check_cuda(q, name)  # last, so that every other rule can be exercised on CPU tensors
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("flash_attention_into: writes into caller buffers and has no gradient; "
                           "use flash_attention for inputs that require grad")
    _ensure_loaded()
    if _out_ready(out):
        torch.ops.sessionkit.flash_attn_fwd_out(q, k, v, out, lse, causal, scale, bottom_right)
    else:
        tmp = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        torch.ops.sessionkit.flash_attn_fwd_out(q, k, v, tmp, lse, causal, scale, bottom_right)
        out.copy_(tmp)
