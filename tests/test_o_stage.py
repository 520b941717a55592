"""Where the sm90 epilogue stages O in shared memory for its TMA store (csrc/sm90/o_stage.cuh),
checked on the host by tests/data/o_stage_check.cu: at D=64, 128 and 256, both the 4-byte stores and
the stmatrix.x4 path (SK_SM90_STMATRIX_O=1) put every element at the address the 128-byte-swizzled
TMA box reads, exactly once, and each stmatrix matrix's rows fall in distinct bank groups; and the
quad transpose of the 16-byte plain stores (SK_SM90_WIDE_STORE_O=1) gives each lane one n8 tile's
eight columns in order."""

from __future__ import annotations

from host_check import run_host_check


def test_both_store_paths_match_the_tma_layout(tmp_path):
    out = run_host_check("o_stage_check.cu", tmp_path)
    lines = out.splitlines()
    assert lines[-1] == "ok", out
    assert [line.split(":")[0] for line in lines[:-1]] == ["D=64", "D=128", "D=256", "quad transpose"], out
