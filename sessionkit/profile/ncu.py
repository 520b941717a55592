"""Running Nsight Compute on the profile target and reading what it wrote: the config the target
takes and its command line (:mod:`~sessionkit.profile.target`, run as a module), ncu's command line
(never touching the card's clocks, one call bracketed by the profiler), the failure reasons, the CSV
of a report (``--page raw`` or ``--page details``) and the fixed set of numbers the profile step
records (:class:`KernelNumbers`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..attention import AttentionConfig, parse_config
from ..errors import SessionkitError, UsageError

# Sections that ship with every ncu: their metric names adapt to the GPU, so they never name a metric
# this chip lacks. Small ones only (no --set full).
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "WarpStateStats")
SOURCE_SECTION = "SourceCounters"  # per-instruction warp samples (``step profile --source``)
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
                kernel_regex: str | None = None, source: bool = False) -> list[str]:
    """ncu's argv: :data:`SECTIONS` and ``metrics`` on one call of ``target``, the report written to
    ``report_base`` + ``.ncu-rep``. ``source`` adds the section of per-instruction warp samples
    (``SourceCounters``, read back by :func:`~sessionkit.profile.source.export_source`) and
    ``--import-source no`` (the report keeps no CUDA source files, only the SASS)."""
    cmd = [ncu, "--clock-control", "none", "--profile-from-start", "off",
           "--target-processes", "all", "--force-overwrite", "--export", str(report_base)]
    for section in SECTIONS + ((SOURCE_SECTION,) if source else ()):
        cmd += ["--section", section]
    if source:
        cmd += ["--import-source", "no"]
    if metrics:
        cmd += ["--metrics", ",".join(metrics)]
    if kernel_regex:
        cmd += ["--kernel-name", f"regex:{kernel_regex}", "--launch-count", "1"]
    else:
        cmd += ["--launch-count", str(MAX_LAUNCHES)]
    return cmd + target


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


# ---------------------------------------------------------------------------------------------------
# The profile target

DEFAULT_CONFIG = "4,16,4096,4096,128,bf16,0"
MODULE = "sessionkit.profile.target"
INFO_PREFIX = "PROFILE_TARGET "


def parse_profile_config(text: str) -> AttentionConfig:
    """:func:`~sessionkit.attention.parse_config`, refusing head dims that SDPA's fused backends do
    not take (a multiple of 8, at most 256), before any GPU time is spent. UsageError, one line."""
    cfg = parse_config(text)
    if cfg.head_dim > 256 or cfg.head_dim % 8:
        raise UsageError(f"bad config {str(text)!r}: head_dim must be a multiple of 8, at most 256, "
                         f"to profile; got {cfg.head_dim}")
    return cfg


def target_command(cfg: AttentionConfig, kernel: str, warmup: int) -> list[str]:
    """The argv that runs this module with this interpreter on ``cfg`` and ``kernel``."""
    return [sys.executable, "-m", MODULE, "--config", cfg.spec, "--kernel", kernel,
            "--warmup", str(warmup)]


def target_info(output: str) -> dict:
    """What the target said it ran (its ``PROFILE_TARGET`` line), or {} when it said nothing."""
    for line in reversed(output.splitlines()):
        if line.startswith(INFO_PREFIX):
            try:
                return json.loads(line[len(INFO_PREFIX):])
            except json.JSONDecodeError:
                return {}
    return {}


def gpu_facts() -> tuple[str | None, str | None]:
    """(skip reason, GPU name): torch is asked here, when a profile is about to run, never at import."""
    try:
        import torch
    except ImportError:
        return "torch is not installed, so no kernel can be launched", None
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)", None
    return None, torch.cuda.get_device_name(0)
