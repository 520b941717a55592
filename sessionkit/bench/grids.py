"""Benchmark configurations and named grids.

A config is ``B,H,Sq,Sk,D,dtype,causal[,H_kv]``, e.g. ``4,16,4096,4096,128,bf16,causal``; causal
is 1/0 (top-left, SDPA's ``is_causal``) or ``br``/``bottom_right``; H_kv (default H) makes it
grouped-query attention. Built-in grids:

* ``standard``: fp16/bf16 x D64/128 x causal/non-causal x S in 512..16k, with B*S = 16384 tokens
  and H*D = 2048 (48 configs);
* ``seeds``: B=1, H=8, D=64, fp16, S in 32..512 (tiny kernels, launch-latency bound);
* ``quick``: 8 configs from 0.01 ms to a few ms;
* ``gqa``: Llama-style grouped-query attention, H_q=32, H_kv=8, D=128, bf16, S in 1k..16k with
  B*S = 32768 tokens, causal and not;
* ``decode``: B=8, H_q=32, H_kv=8, D=128, bf16, Sq in {1, 4, 16} against Sk in 1k..128k,
  bottom-right causal (a KV cache);
* ``headdims``: D=96 and D=256 rows, fp16/bf16, causal and not, S in {1k, 4k}, H*D = 2048.

More grids can be named in the nearest pyproject.toml::

    [tool.sessionkit.grids]
    mine = ["1,16,8192,8192,128,bf16,1", "2,16,4096,4096,128,bf16,0"]

    [tool.sessionkit.grids.long]      # every combination of the lists
    dtype = ["bf16"]
    head_dim = [128]
    seq_len = [8192, 16384]           # or seq_len_q / seq_len_k
    tokens = 16384                    # batch_size = tokens // seq_len (or give batch_size)
    hidden = 2048                     # num_heads = hidden // head_dim (or give num_heads)
    causal = [true, false]
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .flops import attention_flops

DTYPES = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16",
          "bfloat16": "bf16", "fp32": "fp32", "float32": "fp32", "float": "fp32"}
_TRUE = {"1", "true", "yes", "causal", "c", "tl", "top_left"}
_BOTTOM_RIGHT = {"br", "bottom_right", "bottom-right", "causal_br"}
_FALSE = {"0", "false", "no", "noncausal", "non-causal", "full", "nc"}


@dataclass(frozen=True, order=True)
class BenchConfig:
    batch_size: int
    num_heads: int
    seq_len_q: int
    seq_len_k: int
    head_dim: int
    dtype: str
    causal: bool
    num_heads_k: int = 0  # key/value heads (grouped-query attention); 0: as num_heads
    causal_alignment: str = "top_left"  # or "bottom_right"; "top_left" when not causal

    def __post_init__(self):
        if self.num_heads_k == 0:
            object.__setattr__(self, "num_heads_k", self.num_heads)
        for key in ("batch_size", "num_heads", "seq_len_q", "seq_len_k", "head_dim",
                    "num_heads_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"bad config: {key} must be a positive integer, got {value!r}")
        if self.dtype not in ("fp16", "bf16", "fp32"):
            raise UsageError(f"bad config: dtype {self.dtype!r} (use fp16, bf16 or fp32)")
        if self.num_heads % self.num_heads_k:
            raise UsageError(f"bad config: H {self.num_heads} is not a multiple of H_kv "
                             f"{self.num_heads_k}")
        if self.causal_alignment not in ("top_left", "bottom_right"):
            raise UsageError(f"bad config: causal alignment {self.causal_alignment!r}")
        if not self.causal:
            object.__setattr__(self, "causal_alignment", "top_left")

    @property
    def bottom_right(self) -> bool:
        return self.causal and self.causal_alignment == "bottom_right"

    @property
    def gqa(self) -> bool:
        return self.num_heads_k != self.num_heads

    @property
    def flops(self) -> int:
        return attention_flops(self.batch_size, self.num_heads, self.seq_len_q, self.seq_len_k,
                               self.head_dim, self.causal, bottom_right=self.bottom_right)

    @property
    def label(self) -> str:
        seq = (f"S{self.seq_len_q}" if self.seq_len_q == self.seq_len_k
               else f"Sq{self.seq_len_q} Sk{self.seq_len_k}")
        mask = ("causal-br" if self.bottom_right else "causal") if self.causal else "full"
        heads = f"H{self.num_heads}" + (f"/{self.num_heads_k}kv" if self.gqa else "")
        return f"{self.dtype} B{self.batch_size} {heads} {seq} D{self.head_dim} {mask}"

    @property
    def spec(self) -> str:
        """The ``--config`` text for this config."""
        causal = "br" if self.bottom_right else str(int(self.causal))
        tail = f",{self.num_heads_k}" if self.gqa else ""
        return (f"{self.batch_size},{self.num_heads},{self.seq_len_q},{self.seq_len_k},"
                f"{self.head_dim},{self.dtype},{causal}{tail}")

    def key(self) -> tuple:
        return (self.dtype, self.batch_size, self.num_heads, self.seq_len_q, self.seq_len_k,
                self.head_dim, int(self.causal), self.num_heads_k, self.causal_alignment)

    def as_row(self) -> dict:
        return {"dtype": self.dtype, "batch_size": self.batch_size, "num_heads": self.num_heads,
                "seq_len_q": self.seq_len_q, "seq_len_k": self.seq_len_k,
                "head_dim": self.head_dim, "causal": int(self.causal),
                "num_heads_k": self.num_heads_k, "causal_alignment": self.causal_alignment}


def parse_dtype(value) -> str:
    text = str(value).strip().lower()
    if text not in DTYPES:
        raise UsageError(f"unknown dtype {value!r} (use fp16, bf16 or fp32)")
    return DTYPES[text]


def parse_causal(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"bad causal value {value!r} (use 1/0, true/false, causal/full)")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"bad {what} {value!r}: need a positive integer")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"bad {what} {value!r}: need a positive integer") from None
    if number < 1:
        raise UsageError(f"bad {what} {value!r}: need a positive integer")
    return number


def parse_config(text: str) -> BenchConfig:
    """``B,H,Sq,Sk,D,dtype,causal[,H_kv]`` -> BenchConfig (UsageError with a one-line reason).

    causal: 1/0/true/false/causal/full (top-left when causal) or br/bottom_right.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (7, 8):
        raise UsageError(f"bad config {text!r}: expected B,H,Sq,Sk,D,dtype,causal[,H_kv] "
                         f"(e.g. 4,16,4096,4096,128,bf16,1 or 8,32,1,32768,128,bf16,br,8)")
    names = ("batch size", "number of heads", "seq_len_q", "seq_len_k", "head dim")
    b, h, sq, sk, d = (_positive_int(v, f"{n} in config {text!r}:") for v, n in zip(parts, names))
    heads_k = _positive_int(parts[7], f"H_kv in config {text!r}:") if len(parts) == 8 else h
    bottom_right = parts[6].lower() in _BOTTOM_RIGHT
    causal = True if bottom_right else parse_causal(parts[6])
    try:
        return BenchConfig(b, h, sq, sk, d, parse_dtype(parts[5]), causal, heads_k,
                           "bottom_right" if bottom_right else "top_left")
    except UsageError as exc:
        raise UsageError(f"{exc} in config {text!r}") from None


def _standard() -> list[BenchConfig]:
    out = []
    for dtype in ("fp16", "bf16"):
        for d in (64, 128):
            for causal in (False, True):
                for s in (512, 1024, 2048, 4096, 8192, 16384):
                    out.append(BenchConfig(16384 // s, 2048 // d, s, s, d, dtype, causal))
    return out


def _seeds() -> list[BenchConfig]:
    return [BenchConfig(1, 8, s, s, 64, "fp16", False) for s in (32, 64, 128, 256, 512)]


def _quick() -> list[BenchConfig]:
    return [
        BenchConfig(1, 8, 512, 512, 64, "fp16", False),  # tiny, launch-latency bound
        BenchConfig(16, 16, 1024, 1024, 128, "bf16", False),
        BenchConfig(8, 32, 2048, 2048, 64, "fp16", False),
        BenchConfig(8, 32, 2048, 2048, 64, "fp16", True),
        BenchConfig(4, 16, 4096, 4096, 128, "bf16", False),
        BenchConfig(4, 16, 4096, 4096, 128, "bf16", True),
        BenchConfig(2, 16, 2048, 4096, 128, "bf16", False),  # Sq != Sk
        BenchConfig(1, 16, 16384, 16384, 128, "bf16", True),
    ]


def _gqa() -> list[BenchConfig]:
    return [BenchConfig(32768 // s, 32, s, s, 128, "bf16", causal, 8)
            for causal in (False, True) for s in (1024, 2048, 4096, 8192, 16384)]


def _decode() -> list[BenchConfig]:
    return [BenchConfig(8, 32, sq, sk, 128, "bf16", True, 8, "bottom_right")
            for sq in (1, 4, 16) for sk in (1024, 4096, 16384, 32768, 131072)]


def _headdims() -> list[BenchConfig]:
    return [BenchConfig(16384 // s, 2048 // d, s, s, d, dtype, causal)
            for d in (96, 256) for dtype in ("fp16", "bf16") for causal in (False, True)
            for s in (1024, 4096)]


BUILTIN_GRIDS = {"standard": _standard, "seeds": _seeds, "quick": _quick, "gqa": _gqa,
                 "decode": _decode, "headdims": _headdims}

_TABLE_KEYS = {"batch_size", "num_heads", "seq_len", "seq_len_q", "seq_len_k", "head_dim", "dtype",
               "causal", "tokens", "hidden"}


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def grid_from_table(name: str, table: dict) -> list[BenchConfig]:
    """Every combination of a ``[tool.sessionkit.grids.NAME]`` table's lists."""
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_TABLE_KEYS))})")
    for key in ("head_dim", "dtype"):
        if key not in table:
            raise UsageError(f"missing {key!r}")
    if "seq_len" in table and ("seq_len_q" in table or "seq_len_k" in table):
        raise UsageError("give seq_len or seq_len_q/seq_len_k, not both")
    if "seq_len" not in table and not ("seq_len_q" in table and "seq_len_k" in table):
        raise UsageError("missing 'seq_len' (or both 'seq_len_q' and 'seq_len_k')")
    if ("batch_size" in table) == ("tokens" in table):
        raise UsageError("give exactly one of 'batch_size' and 'tokens'")
    if ("num_heads" in table) == ("hidden" in table):
        raise UsageError("give exactly one of 'num_heads' and 'hidden'")

    dtypes = [parse_dtype(v) for v in _as_list(table["dtype"])]
    dims = [_positive_int(v, "head_dim") for v in _as_list(table["head_dim"])]
    causals = [parse_causal(v) for v in _as_list(table.get("causal", False))]
    if "seq_len" in table:
        seqs = [(s, s) for s in (_positive_int(v, "seq_len") for v in _as_list(table["seq_len"]))]
    else:
        seqs = list(itertools.product(
            [_positive_int(v, "seq_len_q") for v in _as_list(table["seq_len_q"])],
            [_positive_int(v, "seq_len_k") for v in _as_list(table["seq_len_k"])]))
    out = []
    for dtype, d, causal, (sq, sk) in itertools.product(dtypes, dims, causals, seqs):
        if "tokens" in table:
            tokens = _positive_int(table["tokens"], "tokens")
            batches = [tokens // sq]
            if batches[0] < 1:
                raise UsageError(f"tokens {tokens} is smaller than seq_len {sq}")
        else:
            batches = [_positive_int(v, "batch_size") for v in _as_list(table["batch_size"])]
        if "hidden" in table:
            hidden = _positive_int(table["hidden"], "hidden")
            heads = [hidden // d]
            if heads[0] < 1 or hidden % d:
                raise UsageError(f"hidden {hidden} is not a multiple of head_dim {d}")
        else:
            heads = [_positive_int(v, "num_heads") for v in _as_list(table["num_heads"])]
        for b, h in itertools.product(batches, heads):
            out.append(BenchConfig(b, h, sq, sk, d, dtype, causal))
    return out


def parse_grid_entry(name: str, value) -> list[BenchConfig]:
    if isinstance(value, list):
        if not value:
            raise UsageError("an empty list")
        if not all(isinstance(v, str) for v in value):
            raise UsageError("a list must hold config strings 'B,H,Sq,Sk,D,dtype,causal'")
        return [parse_config(v) for v in value]
    if isinstance(value, dict):
        return grid_from_table(name, value)
    raise UsageError("must be a list of config strings or a table")


def load_project_grids(start: Path | None = None) -> dict[str, list[BenchConfig]]:
    """Grids from ``[tool.sessionkit.grids]`` of the nearest pyproject.toml."""
    from ..config import load_config

    cfg = load_config(start)
    path = cfg.path
    if path is None:
        return {}
    grids = cfg.raw.get("grids", {})
    if not isinstance(grids, dict):
        raise UsageError(f"[tool.sessionkit.grids] in {path} must be a table of grids")
    out = {}
    for name, value in grids.items():
        try:
            out[name] = parse_grid_entry(name, value)
        except UsageError as exc:
            raise UsageError(f"grid {name!r} in {path}: {exc}") from None
    return out


def grid_names(start: Path | None = None) -> list[str]:
    return sorted(set(BUILTIN_GRIDS) | set(load_project_grids(start)))


def load_grid(name: str, start: Path | None = None) -> list[BenchConfig]:
    """The configs of a grid: one from pyproject.toml first, else a built-in one."""
    project = load_project_grids(start)
    if name in project:
        return project[name]
    if name in BUILTIN_GRIDS:
        return BUILTIN_GRIDS[name]()
    known = ", ".join(sorted(set(BUILTIN_GRIDS) | set(project)))
    raise UsageError(f"no grid named {name!r}; known grids: {known}")


def select_configs(grid: str | None, configs=()) -> tuple[str, list[BenchConfig]]:
    """The configs of a bench run and its grid label.

    ``--config`` values alone make a ``custom`` grid; with ``--grid`` too they are added to that
    grid; with neither, the ``quick`` grid.
    """
    extra = [c if isinstance(c, BenchConfig) else parse_config(c) for c in configs or ()]
    if grid is None and extra:
        return "custom", list(dict.fromkeys(extra))
    name = grid or "quick"
    chosen = load_grid(name) + extra
    return (name if not extra else f"{name}+custom"), list(dict.fromkeys(chosen))
