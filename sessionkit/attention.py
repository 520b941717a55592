"""The attention vocabulary: one config type, its text form and parser, one dtype table, the FLOP and
byte counts, and the registry of implementations with their launchers.

The bench, correctness and profile steps, ``sessionkit compare``, the reports and the scripts in
``benchmarks/`` all speak it:

* :class:`AttentionConfig`: batch size, query heads, key/value heads, query and key sequence
  lengths, head dim, dtype, causal and the causal mask's alignment; its ``label`` for people, its
  ``spec`` for ``--config``, its forward ``flops`` and least ``min_bytes`` of memory traffic;
* :func:`parse_config`: the ``B,H,Sq,Sk,D,dtype,causal[,H_kv]`` text of ``--config`` and grids,
  with a one-line :class:`~sessionkit.errors.UsageError` for anything else;
* :data:`DTYPES`: each dtype's short name, torch name, aliases, element size and output tolerance;
* :data:`REGISTRY`: our kernel and PyTorch's SDPA (its own backend choice, then each backend forced),
  the values of ``bench_results.impl``. An SDPA backend is added here.

Nothing here imports torch at module level: a launcher imports it when it is made.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from .errors import SessionkitError, UsageError, first_line

# --------------------------------------------------------------------------------------------------
# Dtypes


@dataclass(frozen=True)
class DType:
    """One element type of attention inputs and outputs."""

    name: str  # the short name stored in the database and used in --config: "bf16"
    torch_name: str  # the attribute of the torch module: torch.bfloat16
    itemsize: int  # bytes per element
    aliases: tuple[str, ...]  # other spellings parse_dtype accepts
    output_tolerance: float  # max |a - b| between two attention outputs of unit-normal inputs


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("fp16", "float16", 2, ("float16", "half"), 4e-3),
    DType("bf16", "bfloat16", 2, ("bfloat16",), 3e-2),
    DType("fp32", "float32", 4, ("float32", "float"), 1e-4),
)}
_DTYPE_SPELLINGS = {spelling: d.name for d in DTYPES.values() for spelling in (d.name, *d.aliases)}
_DTYPE_NAMES = f"{', '.join(list(DTYPES)[:-1])} or {list(DTYPES)[-1]}"
_DTYPE_HINT = f"use {_DTYPE_NAMES}"


def parse_dtype(value) -> str:
    """``"bfloat16"`` -> ``"bf16"``: a dtype's short name from any of its spellings (UsageError)."""
    name = _DTYPE_SPELLINGS.get(str(value).strip().lower())
    if name is None:
        raise UsageError(f"unknown dtype {value!r} ({_DTYPE_HINT})")
    return name


def torch_dtype(name: str):
    """The torch dtype of a short name (``"bf16"`` -> ``torch.bfloat16``); imports torch."""
    import torch

    return getattr(torch, DTYPES[name].torch_name)


# --------------------------------------------------------------------------------------------------
# The causal mask

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")
_TOP_LEFT = {"1", "true", "yes", "causal", "c", "tl", "top_left"}
_BOTTOM_RIGHT = {"br", "bottom_right", "bottom-right", "causal_br"}
_FULL = {"0", "false", "no", "noncausal", "non-causal", "full", "nc"}


def parse_causal(value) -> tuple[bool, str]:
    """``(causal, causal_alignment)`` from 1/0, true/false, causal/full (top-left when causal) or
    br/bottom_right; a bool is taken as it is (top-left). UsageError on anything else."""
    if isinstance(value, bool):
        return value, "top_left"
    text = str(value).strip().lower()
    if text in _TOP_LEFT:
        return True, "top_left"
    if text in _BOTTOM_RIGHT:
        return True, "bottom_right"
    if text in _FULL:
        return False, "top_left"
    raise UsageError(f"bad causal value {value!r} (use 1/0, true/false, causal/full, or br for a "
                     "bottom-right aligned causal mask)")


def attended_pairs(seq_len_q: int, seq_len_k: int, causal: bool = False,
                   causal_alignment: str = "top_left") -> int:
    """(query, key) pairs the mask keeps: all ``Sq * Sk`` without ``causal``.

    Causal, query row ``i`` keeps ``clamp(i + offset + 1, 0, Sk)`` keys, where ``offset`` is 0 for
    the top-left alignment (row ``i`` sees keys ``0..i``: PyTorch's ``is_causal=True``, ``tril`` of
    the Sq x Sk scores) and ``Sk - Sq`` for the bottom-right one (FlashAttention 2+, a KV cache: the
    last query sees every key; with Sq > Sk the first ``Sq - Sk`` rows see none).
    Raises ValueError for negative lengths.
    """
    if seq_len_q < 0 or seq_len_k < 0:
        raise ValueError("sequence lengths must be >= 0")
    if not causal:
        return seq_len_q * seq_len_k
    offset = seq_len_k - seq_len_q if causal_alignment == "bottom_right" else 0

    def kept(row: int) -> int:  # keys row ``row`` keeps before clamping
        return row + offset + 1

    none_before = min(max(-offset, 0), seq_len_q)  # rows 0..none_before-1 keep no key
    all_from = min(max(seq_len_k - offset - 1, none_before), seq_len_q)  # these rows keep all Sk
    partial = all_from - none_before  # rows in between keep kept(row) keys, 1 more per row
    between = (kept(none_before) + kept(all_from - 1)) * partial // 2 if partial else 0
    return between + (seq_len_q - all_from) * seq_len_k


def tflops(flops: float, latency_ms: float | None) -> float | None:
    """TFLOP/s of ``flops`` done in ``latency_ms`` milliseconds; None without a positive latency."""
    if not latency_ms or latency_ms <= 0:
        return None
    return flops / (latency_ms * 1e-3) / 1e12


# --------------------------------------------------------------------------------------------------
# The config

CONFIG_FORMAT = "B,H,Sq,Sk,D,dtype,causal[,H_kv]"
CONFIG_EXAMPLES = "4,16,4096,4096,128,bf16,1 or 8,32,1,32768,128,bf16,br,8"
# What the fields of CONFIG_FORMAT take, for --config's help text.
CONFIG_FIELDS = (f"H the query heads, dtype {_DTYPE_NAMES}, causal 1 (top-left; also true, yes, "
                 "tl), 0 (also false, no, full) or br (bottom-right), H_kv the key/value heads "
                 "(default H)")
MAX_SIZE = 2 ** 31 - 1  # every size of a config fits a signed 32-bit index


class InvalidConfig(UsageError):
    """A config whose values cannot describe an attention call; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(f"bad config: {reason}")
        self.reason = reason


_SIZES = ("batch_size", "num_heads", "seq_len_q", "seq_len_k", "head_dim", "num_heads_k")


@dataclass(frozen=True, order=True)
class AttentionConfig:
    """One attention forward call: q (B, H, Sq, D), k and v (B, H_kv, Sk, D), all of one dtype.

    ``num_heads_k`` (H_kv) divides ``num_heads``; 0 means equal (no grouped-query attention).
    ``causal_alignment`` is ``top_left`` or ``bottom_right`` (see :func:`attended_pairs`); it is
    ``top_left`` whenever ``causal`` is false. Bad values raise :class:`InvalidConfig`. The field
    names are the columns of ``bench_results`` and ``correctness_results``.
    """

    batch_size: int
    num_heads: int
    seq_len_q: int
    seq_len_k: int
    head_dim: int
    dtype: str
    causal: bool
    num_heads_k: int = 0
    causal_alignment: str = "top_left"

    def __post_init__(self):
        if self.num_heads_k == 0:
            object.__setattr__(self, "num_heads_k", self.num_heads)
        for key in _SIZES:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE:
                raise InvalidConfig(f"{key} must be a positive integer up to {MAX_SIZE}, got {value!r}")
        if self.dtype not in DTYPES:
            raise InvalidConfig(f"dtype {self.dtype!r} ({_DTYPE_HINT})")
        if not isinstance(self.causal, bool):
            raise InvalidConfig(f"causal must be True or False, got {self.causal!r}")
        if self.num_heads % self.num_heads_k:
            raise InvalidConfig(f"H {self.num_heads} is not a multiple of H_kv {self.num_heads_k}")
        if self.causal_alignment not in CAUSAL_ALIGNMENTS:
            raise InvalidConfig(f"causal alignment {self.causal_alignment!r} (use "
                                f"{' or '.join(CAUSAL_ALIGNMENTS)})")
        if not self.causal:
            object.__setattr__(self, "causal_alignment", "top_left")

    @classmethod
    def from_row(cls, row) -> "AttentionConfig":
        """The config of a ``bench_results`` or ``correctness_results`` row (a mapping); rows
        stored before grouped-query heads and alignments were recorded read as H_kv = H, top-left."""
        return cls(row["batch_size"], row["num_heads"], row["seq_len_q"], row["seq_len_k"],
                   row["head_dim"], row["dtype"], bool(row["causal"]), row.get("num_heads_k") or 0,
                   row.get("causal_alignment") or "top_left")

    @property
    def bottom_right(self) -> bool:
        return self.causal and self.causal_alignment == "bottom_right"

    @property
    def gqa(self) -> bool:
        """Grouped-query (or multi-query) attention: fewer key/value heads than query heads."""
        return self.num_heads_k != self.num_heads

    @property
    def mask(self) -> str:
        """``full``, ``causal`` (top-left) or ``causal-br`` (bottom-right)."""
        if not self.causal:
            return "full"
        return "causal-br" if self.bottom_right else "causal"

    @property
    def label(self) -> str:
        """For people: ``bf16 B4 H16 S4096 D128 causal``, ``Sq1 Sk32768`` when the lengths
        differ, ``H32/8kv`` with grouped-query heads."""
        seq = (f"S{self.seq_len_q}" if self.seq_len_q == self.seq_len_k
               else f"Sq{self.seq_len_q} Sk{self.seq_len_k}")
        return f"{self.dtype} B{self.batch_size} {self.heads} {seq} D{self.head_dim} {self.mask}"

    @property
    def heads(self) -> str:
        """``H16``, or ``H32/8kv`` with grouped-query heads."""
        return f"H{self.num_heads}" + (f"/{self.num_heads_k}kv" if self.gqa else "")

    @property
    def spec(self) -> str:
        """The ``--config`` text (:data:`CONFIG_FORMAT`): ``parse_config(c.spec) == c``."""
        causal = "br" if self.bottom_right else str(int(self.causal))
        tail = f",{self.num_heads_k}" if self.gqa else ""
        return (f"{self.batch_size},{self.num_heads},{self.seq_len_q},{self.seq_len_k},"
                f"{self.head_dim},{self.dtype},{causal}{tail}")

    @property
    def scale(self) -> float:
        """The softmax scale SDPA and our kernel use by default: 1 / sqrt(D)."""
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def pairs(self) -> int:
        """(query, key) pairs the mask keeps, per (batch, head)."""
        return attended_pairs(self.seq_len_q, self.seq_len_k, self.causal, self.causal_alignment)

    @property
    def flops(self) -> int:
        """Forward FLOPs: two matmuls (Q K^T and P V) of 2 * D FLOPs each per kept pair, over every
        query head. Softmax and scaling are not counted, the usual convention for attention TFLOP/s."""
        return 4 * self.batch_size * self.num_heads * self.head_dim * self.pairs

    @property
    def input_bytes(self) -> int:
        """Bytes of q, k and v."""
        elements = self.batch_size * self.head_dim * (self.num_heads * self.seq_len_q
                                                      + 2 * self.num_heads_k * self.seq_len_k)
        return elements * DTYPES[self.dtype].itemsize

    @property
    def min_bytes(self) -> int:
        """The least DRAM traffic of the call: q, k and v read once and the output written once."""
        output = self.batch_size * self.num_heads * self.seq_len_q * self.head_dim
        return self.input_bytes + output * DTYPES[self.dtype].itemsize

    def as_row(self) -> dict:
        """The config's columns of a ``bench_results`` row (``causal`` as 0/1)."""
        return {"dtype": self.dtype, "batch_size": self.batch_size, "num_heads": self.num_heads,
                "seq_len_q": self.seq_len_q, "seq_len_k": self.seq_len_k,
                "head_dim": self.head_dim, "causal": int(self.causal),
                "num_heads_k": self.num_heads_k, "causal_alignment": self.causal_alignment}


def positive_int(value, what: str) -> int:
    """A size written as decimal digits (or an int), 1..:data:`MAX_SIZE`; UsageError naming ``what``."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,10}", text) or \
            not 1 <= int(text) <= MAX_SIZE:
        raise UsageError(f"{what} must be a positive integer up to {MAX_SIZE}, got {value!r}")
    return int(text)


def parse_config(text: str) -> AttentionConfig:
    """``B,H,Sq,Sk,D,dtype,causal[,H_kv]`` -> :class:`AttentionConfig`.

    dtype: any spelling of :data:`DTYPES` (``bf16``, ``bfloat16``...); causal: see
    :func:`parse_causal` (``br`` for bottom-right); H_kv defaults to H. Spaces around fields are
    ignored. Anything else raises a one-line :class:`~sessionkit.errors.UsageError` that quotes the
    text.
    """
    parts = [p.strip() for p in str(text).split(",")]
    where = f"bad config {str(text)!r}"
    if len(parts) not in (7, 8):
        raise UsageError(f"{where}: expected {CONFIG_FORMAT} (e.g. {CONFIG_EXAMPLES})")
    try:
        sizes = [positive_int(part, name) for name, part in zip(_SIZES, parts[:5])]
        heads_k = positive_int(parts[7], "H_kv") if len(parts) == 8 else 0
        dtype = parse_dtype(parts[5])
        causal, alignment = parse_causal(parts[6])
        return AttentionConfig(*sizes, dtype, causal, heads_k, alignment)
    except InvalidConfig as exc:
        raise UsageError(f"{where}: {exc.reason}") from None
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Implementations

Launcher = Callable  # launch(q, k, v) -> the output tensor (B, H, Sq, D)


class ImplementationUnavailable(SessionkitError):
    """An implementation cannot run here (our kernel not built or not importable, say)."""


@dataclass(frozen=True)
class Implementation:
    """One attention implementation that the bench times and the profile step can profile."""

    name: str  # the value of bench_results.impl and of --impl / --kernel
    short: str  # column header of the bench step's text table (six characters at most)
    description: str
    sdpa_backend: str | None = None  # the torch.nn.attention.SDPBackend member forced, if any
    reference: bool = False  # the others' outputs are compared with this one's
    max_score_bytes: int | None = None  # runs only when B * H * Sq * Sk fp32 scores fit in this

    @property
    def is_sdpa(self) -> bool:
        return self.name != "ours"

    def fits(self, config: AttentionConfig) -> bool:
        """Whether the implementation is run on ``config`` at all (the math backend materialises the
        fp32 scores, so it is left out of large configs)."""
        if self.max_score_bytes is None:
            return True
        scores = config.batch_size * config.num_heads * config.seq_len_q * config.seq_len_k
        return scores * 4 <= self.max_score_bytes

    def launcher(self, config: AttentionConfig) -> Launcher:
        """``launch(q, k, v) -> out`` for tensors of ``config``'s shapes and dtype, with its mask,
        grouped-query heads and the default scale. Imports torch (and for ``ours``, the kernel;
        :class:`ImplementationUnavailable` when it cannot be imported)."""
        if self.is_sdpa:
            return _sdpa_launcher(config, self.sdpa_backend)
        return _ours_launcher(config)


def _sdpa_launcher(config: AttentionConfig, backend: str | None) -> Launcher:
    """``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal`` (top-left) or
    ``causal_lower_right`` (bottom-right), ``enable_gqa`` for grouped-query heads, and the backend
    forced with ``sdpa_kernel`` when one is named."""
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    causal = config.causal and not config.bottom_right
    gqa = config.gqa
    mask = None
    if config.bottom_right:
        from torch.nn.attention.bias import causal_lower_right

        with warnings.catch_warnings():  # Sq > Sk: rows that see no key, NaN in SDPA's output
            warnings.simplefilter("ignore", UserWarning)
            mask = causal_lower_right(config.seq_len_q, config.seq_len_k)

    def default(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=gqa)

    if backend is None:
        return default
    which = getattr(SDPBackend, backend)

    def forced(q, k, v):
        with sdpa_kernel(which):
            return default(q, k, v)

    return forced


def _ours_launcher(config: AttentionConfig) -> Launcher:
    """``sessionkit.kernels.flash_attention`` with the config's mask alignment and heads."""
    try:
        from .kernels import flash_attention
    except Exception as exc:  # a broken or missing kernel package: say so in one line
        raise ImplementationUnavailable(
            f"sessionkit.kernels is not available ({type(exc).__name__}: "
            f"{first_line(exc, limit=160)})") from None
    variant = {"causal": config.causal, "scale": config.scale,
               "causal_alignment": config.causal_alignment, "enable_gqa": config.gqa}

    def launch(q, k, v):
        return flash_attention(q, k, v, **variant)

    return launch


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation("ours", "ours", "this repository's FlashAttention forward "
                   "(sessionkit.kernels.flash_attention)"),
    Implementation("sdpa", "sdpa", "PyTorch scaled_dot_product_attention, its own backend choice",
                   reference=True),
    Implementation("sdpa_flash", "flash", "SDPA forced to its FlashAttention-2 backend",
                   "FLASH_ATTENTION"),
    Implementation("sdpa_cudnn", "cudnn", "SDPA forced to its cuDNN backend", "CUDNN_ATTENTION"),
    Implementation("sdpa_efficient", "effic", "SDPA forced to its memory-efficient backend",
                   "EFFICIENT_ATTENTION"),
    Implementation("sdpa_math", "math", "SDPA forced to its math backend (fp32 scores in memory; "
                   "only configs whose scores fit in 256 MiB)", "MATH", max_score_bytes=1 << 28),
)
#: Every implementation by name, in table order: ours, SDPA's own choice, then each SDPA backend.
REGISTRY: dict[str, Implementation] = {impl.name: impl for impl in IMPLEMENTATIONS}
#: The values of ``bench_results.impl``.
IMPLS: tuple[str, ...] = tuple(REGISTRY)
#: SDPA, its own choice and each backend forced.
SDPA_IMPLS: tuple[str, ...] = tuple(impl.name for impl in IMPLEMENTATIONS if impl.is_sdpa)


def implementation(name: str) -> Implementation:
    """The registered implementation called ``name``; UsageError naming the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}") from None
