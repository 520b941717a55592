"""Reading compiler output: per-kernel resources from ``-Xptxas -v`` and the first error of a build.

Pure functions over text, so that they are tested on captured logs without a GPU or a compiler.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_ENTRY = re.compile(r"ptxas info\s*:\s*Compiling entry function '([^']+)'")
_PROPS = re.compile(r"ptxas info\s*:\s*Function properties for (\S+)")
_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*:\s*Used (\d+) registers(.*)")
_SMEM = re.compile(r"(\d+) bytes smem")
# "ptxas info : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized due
# to <reason> in the function '<name>'": every wgmma of the kernel waits for the one before.
_SERIALIZED = re.compile(r"\((C\d+)\)[^:]*: wgmma\.mma_async instructions are serialized\s*(.*?)\s*"
                         r"in the function '([^']+)'")


@dataclass
class KernelResources:
    """What ptxas reports for one kernel (shared memory: the static part only)."""

    name: str
    registers: int | None = None
    static_smem_bytes: int = 0
    stack_frame_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    # ptxas's reason when it serialized the kernel's wgmma ("C7514: due to non wgmma instructions
    # reading accumulator registers ..."), else None
    wgmma_serialized: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_ptxas(text: str) -> dict[str, KernelResources]:
    """Kernel name -> resources, from the ``ptxas info`` lines of a (possibly interleaved) log.

    Entry functions only: device functions' "Function properties" blocks without a following
    "Used N registers" line for an entry are ignored. A kernel compiled twice keeps its last report.
    ptxas's "wgmma.mma_async instructions are serialized" warning, which names its kernel, sets
    that kernel's ``wgmma_serialized`` wherever in the log it stands.
    """
    kernels: dict[str, KernelResources] = {}
    serialized: dict[str, str] = {}
    current: str | None = None  # entry whose "Used ... registers" line is still to come
    props_for: str | None = None  # function whose spill line comes next
    for line in text.splitlines():
        match = _SERIALIZED.search(line)
        if match:
            reason = " ".join(match.group(2).split())
            serialized[match.group(3)] = f"{match.group(1)}: {reason}" if reason else match.group(1)
            continue
        match = _ENTRY.search(line)
        if match:
            current = match.group(1)
            kernels[current] = KernelResources(current)
            continue
        match = _PROPS.search(line)
        if match:
            props_for = match.group(1)
            continue
        match = _SPILLS.search(line)
        if match and props_for is not None:
            if props_for in kernels:
                res = kernels[props_for]
                res.stack_frame_bytes = int(match.group(1))
                res.spill_store_bytes = int(match.group(2))
                res.spill_load_bytes = int(match.group(3))
            props_for = None
            continue
        match = _USED.search(line)
        if match and current is not None:
            res = kernels[current]
            res.registers = int(match.group(1))
            smem = _SMEM.search(match.group(2))
            res.static_smem_bytes = int(smem.group(1)) if smem else 0
            current = None
    for name, reason in serialized.items():
        if name in kernels:
            kernels[name].wgmma_serialized = reason
    return {name: res for name, res in kernels.items() if res.registers is not None}


# nvcc front end: "path/file.cu(123): error: message"
_NVCC_ERR = re.compile(r"^(?P<file>[^\s(][^(]*?)\((?P<line>\d+)\): (?:catastrophe |fatal )?error[^:]*: ?(?P<msg>.*)$")
# gcc / clang: "path/file.cpp:12:5: error: message" (column optional; "fatal error" too)
_GCC_ERR = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$")
# ptxas: "ptxas /tmp/x.ptx, line 12; error   : message"
_PTXAS_ERR = re.compile(r"^ptxas (?P<file>\S+), line (?P<line>\d+); error\s*: (?P<msg>.*)$")
# linker: "/usr/bin/ld: ...: undefined reference to ..."
_LD_ERR = re.compile(r"(?:^|\s)(?:/\S*/)?ld(?:\.\w+)?: (?P<msg>.*)$")


def first_compile_error(log: str) -> str | None:
    """The first compiler error of a build log as ``file:line: message``, or None if it has none.

    Falls back to the linker's first complaint, then to the first line that says "error".
    """
    for raw in log.splitlines():
        line = raw.strip()
        for pattern in (_NVCC_ERR, _GCC_ERR, _PTXAS_ERR):
            match = pattern.match(line)
            if match:
                return f"{match.group('file')}:{match.group('line')}: {match.group('msg').strip()}"
    for raw in log.splitlines():
        match = _LD_ERR.search(raw.strip())
        if match and ("undefined" in raw or "cannot find" in raw or "error" in raw):
            return f"link: {match.group('msg').strip()}"
    for raw in log.splitlines():
        line = raw.strip()
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("[") and "-Werror" not in line:
            return line[:300]
    return None
