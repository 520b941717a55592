"""Benchmark configurations and named grids.

A config is an :class:`~sessionkit.attention.AttentionConfig`, written ``B,H,Sq,Sk,D,dtype,causal[,H_kv]``
(:func:`~sessionkit.attention.parse_config`), e.g. ``4,16,4096,4096,128,bf16,causal``; causal is
1/0 (top-left, SDPA's ``is_causal``) or ``br``/``bottom_right``; H_kv (default H) makes it
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
import math
from pathlib import Path

from ..attention import AttentionConfig, parse_causal, parse_config, parse_dtype, positive_int
from ..errors import UsageError


def _standard() -> list[AttentionConfig]:
    out = []
    for dtype in ("fp16", "bf16"):
        for d in (64, 128):
            for causal in (False, True):
                for s in (512, 1024, 2048, 4096, 8192, 16384):
                    out.append(AttentionConfig(16384 // s, 2048 // d, s, s, d, dtype, causal))
    return out


def _seeds() -> list[AttentionConfig]:
    return [AttentionConfig(1, 8, s, s, 64, "fp16", False) for s in (32, 64, 128, 256, 512)]


def _quick() -> list[AttentionConfig]:
    return [
        AttentionConfig(1, 8, 512, 512, 64, "fp16", False),  # tiny, launch-latency bound
        AttentionConfig(16, 16, 1024, 1024, 128, "bf16", False),
        AttentionConfig(8, 32, 2048, 2048, 64, "fp16", False),
        AttentionConfig(8, 32, 2048, 2048, 64, "fp16", True),
        AttentionConfig(4, 16, 4096, 4096, 128, "bf16", False),
        AttentionConfig(4, 16, 4096, 4096, 128, "bf16", True),
        AttentionConfig(2, 16, 2048, 4096, 128, "bf16", False),  # Sq != Sk
        AttentionConfig(1, 16, 16384, 16384, 128, "bf16", True),
    ]


def _gqa() -> list[AttentionConfig]:
    return [AttentionConfig(32768 // s, 32, s, s, 128, "bf16", causal, 8)
            for causal in (False, True) for s in (1024, 2048, 4096, 8192, 16384)]


def _decode() -> list[AttentionConfig]:
    return [AttentionConfig(8, 32, sq, sk, 128, "bf16", True, 8, "bottom_right")
            for sq in (1, 4, 16) for sk in (1024, 4096, 16384, 32768, 131072)]


def _headdims() -> list[AttentionConfig]:
    return [AttentionConfig(16384 // s, 2048 // d, s, s, d, dtype, causal)
            for d in (96, 256) for dtype in ("fp16", "bf16") for causal in (False, True)
            for s in (1024, 4096)]


BUILTIN_GRIDS = {"standard": _standard, "seeds": _seeds, "quick": _quick, "gqa": _gqa,
                 "decode": _decode, "headdims": _headdims}

_TABLE_KEYS = {"batch_size", "num_heads", "seq_len", "seq_len_q", "seq_len_k", "head_dim", "dtype",
               "causal", "tokens", "hidden"}


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


# The most configs one grid may hold: the standard grid is 48 (about 2.5 minutes of bench); a
# table whose lists multiply past this is a slip, refused before anything is expanded.
MAX_GRID_CONFIGS = 10_000


def grid_from_table(name: str, table: dict) -> list[AttentionConfig]:
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
    empty = [key for key in sorted(table) if table[key] == []]
    if empty:  # every combination of the lists would be none at all
        raise UsageError(f"{empty[0]!r} is an empty list")
    combinations = math.prod(len(_as_list(value)) for value in table.values())
    if combinations > MAX_GRID_CONFIGS:
        raise UsageError(f"its lists make {combinations:,} combinations; a grid holds at most "
                         f"{MAX_GRID_CONFIGS:,} configs")

    dtypes = [parse_dtype(v) for v in _as_list(table["dtype"])]
    dims = [positive_int(v, "head_dim") for v in _as_list(table["head_dim"])]
    causals = [parse_causal(v) for v in _as_list(table.get("causal", False))]
    if "seq_len" in table:
        seqs = [(s, s) for s in (positive_int(v, "seq_len") for v in _as_list(table["seq_len"]))]
    else:
        seqs = list(itertools.product(
            [positive_int(v, "seq_len_q") for v in _as_list(table["seq_len_q"])],
            [positive_int(v, "seq_len_k") for v in _as_list(table["seq_len_k"])]))
    out = []
    for dtype, d, (causal, alignment), (sq, sk) in itertools.product(dtypes, dims, causals, seqs):
        if "tokens" in table:
            tokens = positive_int(table["tokens"], "tokens")
            batches = [tokens // sq]
            if batches[0] < 1:
                raise UsageError(f"tokens {tokens} is smaller than seq_len {sq}")
        else:
            batches = [positive_int(v, "batch_size") for v in _as_list(table["batch_size"])]
        if "hidden" in table:
            hidden = positive_int(table["hidden"], "hidden")
            heads = [hidden // d]
            if heads[0] < 1 or hidden % d:
                raise UsageError(f"hidden {hidden} is not a multiple of head_dim {d}")
        else:
            heads = [positive_int(v, "num_heads") for v in _as_list(table["num_heads"])]
        for b, h in itertools.product(batches, heads):
            out.append(AttentionConfig(b, h, sq, sk, d, dtype, causal, 0, alignment))
    return out


def parse_grid_entry(name: str, value) -> list[AttentionConfig]:
    if isinstance(value, list):
        if not value:
            raise UsageError("an empty list")
        if not all(isinstance(v, str) for v in value):
            raise UsageError("a list must hold config strings 'B,H,Sq,Sk,D,dtype,causal'")
        if len(value) > MAX_GRID_CONFIGS:
            raise UsageError(f"{len(value):,} configs; a grid holds at most {MAX_GRID_CONFIGS:,}")
        return [parse_config(v) for v in value]
    if isinstance(value, dict):
        return grid_from_table(name, value)
    raise UsageError("must be a list of config strings or a table")


def load_project_grids(start: Path | None = None) -> dict[str, list[AttentionConfig]]:
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


def load_grid(name: str, start: Path | None = None) -> list[AttentionConfig]:
    """The configs of a grid: one from pyproject.toml first, else a built-in one."""
    project = load_project_grids(start)
    if name in project:
        return project[name]
    if name in BUILTIN_GRIDS:
        return BUILTIN_GRIDS[name]()
    known = ", ".join(sorted(set(BUILTIN_GRIDS) | set(project)))
    raise UsageError(f"no grid named {name!r}; known grids: {known}")


def select_configs(grid: str | None, configs=()) -> tuple[str, list[AttentionConfig]]:
    """The configs of a bench run and its grid label.

    ``--config`` values alone make a ``custom`` grid; with ``--grid`` too they are added to that
    grid; with neither, the ``quick`` grid.
    """
    extra = [c if isinstance(c, AttentionConfig) else parse_config(c) for c in configs or ()]
    if grid is None and extra:
        return "custom", list(dict.fromkeys(extra))
    name = grid or "quick"
    chosen = load_grid(name) + extra
    return (name if not extra else f"{name}+custom"), list(dict.fromkeys(chosen))
