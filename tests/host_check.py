"""Compile a host check from tests/data with nvcc against the kernels' own headers and run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sessionkit import toolchain
from sessionkit.kernels.build import csrc_dir

DATA = Path(__file__).parent / "data"


def run_host_check(source: str, folder: Path, flags: tuple[str, ...] = ()) -> str:
    """Build ``tests/data/<source>`` with ``-I csrc`` (and ``flags``, -D switches say) into
    ``folder`` and return what it prints. Skips the test where nvcc is not found; fails it when the
    build or the run fails."""
    found = toolchain.find_cuda_tool("nvcc")
    if not found.path:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*): cannot compile the check")
    exe = folder / (Path(source).stem + "".join(f.replace("=", "_") for f in flags))
    build = subprocess.run([found.path, "-std=c++17", "-O2", *flags, "-I", str(csrc_dir()), "-o",
                            str(exe), str(DATA / source)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout
