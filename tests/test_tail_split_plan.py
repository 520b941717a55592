"""The tail split of the sm90 non-causal kernels (csrc/sm90/tail_split.cuh), checked on the host:
tests/data/tail_split_check.cu walks every piece of about 200,000 plans and checks that each
(tail tile, key block) runs exactly once, that no CTA runs more than its quota of key blocks, that a
tile's pieces are numbered in key order and fit its scratch slots, and that the plan is off only
where it saves less than its minimum. The GPU side (the merge) is in test_kernel_gpu_variants.py."""

from __future__ import annotations

from host_check import run_host_check


def test_every_piece_of_every_plan(tmp_path):
    out = run_host_check("tail_split_check.cu", tmp_path)
    lines = out.splitlines()
    assert lines[-1].startswith("checked ") and int(lines[-1].split()[1]) > 100_000, out
    plans = {tuple(map(int, line.split()[1:4])): tuple(map(int, line.split()[5:8]))
             for line in lines if line.startswith("plan ")}
    # D=128, B*S = 16384, 16 heads: 2048 tiles, 15.5 rounds of 132; the last 68 tiles of 32 key
    # blocks (S = 4096) become 17 key blocks per CTA, at most 3 pieces per tile.
    assert plans[(2048, 132, 32)] == (68, 17, 3)
    # D=256 at B=4, H=8, S=4096: 1024 tiles, the last 100 of 52 key blocks of 80 -> 40 per CTA.
    assert plans[(1024, 132, 52)] == (100, 40, 3)
    # One tile row over long keys (8 query tiles, 94 key blocks): 6 key blocks per CTA.
    assert plans[(8, 132, 94)] == (8, 6, 17)
