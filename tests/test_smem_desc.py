"""Advancing a wgmma shared-memory descriptor by an offset (``smem_desc_advance`` in
csrc/sm90/ptx.cuh, which rebuilds Q's descriptors per key block with SK_SM90_Q_DESC_PER_BLOCK)
gives the descriptor of the advanced address: checked on the host, from the kernels' own header,
for every tile base and k-step offset the sm90 shapes use."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sessionkit import toolchain
from sessionkit.kernels.build import csrc_dir

HERE = Path(__file__).parent


def test_advanced_descriptor_equals_the_rebuilt_one(tmp_path):
    found = toolchain.find_cuda_tool("nvcc")
    if not found.path:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*): cannot compile the check")
    exe = tmp_path / "smem_desc_check"
    build = subprocess.run([found.path, "-std=c++17", "-O2", "-I", str(csrc_dir()), "-o", str(exe),
                            str(HERE / "data" / "smem_desc_check.cu")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cases, bad = (int(x) for x in run.stdout.split()[1::2])
    assert cases > 10000 and bad == 0, run.stdout
