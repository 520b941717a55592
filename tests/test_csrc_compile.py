"""Each kernel file compiles for sm_90a with no spills and runs on the tensor cores (no GPU needed).

Compiles every ``csrc/flash_fwd_*.cu`` to a cubin with nvcc (device code only, in parallel), reads
``-Xptxas -v`` and, where cuobjdump is installed, checks the SASS for HMMA instructions.

Spill budget: zero bytes. Every register array in the kernel is indexed by compile-time constants
after unrolling, so any spill or stack frame means a code change pushed state to local memory, which
costs far more than it saves in this kernel; such a change should be looked at, not tolerated.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sessionkit import toolchain
from sessionkit.kernels.build import csrc_dir, kernel_names
from sessionkit.kernels.ptxas import parse_ptxas

MAX_REGISTERS = 255  # the hardware limit per thread; the kernels are launched with 1 CTA per SM
SPILL_BUDGET_BYTES = 0


def _nvcc() -> str:
    found = toolchain.find_cuda_tool("nvcc")
    if not found.path:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*): cannot compile the kernels")
    return found.path


@pytest.fixture(scope="module")
def compiled():
    nvcc = _nvcc()
    root = csrc_dir()
    names = kernel_names(root)
    out_dir = Path(tempfile.mkdtemp(prefix="sk-csrc-"))

    def one(name):
        cubin = out_dir / f"{name}.cubin"
        cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v", "-cubin",
               *toolchain.arch_flags((9, 0)), "-D__CUDA_NO_HALF_OPERATORS__",
               "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-D__CUDA_NO_HALF2_OPERATORS__", "-I", str(root), "-o", str(cubin),
               str(root / f"{name}.cu")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return name, proc, cubin

    import os

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, names))
    yield results
    shutil.rmtree(out_dir, ignore_errors=True)


def test_every_kernel_compiles_without_spills(compiled):
    assert len(compiled) == 8
    for name, proc, _cubin in compiled:
        assert proc.returncode == 0, f"{name} failed to compile:\n{proc.stderr[-3000:]}"
        res = parse_ptxas(proc.stdout + proc.stderr).get(name)
        assert res is not None, f"no ptxas report for {name}"
        assert res.registers is not None and res.registers <= MAX_REGISTERS
        spilled = res.spill_store_bytes + res.spill_load_bytes
        assert spilled <= SPILL_BUDGET_BYTES, f"{name} spills {spilled} bytes"
        assert res.stack_frame_bytes == 0, f"{name} uses a {res.stack_frame_bytes}-byte stack frame"


def test_kernels_use_tensor_cores(compiled):
    cuobjdump = shutil.which("cuobjdump") or toolchain.find_cuda_tool("cuobjdump").path
    if not cuobjdump:
        pytest.skip("cuobjdump not installed: cannot read the SASS")
    for name, proc, cubin in compiled:
        assert proc.returncode == 0
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                              timeout=120)
        if sass.returncode != 0 and "nvdisasm" in sass.stderr:
            pytest.skip("cuobjdump needs nvdisasm, which is not installed")
        assert sass.returncode == 0, sass.stderr
        hmma = sum(1 for line in sass.stdout.splitlines() if "HMMA.16816.F32" in line)
        # QK^T and PV per key tile: (D/16)*(BlockN/8) + (BlockN/16)*(D/8) mma = 128 for both dims
        assert hmma >= 128, f"{name}: {hmma} HMMA.16816.F32 instructions"
        assert "LDSM" in sass.stdout, f"{name}: no ldmatrix in SASS"
        assert "LDGSTS" in sass.stdout, f"{name}: no cp.async in SASS"
