"""Advancing a wgmma shared-memory descriptor by an offset (``smem_desc_advance`` in
csrc/sm90/ptx.cuh, which rebuilds Q's descriptors per key block with SK_SM90_Q_DESC_PER_BLOCK and
K's and V's from their ring slot's with SK_SM90_DESC_ADVANCE) gives the descriptor of the advanced
address: checked on the host, from the kernels' own header, for every tile base and k-step offset
the sm90 shapes use."""

from __future__ import annotations

from host_check import run_host_check


def test_advanced_descriptor_equals_the_rebuilt_one(tmp_path):
    out = run_host_check("smem_desc_check.cu", tmp_path)
    cases, bad = (int(x) for x in out.split()[1::2])
    assert cases > 10000 and bad == 0, out
