"""Finding the CUDA toolchain and choosing arch flags: shared by preflight, build and profile.

Nothing here imports torch; callers pass torch facts in when they have them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Found:
    path: str | None  # absolute path of the tool, or None
    on_path: bool  # found through $PATH (False: found in CUDA_HOME or /usr/local/cuda*)
    where: str  # "PATH", "CUDA_HOME", "/usr/local/cuda-13.0", or "nowhere"


def find_cuda_tool(tool: str) -> Found:
    """Find ``nvcc``/``ncu``/``compute-sanitizer``: $PATH, then $CUDA_HOME/bin, then /usr/local/cuda*/bin."""
    hit = shutil.which(tool)
    if hit:
        return Found(os.path.realpath(hit), True, "PATH")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            cand = Path(home) / "bin" / tool
            if cand.is_file() and os.access(cand, os.X_OK):
                return Found(str(cand), False, var)
    extra = {"ncu": ["/opt/nvidia/nsight-compute/*"]}.get(tool, [])
    roots = sorted(glob.glob("/usr/local/cuda*"), reverse=True) + [
        r for pattern in extra for r in sorted(glob.glob(pattern), reverse=True)
    ]
    for root in roots:
        for cand in (Path(root) / "bin" / tool, Path(root) / tool):
            if cand.is_file() and os.access(cand, os.X_OK):
                return Found(str(cand), False, root)
    return Found(None, False, "nowhere")


def _read_head(path: str, limit: int = 4096) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read(limit)


def cuda_home_for(nvcc_path: str, *, read_text=_read_head, is_file=os.path.isfile,
                  env: dict | None = None) -> str:
    """The CUDA toolkit folder (with ``include/cuda_runtime.h``) that goes with an nvcc.

    Usually the parent of nvcc's ``bin/``. An nvcc that is a wrapper script outside a toolkit
    (``/usr/local/bin/nvcc`` doing ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) is followed to the
    toolkit it runs; then ``$CUDA_HOME``, ``$CUDA_PATH`` and ``/usr/local/cuda`` are tried. When none has headers, the plain
    parent is returned and callers report the missing headers. ``read_text``, ``is_file`` and
    ``env`` let tests substitute the file system.
    """
    env = os.environ if env is None else env

    def is_toolkit(home: str | None) -> bool:
        return bool(home) and is_file(str(Path(home) / "include" / "cuda_runtime.h"))

    home = str(Path(nvcc_path).resolve().parent.parent)
    if is_toolkit(home):
        return home
    try:
        text = read_text(nvcc_path)
    except OSError:
        text = ""
    if "\0" not in text:
        for match in re.finditer(r"(/[^\s\"';]+)/bin/nvcc\b", text):
            if is_toolkit(match.group(1)):
                return match.group(1)
    for candidate in (env.get("CUDA_HOME"), env.get("CUDA_PATH"), "/usr/local/cuda"):
        if is_toolkit(candidate):
            return candidate
    return home


_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+)")


def nvcc_version(nvcc_path: str, timeout: float = 20.0) -> str | None:
    """``"13.0"`` for an nvcc binary, or None when it does not answer."""
    try:
        out = subprocess.run([nvcc_path, "--version"], capture_output=True, text=True,
                             timeout=timeout).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _NVCC_RELEASE.search(out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def arch_flags(capability: tuple[int, int] | None) -> list[str]:
    """nvcc ``-gencode`` flags for a GPU's compute capability.

    Hopper (9.0) gets ``sm_90a`` so that wgmma and setmaxnreg are available; other GPUs get their own
    SASS plus PTX for forward compatibility. With no GPU known, build for Hopper.
    """
    if capability is None or tuple(capability) == (9, 0):
        return ["-gencode=arch=compute_90a,code=sm_90a"]
    major, minor = capability
    cc = f"{major}{minor}"
    return [f"-gencode=arch=compute_{cc},code=sm_{cc}", f"-gencode=arch=compute_{cc},code=compute_{cc}"]


def arch_label(capability: tuple[int, int] | None) -> str:
    if capability is None or tuple(capability) == (9, 0):
        return "sm_90a"
    return f"sm_{capability[0]}{capability[1]}"


def build_cache_root() -> Path:
    """Where built kernels are cached: $SESSIONKIT_BUILD_DIR, else $XDG_CACHE_HOME/sessionkit/build."""
    env = os.environ.get("SESSIONKIT_BUILD_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sessionkit" / "build"
