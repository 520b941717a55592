"""Nsight Compute on one call of a kernel, and what to change next (the step
``sessionkit step profile`` is :mod:`sessionkit.steps.profile`).

The step runs ``ncu`` (found like nvcc, never changing the card's clocks: ``--clock-control none``) on
``benchmarks/profile_target.py``, which warms the kernel up and then brackets exactly one call with
cudaProfilerStart/Stop (``--profile-from-start off``). It collects a small fixed set of numbers -- SM,
DRAM and tensor-pipe throughput, occupancy, registers and shared memory per block, the top warp stall
reasons, L2 hit rate, duration, DRAM bytes -- and keeps the ``.ncu-rep`` and a CSV of it.

From those numbers and the ceilings (the bench step's measured bf16 matmul TFLOP/s; for DRAM, the copy
bandwidth measured on an H100, 2.96 TB/s, used as a labelled default) it computes a verdict --
compute-bound, memory-bound or latency-bound -- and the next moves. Verdicts, thresholds and moves are
data, in ``patterns/profile-tree.toml``; every move names the pattern it comes from.

Nothing here imports torch at module level; the step imports it only to ask whether a GPU is there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, SessionkitError, UsageError

KERNELS = ("ours", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}
DEFAULT_CONFIG = "4,16,4096,4096,128,bf16,0"
TREE_FILE = "profile-tree.toml"

# Copy bandwidth measured on an H100 SXM (torch 2.11, CUDA 13.0): the DRAM ceiling used when nothing
# in the database measured one. It is reported as a default, never as a measurement of this card.
H100_COPY_TBS = 2.96
H100_COPY_SOURCE = "default: 2.96 TB/s copy bandwidth measured on an H100, not measured in this session"

# Sections that ship with every ncu: their metric names adapt to the GPU, so they never name a metric
# this chip lacks. Small ones only (no --set full).
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "WarpStateStats")
# Asked for by name as well, but only when ``ncu --query-metrics`` lists them for this GPU: ncu refuses
# the whole run when one requested name is unknown.
EXTRA_METRICS = (
    "lts__t_sector_hit_rate.pct",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
)
MAX_LAUNCHES = 20  # kernels recorded at most inside the profiled call
NCU_TIMEOUT_S = 600

PERMISSION_FIX = (
    "ncu may not read the GPU performance counters (ERR_NVGPUCTRPERM): run the step as root, or "
    "allow all users with 'options nvidia NVreg_RestrictProfilingToAdminUsers=0' in "
    "/etc/modprobe.d/ and reload the nvidia module (containers also need --cap-add=SYS_ADMIN)"
)


class ProfileError(SessionkitError):
    """ncu ran but gave nothing usable."""


# ---------------------------------------------------------------------------------------------------
# The configuration that is profiled


@dataclass(frozen=True)
class ProfileConfig:
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    dtype: str
    causal: bool

    @property
    def label(self) -> str:
        """The canonical ``B,H,Sq,Sk,D,dtype,causal`` text (parse_config reads it back)."""
        return (f"{self.batch},{self.heads},{self.seq_q},{self.seq_k},{self.head_dim},{self.dtype},"
                f"{int(self.causal)}")

    def attended_pairs(self) -> int:
        """(query, key) pairs that are computed: all of them, or the causal mask's lower triangle.

        The causal mask is aligned at the top left (query i sees keys 0..i), as in torch's SDPA.
        """
        if not self.causal:
            return self.seq_q * self.seq_k
        full = min(self.seq_q, self.seq_k)  # rows 0..full-1 see i+1 keys; later rows see all seq_k
        return full * (full + 1) // 2 + (self.seq_q - full) * self.seq_k

    def flops(self) -> int:
        """Forward FLOPs: two matmuls (QK^T and PV) of 2*D FLOPs per attended pair."""
        return 4 * self.batch * self.heads * self.head_dim * self.attended_pairs()

    def min_bytes(self) -> int:
        """The least DRAM traffic possible: Q, K, V read once and O written once."""
        per_head = (2 * self.seq_q + 2 * self.seq_k) * self.head_dim
        return self.batch * self.heads * per_head * DTYPES[self.dtype]


_CAUSAL = {"1": True, "true": True, "causal": True, "yes": True,
           "0": False, "false": False, "noncausal": False, "no": False}


def parse_config(text: str) -> ProfileConfig:
    """``"4,16,4096,4096,128,bf16,0"`` -> ProfileConfig; UsageError on anything else."""
    hint = "use B,H,Sq,Sk,D,dtype,causal, e.g. 4,16,4096,4096,128,bf16,0"
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 7:
        raise UsageError(f"bad --config {text!r}: {hint}")
    names = ("batch", "heads", "seq_q", "seq_k", "head_dim")
    sizes = []
    for name, part in zip(names, parts[:5]):
        if not re.fullmatch(r"[0-9]{1,9}", part) or int(part) < 1:
            raise UsageError(f"bad --config {text!r}: {name} must be a positive integer; {hint}")
        sizes.append(int(part))
    dtype = parts[5].lower()
    if dtype not in DTYPES:
        raise UsageError(f"bad --config {text!r}: dtype must be one of {', '.join(DTYPES)}")
    causal = _CAUSAL.get(parts[6].lower())
    if causal is None:
        raise UsageError(f"bad --config {text!r}: causal must be 0 or 1")
    if sizes[4] > 256 or sizes[4] % 8:
        raise UsageError(f"bad --config {text!r}: head_dim must be a multiple of 8, at most 256")
    return ProfileConfig(*sizes, dtype=dtype, causal=causal)


# ---------------------------------------------------------------------------------------------------
# Reading what ncu wrote

_UNIT_SCALE = {
    # to milliseconds
    "nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
    "second": 1e3, "s": 1e3,
    # to bytes (ncu's prefixes are powers of 1000)
    "byte": 1.0, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
    "kib": 1024.0, "mib": 1024.0 ** 2, "gib": 1024.0 ** 3,
}
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def parse_number(text) -> float | None:
    """ncu's cell text as a float: ``"1,234.5"`` -> 1234.5; ``""``, ``"n/a"``, tuples -> None."""
    if text is None:
        return None
    raw = str(text).strip()
    if _THOUSANDS.fullmatch(raw):
        raw = raw.replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def scaled(value: float | None, unit: str | None, base: str) -> float | None:
    """``value`` in ``unit`` converted to ``base`` ("ms" or "byte"); units like byte/block are fine."""
    if value is None:
        return None
    head = (unit or "").strip().split("/")[0].lower()
    if not head:
        return value
    if head not in _UNIT_SCALE:
        return None
    return value * _UNIT_SCALE[head] / _UNIT_SCALE[base.lower()]


@dataclass
class KernelRecord:
    """One profiled kernel launch: its name and every metric ncu reported for it."""

    id: int
    name: str
    text: dict[str, str] = field(default_factory=dict)  # metric -> cell text
    units: dict[str, str] = field(default_factory=dict)

    def number(self, metric: str) -> float | None:
        return parse_number(self.text.get(metric))

    def in_unit(self, metric: str, base: str) -> float | None:
        return scaled(self.number(metric), self.units.get(metric), base)

    def first(self, *metrics: str) -> float | None:
        for metric in metrics:
            value = self.number(metric)
            if value is not None:
                return value
        return None


_ID_COLUMNS = ("ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
               "Block Size", "Grid Size", "Device", "CC")


def parse_ncu_csv(text: str) -> list[KernelRecord]:
    """Kernels from ncu's CSV: ``--page raw`` (a column per metric, a row of units under the header)
    or ``--page details`` (a row per metric). Lines before the header (``==PROF==``...) are skipped.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), None)
    if start is None:
        raise ProfileError("no ncu CSV header (\"ID\",...) in the output")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, body = rows[0], [r for r in rows[1:] if r]
    if "Metric Name" in header:
        return _parse_details(header, body)
    return _parse_raw(header, body)


def _parse_raw(header: list[str], body: list[list[str]]) -> list[KernelRecord]:
    units: dict[str, str] = {}
    records = []
    for row in body:
        cells = dict(zip(header, row))
        if not cells.get("ID", "").strip():  # the units row
            units = {k: v for k, v in cells.items() if k not in _ID_COLUMNS}
            continue
        metrics = {k: v for k, v in cells.items() if k not in _ID_COLUMNS}
        records.append(KernelRecord(int(parse_number(cells["ID"]) or 0), cells.get("Kernel Name", ""),
                                    metrics, dict(units)))
    return records


def _parse_details(header: list[str], body: list[list[str]]) -> list[KernelRecord]:
    by_id: dict[str, KernelRecord] = {}
    for row in body:
        cells = dict(zip(header, row))
        key = cells.get("ID", "")
        rec = by_id.get(key)
        if rec is None:
            rec = by_id[key] = KernelRecord(int(parse_number(key) or 0), cells.get("Kernel Name", ""))
        name = cells.get("Metric Name", "")
        if name:
            rec.text[name] = cells.get("Metric Value", "")
            rec.units[name] = cells.get("Metric Unit", "")
    return list(by_id.values())


# Stall metric families, most wanted first; each captures the reason's name.
_STALL_FAMILIES = (
    re.compile(r"smsp__average_warps_issue_stalled_([a-z0-9_]+?)_per_issue_active\.ratio"),
    re.compile(r"smsp__average_warp_latency_issue_stalled_([a-z0-9_]+?)\.ratio"),
    re.compile(r"smsp__warp_issue_stalled_([a-z0-9_]+?)_per_warp_active\.pct"),
    re.compile(r"smsp__pcsamp_warps_issue_stalled_([a-z0-9_]+)"),
)
_NOT_STALLS = {"selected"}  # issuing is not a stall


def stall_shares(record: KernelRecord) -> dict[str, float]:
    """Each warp stall reason's share (%) of all stalled warp cycles, from the richest family found."""
    best: dict[str, float] = {}
    for family in _STALL_FAMILIES:
        found = {}
        for metric in record.text:
            match = family.fullmatch(metric)
            if match and match.group(1) not in _NOT_STALLS and not match.group(1).endswith("_not_issued"):
                value = record.number(metric)
                if value is not None and value >= 0:
                    found[match.group(1)] = value
        if len(found) > len(best):
            best = found
    total = sum(best.values())
    if total <= 0:
        return {}
    return {reason: 100.0 * value / total for reason, value in best.items()}


_LIMITS = ("registers", "shared_mem", "warps", "blocks", "barriers")


@dataclass
class KernelNumbers:
    """The fixed set of numbers the step records (contract names), read from one kernel's record."""

    kernel_name: str
    duration_ms: float | None = None
    sm_throughput_pct: float | None = None
    dram_throughput_pct: float | None = None
    memory_throughput_pct: float | None = None  # the busiest memory unit: L1/shared, L2 or DRAM
    tensor_pipe_pct: float | None = None
    achieved_occupancy_pct: float | None = None
    theoretical_occupancy_pct: float | None = None
    registers_per_thread: float | None = None
    smem_per_block_bytes: float | None = None
    l2_hit_rate_pct: float | None = None
    dram_bytes: float | None = None
    waves_per_sm: float | None = None
    block_threads: float | None = None
    occupancy_limiters: list[str] = field(default_factory=list)
    stalls: dict[str, float] = field(default_factory=dict)  # reason -> share of stall cycles (%)

    def top_stalls(self, n: int = 3) -> list[tuple[str, float]]:
        return sorted(self.stalls.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


_TENSOR_PIPE = re.compile(r"sm__pipe_tensor[a-z0-9_]*_cycles_active\.avg\.pct_of_peak_sustained_active")


def kernel_numbers(record: KernelRecord) -> KernelNumbers:
    out = KernelNumbers(kernel_name=record.name)
    out.duration_ms = record.in_unit("gpu__time_duration.sum", "ms")
    out.sm_throughput_pct = record.number("sm__throughput.avg.pct_of_peak_sustained_elapsed")
    out.dram_throughput_pct = record.first("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                                           "dram__throughput.avg.pct_of_peak_sustained_elapsed")
    out.memory_throughput_pct = record.number(
        "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed")
    tensor = [record.number(m) for m in record.text if _TENSOR_PIPE.fullmatch(m)]
    tensor = [t for t in tensor if t is not None]
    out.tensor_pipe_pct = max(tensor) if tensor else None
    out.achieved_occupancy_pct = record.number("sm__warps_active.avg.pct_of_peak_sustained_active")
    out.theoretical_occupancy_pct = record.number("sm__maximum_warps_per_active_cycle_pct")
    out.registers_per_thread = record.number("launch__registers_per_thread")
    smem = [record.in_unit(m, "byte") for m in ("launch__shared_mem_per_block_static",
                                                 "launch__shared_mem_per_block_dynamic")]
    smem = [s for s in smem if s is not None]
    out.smem_per_block_bytes = sum(smem) if smem else None
    out.l2_hit_rate_pct = record.number("lts__t_sector_hit_rate.pct")
    parts = [record.in_unit(m, "byte") for m in ("dram__bytes_read.sum", "dram__bytes_write.sum")]
    if all(p is not None for p in parts):
        out.dram_bytes = sum(parts)
    else:
        out.dram_bytes = record.in_unit("dram__bytes.sum", "byte")
    out.waves_per_sm = record.number("launch__waves_per_multiprocessor")
    out.block_threads = record.number("launch__block_size")
    limits = {name: record.number(f"launch__occupancy_limit_{name}") for name in _LIMITS}
    limits = {k: v for k, v in limits.items() if v is not None}
    if limits:
        low = min(limits.values())
        out.occupancy_limiters = [k for k in _LIMITS if limits.get(k) == low]
    out.stalls = stall_shares(record)
    return out


def main_kernel(records: list[KernelRecord]) -> KernelRecord:
    """The launch that the call is about: the longest one (attention calls usually launch one)."""
    if not records:
        raise ProfileError("ncu profiled no kernel")
    return max(records, key=lambda r: r.in_unit("gpu__time_duration.sum", "ms") or 0.0)


# ---------------------------------------------------------------------------------------------------
# Ceilings


@dataclass
class Ceilings:
    tflops: float | None = None
    tflops_source: str = "not measured: run 'sessionkit step bench'"
    tbs: float | None = None
    tbs_source: str = "not known for this GPU"


def find_ceilings(db, session: dict, gpu_name: str | None) -> Ceilings:
    """The bf16 matmul ceiling the bench step measured (this session first, then this host's newest),
    and the DRAM ceiling: the H100's measured copy bandwidth as a labelled default.
    """
    out = Ceilings()
    row = db.execute(
        "SELECT m.value, s.number, st.seq, st.session_id = ? AS here FROM metrics m "
        "JOIN steps st ON st.id = m.step_id JOIN sessions s ON s.id = st.session_id "
        "WHERE m.key = 'matmul_bf16_tflops' AND m.subject = 'ceiling' AND m.value > 0 "
        "AND (st.session_id = ? OR st.host = ?) "
        "ORDER BY here DESC, st.started_at DESC LIMIT 1",
        [session["id"], session["id"], socket.gethostname()]).fetchone()
    if row:
        out.tflops = float(row[0])
        where = "this session" if row[3] else f"session {row[1]}"
        out.tflops_source = f"bf16 matmul measured by bench ({where}, step {row[2]})"
    if gpu_name and "H100" in gpu_name:
        out.tbs, out.tbs_source = H100_COPY_TBS, H100_COPY_SOURCE
    return out


# ---------------------------------------------------------------------------------------------------
# The decision tree (patterns/profile-tree.toml)

FACT_TYPES = {
    "sm_pct": "number", "tensor_pct": "number", "dram_pct": "number", "onchip_pct": "number",
    "compute_pct": "number", "memory_pct": "number", "mma_pct": "number",
    "tflops": "number", "tflops_pct": "number", "bandwidth_tbs": "number", "bandwidth_pct": "number",
    "traffic_ratio": "number", "occupancy_pct": "number", "theoretical_occupancy_pct": "number",
    "registers": "number", "smem_bytes": "number", "l2_hit_pct": "number", "duration_ms": "number",
    "waves": "number", "block_threads": "number", "head_dim": "number",
    "verdict": "text", "kernel": "text", "dtype": "text", "causal": "number",
    "top_stall": "text", "top_stalls": "list", "occupancy_limiters": "list",
}
_COND = re.compile(r"\s*([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)?)\s*(>=|<=|==|!=|>|<|has_any|has)\s*(.+?)\s*")
_NUMERIC_OPS = {">=", "<=", ">", "<"}


@dataclass(frozen=True)
class Condition:
    fact: str
    op: str
    value: object  # float, str literal, list of str, or ("ref", name)

    def holds(self, facts: dict, thresholds: dict) -> bool:
        left = _fact(facts, self.fact)
        right = self.value
        if isinstance(right, tuple):
            name = right[1]
            right = thresholds[name] if name in thresholds else _fact(facts, name)
        if left is None or right is None:
            return False  # a number ncu did not give never triggers a move
        if self.op in _NUMERIC_OPS:
            if not (_is_num(left) and _is_num(right)):
                return False
            return {">=": left >= right, "<=": left <= right, ">": left > right,
                    "<": left < right}[self.op]
        if self.op == "==":
            return left == right
        if self.op == "!=":
            return left != right
        if self.op == "has":
            return right in left
        return any(item in left for item in right)  # has_any


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fact(facts: dict, name: str):
    if name.startswith("stall."):
        stalls = facts.get("stalls")
        return None if not stalls else stalls.get(name[6:], 0.0)
    return facts.get(name)


def parse_condition(text: str, thresholds: dict, where: str) -> Condition:
    match = _COND.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ConfigError(f"{where}: cannot read condition {text!r}; write e.g. \"tensor_pct >= 60\"")
    fact, op, raw = match.groups()
    kind = "number" if fact.startswith("stall.") else FACT_TYPES.get(fact)
    if kind is None:
        raise ConfigError(f"{where}: unknown fact {fact!r} in {text!r}; known: {', '.join(FACT_TYPES)}")
    value = _parse_value(raw, thresholds, where, text)
    if op in _NUMERIC_OPS and kind != "number":
        raise ConfigError(f"{where}: {fact!r} is not a number, {op} cannot compare it ({text!r})")
    if op in ("has", "has_any") and kind != "list":
        raise ConfigError(f"{where}: {fact!r} is not a list, {op} cannot test it ({text!r})")
    if op == "has_any" and not isinstance(value, list):
        raise ConfigError(f"{where}: has_any needs a list like ['barrier', 'wait'] ({text!r})")
    return Condition(fact, op, value)


def _parse_value(raw: str, thresholds: dict, where: str, text: str):
    number = parse_number(raw)
    if number is not None:
        return number
    if re.fullmatch(r"'[^']*'|\"[^\"]*\"", raw):
        return raw[1:-1]
    if raw.startswith("[") and raw.endswith("]"):
        items = [i.strip() for i in raw[1:-1].split(",") if i.strip()]
        if all(re.fullmatch(r"'[^']*'|\"[^\"]*\"", i) for i in items) and items:
            return [i[1:-1] for i in items]
    elif raw in thresholds or raw in FACT_TYPES or re.fullmatch(r"stall\.[a-z0-9_]+", raw):
        return ("ref", raw)
    raise ConfigError(f"{where}: cannot read the value {raw!r} in {text!r}; use a number, a 'text', "
                      f"a ['list'], a threshold or a fact")


@dataclass
class Verdict:
    name: str
    summary: str
    when: list[Condition]


@dataclass
class Leaf:
    id: str
    text: str
    pattern: str
    when: list[Condition]


@dataclass
class Tree:
    thresholds: dict[str, float]
    verdicts: list[Verdict]
    leaves: list[Leaf]
    fallback: Leaf
    path: str = ""


_SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def tree_path() -> Path | None:
    """The decision tree: the checkout's patterns/, else the installed ``sessionkit.patterns``."""
    here = Path(__file__).resolve().parent.parent / "patterns" / TREE_FILE
    if here.is_file():
        return here
    try:
        import importlib.resources

        found = importlib.resources.files("sessionkit.patterns") / TREE_FILE
        if found.is_file():
            return Path(str(found))
    except (ModuleNotFoundError, TypeError):
        pass
    return None


def load_tree(path: str | os.PathLike | None = None) -> Tree:
    """Read and check the decision tree; ConfigError names the file and the entry at fault."""
    import tomllib

    path = Path(path) if path else tree_path()
    if path is None or not path.is_file():
        raise ConfigError(f"the profile decision tree {TREE_FILE} is missing from patterns/")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(_is_num(v) for v in thresholds.values()):
        raise ConfigError(f"{path}: [thresholds] must map names to numbers")
    thresholds = {k: float(v) for k, v in thresholds.items()}
    clash = set(thresholds) & set(FACT_TYPES)
    if clash:
        raise ConfigError(f"{path}: thresholds {sorted(clash)} have the names of facts")

    def conditions(entry: dict, where: str) -> list[Condition]:
        when = entry.get("when", [])
        if not isinstance(when, list):
            raise ConfigError(f"{where}: 'when' must be a list of conditions")
        return [parse_condition(c, thresholds, where) for c in when]

    verdicts = []
    for i, entry in enumerate(data.get("verdicts", [])):
        where = f"{path} verdicts[{i}]"
        if not entry.get("name") or not entry.get("summary"):
            raise ConfigError(f"{where}: a verdict needs a name and a summary")
        verdicts.append(Verdict(entry["name"], entry["summary"], conditions(entry, where)))
    if not verdicts or verdicts[-1].when:
        raise ConfigError(f"{path}: the last verdict must have no conditions, so one always applies")
    names = [v.name for v in verdicts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: verdict names repeat: {names}")

    def leaf(entry: dict, where: str) -> Leaf:
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        for key in ("id", "text", "pattern"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{where}: needs a non-empty {key!r}")
        if not _SLUG.fullmatch(entry["pattern"]):
            raise ConfigError(f"{where}: pattern {entry['pattern']!r} is not a pattern id (a slug)")
        made = Leaf(entry["id"], " ".join(entry["text"].split()), entry["pattern"],
                    conditions(entry, where))
        for cond in made.when:
            if cond.fact == "verdict" and isinstance(cond.value, str) and cond.value not in names:
                raise ConfigError(f"{where}: no verdict named {cond.value!r}")
        return made

    leaves = [leaf(e, f"{path} leaves[{i}]") for i, e in enumerate(data.get("leaves", []))]
    ids = [x.id for x in leaves]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: leaf ids repeat")
    if "fallback" not in data:
        raise ConfigError(f"{path}: needs a [fallback] move for when no leaf applies")
    fallback = leaf(data["fallback"], f"{path} fallback")
    return Tree(thresholds, verdicts, leaves, fallback, str(path))


@dataclass
class Classification:
    verdict: str
    summary: str
    suggestions: list[dict]  # {"text", "pattern", "leaf"}
    facts: dict


def make_facts(numbers: KernelNumbers, cfg: ProfileConfig, kernel: str, ceilings: Ceilings) -> dict:
    """The facts the tree's conditions test; absent numbers stay absent (None)."""
    facts: dict = {
        "sm_pct": numbers.sm_throughput_pct, "tensor_pct": numbers.tensor_pipe_pct,
        "dram_pct": numbers.dram_throughput_pct, "onchip_pct": numbers.memory_throughput_pct,
        "occupancy_pct": numbers.achieved_occupancy_pct,
        "theoretical_occupancy_pct": numbers.theoretical_occupancy_pct,
        "registers": numbers.registers_per_thread, "smem_bytes": numbers.smem_per_block_bytes,
        "l2_hit_pct": numbers.l2_hit_rate_pct, "duration_ms": numbers.duration_ms,
        "waves": numbers.waves_per_sm, "block_threads": numbers.block_threads,
        "head_dim": float(cfg.head_dim), "kernel": kernel, "dtype": cfg.dtype,
        "causal": float(cfg.causal), "occupancy_limiters": list(numbers.occupancy_limiters),
        "stalls": dict(numbers.stalls),
    }
    top = numbers.top_stalls(3)
    facts["top_stalls"] = [name for name, _ in top] if top else None
    facts["top_stall"] = top[0][0] if top else None
    seconds = numbers.duration_ms / 1e3 if numbers.duration_ms else None
    facts["tflops"] = cfg.flops() / seconds / 1e12 if seconds else None
    facts["tflops_pct"] = None
    if facts["tflops"] is not None and ceilings.tflops and cfg.dtype in ("bf16", "fp16"):
        facts["tflops_pct"] = 100.0 * facts["tflops"] / ceilings.tflops
    facts["bandwidth_tbs"] = numbers.dram_bytes / seconds / 1e12 if (
        seconds and numbers.dram_bytes is not None) else None
    facts["bandwidth_pct"] = (100.0 * facts["bandwidth_tbs"] / ceilings.tbs
                              if facts["bandwidth_tbs"] is not None and ceilings.tbs else None)
    facts["traffic_ratio"] = (numbers.dram_bytes / cfg.min_bytes()
                              if numbers.dram_bytes is not None else None)

    def best(*keys):
        vals = [facts[k] for k in keys if facts.get(k) is not None]
        return max(vals) if vals else None

    facts["mma_pct"] = best("tensor_pct", "tflops_pct")
    facts["compute_pct"] = best("sm_pct", "tensor_pct", "tflops_pct")
    facts["memory_pct"] = best("dram_pct", "bandwidth_pct", "onchip_pct")
    return facts


def classify(facts: dict, tree: Tree) -> Classification:
    """The first verdict whose conditions hold, then every leaf that holds (the fallback if none)."""
    facts = dict(facts)
    th = tree.thresholds
    chosen = next(v for v in tree.verdicts if all(c.holds(facts, th) for c in v.when))
    facts["verdict"] = chosen.name
    moves, seen = [], set()
    for leaf in tree.leaves:
        if all(c.holds(facts, th) for c in leaf.when) and leaf.text not in seen:
            seen.add(leaf.text)
            moves.append({"text": leaf.text, "pattern": leaf.pattern, "leaf": leaf.id})
    if not moves:
        fb = tree.fallback
        moves.append({"text": fb.text, "pattern": fb.pattern, "leaf": fb.id})
    return Classification(chosen.name, chosen.summary, moves, facts)


# ---------------------------------------------------------------------------------------------------
# Running ncu


def permission_denied(output: str) -> bool:
    return "ERR_NVGPUCTRPERM" in output


def ncu_failure(output: str, returncode: int) -> str | None:
    """A one-line reason when ncu's output says the profile failed, else None."""
    if permission_denied(output):
        return PERMISSION_FIX
    errors = [line.split("==ERROR==", 1)[1].strip() for line in output.splitlines()
              if "==ERROR==" in line]
    if errors:
        return f"ncu: {errors[0]}"
    if "No kernels were profiled" in output:
        return "ncu profiled no kernel: the target made no CUDA launch between profiler start and stop"
    if returncode != 0:
        return f"ncu exited with status {returncode}"
    return None


_METRIC_NAME = re.compile(r"\b([a-z0-9]+__[a-z0-9_]+)\b")


def query_metric_names(ncu: str, timeout: float = 120.0) -> set[str] | None:
    """Base metric names (no rollup suffix) that ncu knows for the attached GPU, or None."""
    try:
        proc = subprocess.run([ncu, "--query-metrics"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    names = set(_METRIC_NAME.findall(proc.stdout))
    return names or None


def choose_metrics(available: set[str] | None) -> list[str]:
    """Of EXTRA_METRICS, those whose base name ncu lists (none when the listing failed)."""
    if not available:
        return []
    return [m for m in EXTRA_METRICS if m.split(".")[0] in available]


def ncu_command(ncu: str, target: list[str], report_base: Path, metrics: list[str],
                kernel_regex: str | None = None) -> list[str]:
    cmd = [ncu, "--clock-control", "none", "--profile-from-start", "off",
           "--target-processes", "all", "--force-overwrite", "--export", str(report_base)]
    for section in SECTIONS:
        cmd += ["--section", section]
    if metrics:
        cmd += ["--metrics", ",".join(metrics)]
    if kernel_regex:
        cmd += ["--kernel-name", f"regex:{kernel_regex}", "--launch-count", "1"]
    else:
        cmd += ["--launch-count", str(MAX_LAUNCHES)]
    return cmd + target


def target_command(cfg: ProfileConfig, kernel: str, warmup: int) -> list[str]:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_target.py"
    if not script.is_file():
        raise ProfileError(f"{script} is missing: the profile step runs from a sessionkit checkout")
    return [sys.executable, str(script), "--config", cfg.label, "--kernel", kernel,
            "--warmup", str(warmup)]


def run_logged(cmd: list[str], log_path: Path, env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd``, its output going to ``log_path``; (return code, output)."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            log.write(out)
            raise ProfileError(f"ncu did not finish in {timeout:.0f} s (log: {log_path})") from None
        log.write(proc.stdout)
    return proc.returncode, proc.stdout


def _target_info(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("PROFILE_TARGET "):
            try:
                return json.loads(line[len("PROFILE_TARGET "):])
            except json.JSONDecodeError:
                return {}
    return {}


def _gpu_facts() -> tuple[str | None, str | None]:
    """(skip reason, GPU name): torch is asked here, inside the step, never at import."""
    try:
        import torch
    except ImportError:
        return "torch is not installed, so no kernel can be launched", None
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)", None
    return None, torch.cuda.get_device_name(0)


def _fmt(value, unit="", digits=1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def numbers_table(numbers: KernelNumbers, facts: dict, ceilings: Ceilings) -> list[str]:
    theo = (f" (theoretical {_fmt(numbers.theoretical_occupancy_pct, '%')})"
            if numbers.theoretical_occupancy_pct is not None else "")
    limit = (f", limited by {'/'.join(numbers.occupancy_limiters)}"
             if numbers.occupancy_limiters else "")
    tflops = f"{_fmt(facts['tflops'], 'TFLOP/s', 0)}"
    if facts.get("tflops_pct") is not None:
        tflops += f" = {facts['tflops_pct']:.0f} % of {ceilings.tflops:.0f} ({ceilings.tflops_source})"
    else:
        tflops += f" (matmul ceiling {ceilings.tflops_source})"
    bw = f"{_fmt(facts['bandwidth_tbs'], 'TB/s', 2)}"
    if facts.get("bandwidth_pct") is not None:
        bw += f" = {facts['bandwidth_pct']:.0f} % of {ceilings.tbs:.2f} TB/s ({ceilings.tbs_source})"
    if facts.get("traffic_ratio") is not None:
        bw += f"; {facts['traffic_ratio']:.2f}x the least traffic"
    stalls = ", ".join(f"{n} {p:.0f} %" for n, p in numbers.top_stalls(3)) or "n/a"
    rows = [
        ("duration", _fmt(numbers.duration_ms, "ms", 3)),
        ("SM throughput", _fmt(numbers.sm_throughput_pct, "%")),
        ("tensor pipe", _fmt(numbers.tensor_pipe_pct, "%")),
        ("DRAM throughput", _fmt(numbers.dram_throughput_pct, "%")),
        ("busiest memory unit", _fmt(numbers.memory_throughput_pct, "%")),
        ("L2 hit rate", _fmt(numbers.l2_hit_rate_pct, "%")),
        ("achieved occupancy", _fmt(numbers.achieved_occupancy_pct, "%") + theo + limit),
        ("registers/thread", _fmt(numbers.registers_per_thread, "", 0)),
        ("smem/block", _fmt(numbers.smem_per_block_bytes, "B", 0)),
        ("achieved", tflops),
        ("DRAM traffic", bw),
        ("top stalls", stalls),
    ]
    return [f"{k:<20} {v}" for k, v in rows]
