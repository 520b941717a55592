"""Where a kernel's warps stall, instruction by instruction: Nsight Compute's source page in SASS.

With the section ``SourceCounters`` a profile holds ncu's warp-state samples: at a fixed interval
each SM sub-partition records the program counter of one of its warps and why that warp was or was
not issuing (PC sampling; the reasons are those of the Profiling Guide's "Warp Stall Reasons").
``ncu --import REPORT --page source --csv --print-source sass`` (:func:`source_command`) prints them
as CSV, per kernel::

    "Kernel Name","flash_fwd_sm90_bf16_hdim64_causal",
    "Address","Source","Warp Stall Sampling (All Samples)",...,"Instructions Executed",...,"stall_barrier",...
    "0x7f89637a2800","      LDC R1, c[0x0][0x28]","19","19",...

one row per SASS instruction. :func:`parse_source_csv` reads that into :class:`SourceProfile`
objects (one per kernel table), :meth:`SourceProfile.by_opcode` sums the samples per opcode and
:meth:`SourceProfile.hottest` gives the instructions with the most samples.

Stall reasons are named as in the kernel-level stall metrics of :mod:`~sessionkit.profile.ncu`
(``long_scoreboard``, ``math_pipe_throttle``...; :data:`REASON_NAMES` maps the page's short column
names to them), so that both lists of a report use one vocabulary. ``selected`` is a sample of a
warp that was issuing; :data:`UNLISTED` counts the samples of an instruction that no reason column
accounts for (ncu's total is larger than the sum of its reason columns on some instructions, e.g.
``HGMMA`` on Hopper).

Nothing here runs at import; :func:`export_source` runs ncu.
"""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .ncu import SOURCE_SECTION, ProfileError, parse_number

SOURCE_TIMEOUT_S = 300  # reading a report back; ncu of CUDA 13.0 took a few seconds per kernel

ADDRESS_COLUMN = "Address"
SOURCE_COLUMN = "Source"
SAMPLES_COLUMN = "Warp Stall Sampling (All Samples)"
NOT_ISSUED_COLUMN = "Warp Stall Sampling (Not-issued Samples)"
EXECUTED_COLUMN = "Instructions Executed"
KERNEL_NAME_CELL = "Kernel Name"
REASON_PREFIX = "stall_"
NOT_ISSUED_SUFFIX = " (Not Issued)"

#: The source page's reason columns (``stall_<short>``) -> the reason's name in ncu's stall metrics
#: (``smsp__pcsamp_warps_issue_stalled_<name>``). A column not listed keeps its short name.
REASON_NAMES = {
    "barrier": "barrier",
    "branch_resolving": "branch_resolving",
    "dispatch": "dispatch_stall",
    "drain": "drain",
    "imc": "imc_miss",
    "lg": "lg_throttle",
    "long_sb": "long_scoreboard",
    "math": "math_pipe_throttle",
    "membar": "membar",
    "mio": "mio_throttle",
    "misc": "misc",
    "no_inst": "no_instruction",
    "not_selected": "not_selected",
    "selected": "selected",
    "short_sb": "short_scoreboard",
    "sleep": "sleeping",
    "sleeping": "sleeping",
    "tex": "tex_throttle",
    "wait": "wait",
}
UNLISTED = "unlisted"  # samples of an instruction beyond the sum of its reason columns

TOP_REASONS = 3


class SourceError(ProfileError):
    """ncu's source page could not be exported or read; the message is one line."""


def source_command(ncu: str, report: Path | str) -> list[str]:
    """The argv that prints the SASS source page of ``report`` (an ``.ncu-rep``) as CSV."""
    return [ncu, "--import", str(report), "--page", "source", "--csv", "--print-source", "sass"]


def export_source(ncu: str, report: Path | str, csv_path: Path, timeout: float = SOURCE_TIMEOUT_S
                  ) -> str:
    """Run :func:`source_command`, write what it printed to ``csv_path`` and return it.

    Raises :class:`SourceError` (one line) when ncu cannot be run, does not finish in ``timeout``
    seconds or exits non-zero; ``csv_path`` then holds whatever ncu printed (stdout, then stderr).
    """
    cmd = source_command(ncu, report)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SourceError(f"ncu --page source did not finish in {timeout:.0f} s") from None
    except OSError as exc:
        raise SourceError(f"ncu --page source could not run: {exc.strerror or exc}") from None
    csv_path.write_text(proc.stdout + (proc.stderr if proc.returncode else ""))
    if proc.returncode != 0:
        said = _first_line(proc.stderr) or _first_line(proc.stdout) or "no output"
        raise SourceError(f"ncu --page source exited with status {proc.returncode}: {said}")
    return proc.stdout


def _first_line(text: str, limit: int = 200) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


# ---------------------------------------------------------------------------------------------------
# Records


def opcode_of(sass: str) -> str:
    """The mnemonic of a SASS instruction without its predicate and modifiers:
    ``"@!P0  BRA 0x7f..."`` -> ``"BRA"``, ``"MUFU.EX2 R68, R68"`` -> ``"MUFU"``; ``"?"`` for none."""
    tokens = sass.replace("{", " ").replace(";", " ").split()
    while tokens and tokens[0].startswith("@"):
        tokens.pop(0)
    if not tokens:
        return "?"
    return tokens[0].split(".")[0] or "?"


def _count(text) -> int:
    """A sample or instruction count from a cell: ``"1,234"`` -> 1234; ``"-"``, ``""``, junk,
    negative or not finite -> 0."""
    value = parse_number(text)
    if value is None or value <= 0:
        return 0
    return int(round(min(value, 2.0 ** 62)))


@dataclass(frozen=True)
class SassInstruction:
    """One row of the source page: a SASS instruction and its warp samples.

    ``offset`` is in bytes from the kernel's first listed instruction (None when an address is not
    hexadecimal); ``samples`` counts every warp sample at this instruction (issuing or stalled, at
    least the sum of ``stalls``); ``stalls`` maps each reason (:data:`REASON_NAMES`) to its samples;
    ``not_issued`` counts the samples of warps that were not issuing; ``executed`` is ncu's
    "Instructions Executed" (warp-level, None when the column is absent).
    """

    index: int
    address: str
    offset: int | None
    sass: str
    opcode: str
    samples: int
    not_issued: int
    stalls: dict[str, int] = field(default_factory=dict)
    executed: int | None = None

    def reasons(self) -> dict[str, int]:
        """Reason -> samples, with :data:`UNLISTED` for samples that no reason column holds."""
        out = {k: v for k, v in self.stalls.items() if v > 0}
        rest = self.samples - sum(self.stalls.values())
        if rest > 0:
            out[UNLISTED] = out.get(UNLISTED, 0) + rest
        return out


@dataclass(frozen=True)
class OpcodeStalls:
    """The samples of every instruction of one opcode: ``share_pct`` is their share (%) of all the
    kernel's samples; ``reasons`` are [(reason, % of this opcode's samples)], most first."""

    opcode: str
    samples: int
    share_pct: float
    not_issued: int
    instructions: int
    executed: int | None
    reasons: list[tuple[str, float]]


def top_reasons(counts: dict[str, int], n: int = TOP_REASONS) -> list[tuple[str, float]]:
    """The ``n`` reasons with most samples as [(reason, % of all ``counts``)], ties by name."""
    total = sum(counts.values())
    if total <= 0:
        return []
    ranked = sorted(((k, v) for k, v in counts.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    return [(k, 100.0 * v / total) for k, v in ranked[:n]]


@dataclass
class SourceProfile:
    """The SASS table of one kernel in ncu's source page: its instructions in listing order."""

    kernel_name: str
    instructions: list[SassInstruction]
    reason_columns: list[str] = field(default_factory=list)

    @property
    def total_samples(self) -> int:
        return sum(i.samples for i in self.instructions)

    def share_pct(self, samples: int) -> float:
        """``samples`` as a share (%) of the kernel's samples; 0.0 when it has none."""
        total = self.total_samples
        return 100.0 * samples / total if total else 0.0

    def by_opcode(self, n_reasons: int = TOP_REASONS) -> list[OpcodeStalls]:
        """Every opcode of the listing, most samples first (ties by name)."""
        groups: dict[str, list[SassInstruction]] = {}
        for ins in self.instructions:
            groups.setdefault(ins.opcode, []).append(ins)
        out = []
        for opcode, items in groups.items():
            reasons: dict[str, int] = {}
            for ins in items:
                for reason, count in ins.reasons().items():
                    reasons[reason] = reasons.get(reason, 0) + count
            executed = [i.executed for i in items if i.executed is not None]
            samples = sum(i.samples for i in items)
            out.append(OpcodeStalls(opcode=opcode, samples=samples,
                                    share_pct=self.share_pct(samples),
                                    not_issued=sum(i.not_issued for i in items),
                                    instructions=len(items),
                                    executed=sum(executed) if executed else None,
                                    reasons=top_reasons(reasons, n_reasons)))
        return sorted(out, key=lambda o: (-o.samples, o.opcode))

    def hottest(self, n: int = 10) -> list[SassInstruction]:
        """The ``n`` instructions with most samples (none without samples), ties in listing order."""
        ranked = sorted((i for i in self.instructions if i.samples > 0),
                        key=lambda i: (-i.samples, i.index))
        return ranked[:n]


# ---------------------------------------------------------------------------------------------------
# Reading the CSV


def _is_header(row: list[str]) -> bool:
    cells = [c.strip() for c in row]
    return ADDRESS_COLUMN in cells and SOURCE_COLUMN in cells


def _reason_of(column: str) -> str:
    short = column[len(REASON_PREFIX):]
    return REASON_NAMES.get(short, short)


class _Table:
    def __init__(self, kernel_name: str, header: list[str]):
        self.kernel_name = kernel_name
        self.header = [c.strip() for c in header]
        self.rows: list[list[str]] = []

    def profile(self) -> SourceProfile:
        where = {name: i for i, name in reversed(list(enumerate(self.header)))}
        reason_cols = [(i, _reason_of(name)) for i, name in enumerate(self.header)
                       if name.startswith(REASON_PREFIX) and not name.endswith(NOT_ISSUED_SUFFIX)
                       and len(name) > len(REASON_PREFIX)]
        if SAMPLES_COLUMN not in where and not reason_cols:
            raise SourceError(f"ncu's source page has no warp stall samples for "
                              f"{self._name()}: no {SAMPLES_COLUMN!r} column and no stall_* "
                              f"columns (was the profile taken with --section {SOURCE_SECTION}?)")

        def cell(row: list[str], column: str) -> str | None:
            i = where.get(column)
            return row[i] if i is not None and i < len(row) else None

        parsed = []
        for row in self.rows:
            sass = (cell(row, SOURCE_COLUMN) or "").strip()
            address = (cell(row, ADDRESS_COLUMN) or "").strip()
            if not sass and not address:
                continue
            stalls: dict[str, int] = {}
            for i, reason in reason_cols:
                if i < len(row):
                    stalls[reason] = stalls.get(reason, 0) + _count(row[i])
            listed = sum(stalls.values())
            samples = max(_count(cell(row, SAMPLES_COLUMN)), listed)
            executed = cell(row, EXECUTED_COLUMN)
            parsed.append(SassInstruction(
                index=len(parsed), address=address, offset=None, sass=sass,
                opcode=opcode_of(sass), samples=samples,
                not_issued=min(_count(cell(row, NOT_ISSUED_COLUMN)), samples),
                stalls=stalls, executed=None if executed is None else _count(executed)))
        if not parsed:
            raise SourceError(f"ncu's source page lists no instructions for {self._name()} "
                              "(only its header)")
        return SourceProfile(self.kernel_name, _with_offsets(parsed),
                             sorted({reason for _, reason in reason_cols}))

    def _name(self) -> str:
        name = self.kernel_name if len(self.kernel_name) <= 120 else self.kernel_name[:117] + "..."
        return f"kernel {name!r}" if name else "the kernel"


def _hex(text: str) -> int | None:
    try:
        return int(text, 16) if text.lower().startswith("0x") else None
    except ValueError:
        return None


def _with_offsets(items: list[SassInstruction]) -> list[SassInstruction]:
    addresses = [_hex(i.address) for i in items]
    known = [a for a in addresses if a is not None]
    if not known:
        return items
    base = min(known)
    return [SassInstruction(i.index, i.address, None if a is None else a - base, i.sass, i.opcode,
                            i.samples, i.not_issued, i.stalls, i.executed)
            for i, a in zip(items, addresses)]


def parse_source_csv(text: str) -> list[SourceProfile]:
    """Each kernel's SASS table in ncu's ``--page source --csv`` output, in the order printed.

    A ``"Kernel Name","NAME",`` row names the table that follows; each ``"Address","Source",...``
    header starts a table; lines before the first header (``==PROF==``, warnings) are skipped. Cells
    are read with :func:`~sessionkit.profile.ncu.parse_number` (``"1,234"``); ``"-"``, empty or
    missing cells count 0. Raises :class:`SourceError` (one line) when there is no table, or a table
    has no instructions or no sample columns.
    """
    if not isinstance(text, str):
        raise SourceError("ncu's source page is not text")
    try:
        rows = list(csv.reader(io.StringIO(text.replace("\x00", ""), newline="")))
    except csv.Error as exc:
        raise SourceError(f"ncu's source page is not CSV: {exc}") from None
    tables: list[_Table] = []
    name = ""
    for row in rows:
        if not row or not any(c.strip() for c in row):
            continue
        if row[0].strip() == KERNEL_NAME_CELL:
            name = row[1].strip() if len(row) > 1 else ""
            continue
        if _is_header(row):
            tables.append(_Table(name, row))
            name = ""
            continue
        if tables:
            tables[-1].rows.append(row)
    if not tables:
        first = _first_line(text, 80)
        raise SourceError("no SASS table in ncu's source page (no \"Address\",\"Source\" header)"
                          + (f"; it begins {first!r}" if first else ": it is empty"))
    return [t.profile() for t in tables]


def pick_kernel(profiles: Iterable[SourceProfile], name: str | None) -> SourceProfile:
    """The table of the kernel named ``name`` (the one the profile step classified), else the one
    with most samples; among several of that name, the one with most samples (the longest launch,
    as samples come at a fixed interval). Raises :class:`SourceError` when there is none."""
    profiles = list(profiles)
    if not profiles:
        raise SourceError("ncu's source page holds no kernel")
    named = [p for p in profiles if name and p.kernel_name == name]
    return max(named or profiles, key=lambda p: p.total_samples)


# ---------------------------------------------------------------------------------------------------
# What the profile step stores


def opcode_rows(profile: SourceProfile) -> list[dict]:
    """:meth:`SourceProfile.by_opcode` as JSON objects, opcodes without samples left out:
    ``{opcode, samples, share_pct, not_issued, instructions, executed, reasons: [[name, %], ...]}``.
    Shares are kept unrounded, so that whoever shows them rounds once (a share rounded to 2
    decimals and then shown to 1, 9.648 -> 9.65 -> 9.7, is wrong)."""
    return [{"opcode": o.opcode, "samples": o.samples, "share_pct": o.share_pct,
             "not_issued": o.not_issued, "instructions": o.instructions, "executed": o.executed,
             "reasons": [[r, p] for r, p in o.reasons]}
            for o in profile.by_opcode() if o.samples > 0]


def hottest_rows(profile: SourceProfile, n: int = 10) -> list[dict]:
    """:meth:`SourceProfile.hottest` as JSON objects:
    ``{index, offset, sass, opcode, samples, share_pct, reasons: [[name, %], ...]}``, shares
    unrounded (as :func:`opcode_rows`)."""
    return [{"index": i.index, "offset": i.offset, "sass": i.sass, "opcode": i.opcode,
             "samples": i.samples, "share_pct": profile.share_pct(i.samples),
             "reasons": [[r, p] for r, p in top_reasons(i.reasons())]}
            for i in profile.hottest(n)]


__all__ = ["ADDRESS_COLUMN", "EXECUTED_COLUMN", "NOT_ISSUED_COLUMN", "REASON_NAMES",
           "SAMPLES_COLUMN", "SOURCE_COLUMN", "SOURCE_SECTION", "SOURCE_TIMEOUT_S", "UNLISTED",
           "OpcodeStalls", "SassInstruction", "SourceError", "SourceProfile", "export_source",
           "hottest_rows", "opcode_of", "opcode_rows", "parse_source_csv", "pick_kernel",
           "source_command", "top_reasons"]
