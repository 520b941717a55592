"""The sm90 dispatch policy (csrc/sm90/dispatch.h, pick_variant), printed on the host over a grid of
head dims, masks, split-KV and lengths: it picks only variants that generate_kernels.py
instantiates, and it follows the thresholds the kernel notes measured (D=64 causal: short keys up
to 1024 keys, the mid-keys kernel over 1025-2048 keys when seq_len_q is above 1024 too, the short
keys for shorter query lengths up to 2048 keys, the default kernel above). The -D switches move the
thresholds as their comments say."""

from __future__ import annotations

import pytest

from host_check import run_host_check
from scripts import load_script
from sessionkit.kernels.build import csrc_dir

DEFAULT, SHORT, SPLIT, LONG, MID = 0, 1, 2, 3, 4
NAMES = {DEFAULT: "", SHORT: "shortkeys", SPLIT: "splitkv", LONG: "longkeys", MID: "midkeys"}


def _picks(tmp_path, *flags) -> dict[tuple[int, bool, bool, int, int], int]:
    out = run_host_check("sm90_dispatch_check.cu", tmp_path, flags)
    picks = {}
    for line in out.splitlines():
        d, causal, split, sq, sk, variant = map(int, line.split())
        picks[(d, bool(causal), bool(split), sq, sk)] = variant
    assert len(picks) == 4 * 2 * 2 * 18 * 18, len(picks)
    return picks


def _expected(d, causal, split, sq, sk, short_max=1024, mid_max=2048, mid_queries=1025,
              few_queries_keys_max=2048):
    """The policy, as docs/kernel-notes.md (v22 and after) and sm90/dispatch.h state it: D=64
    causal as the union of three key ranges, each for the query lengths it serves."""
    if split and not causal:
        return SPLIT
    if d == 64 and not causal:
        return SHORT if sk <= 2048 else DEFAULT
    if d == 64:
        short = sk <= short_max or (sq < mid_queries and sk <= few_queries_keys_max)
        mid = short_max < sk <= mid_max and sq >= mid_queries
        assert not (short and mid)
        return SHORT if short else MID if mid else DEFAULT
    if d == 128 and causal:
        return SHORT if sk <= 1024 else DEFAULT
    if d == 128:
        return LONG if sk >= 8192 else DEFAULT
    return DEFAULT


def test_every_pick_is_an_instantiated_kernel(tmp_path):
    generated = load_script(csrc_dir() / "generate_kernels.py")
    for (d, causal, _split, _sq, _sk), variant in _picks(tmp_path).items():
        mask = "causal" if causal else "noncausal"
        if variant != DEFAULT:
            assert NAMES[variant] in generated.VARIANTS.get(("sm90", d, mask), ()), \
                (d, mask, NAMES[variant])
        assert d in generated.FAMILIES["sm90"]


def test_shipped_policy(tmp_path):
    picks = _picks(tmp_path)
    wrong = {key: (got, _expected(*key)) for key, got in picks.items() if got != _expected(*key)}
    assert not wrong, list(wrong.items())[:10]
    # the standard grid's square causal D=64 shapes: short keys to 1024, mid keys at 2048, then
    # the default (long-keys) kernel
    assert [picks[(64, True, False, s, s)] for s in (512, 1024, 1025, 2048, 2049, 16384)] == \
        [SHORT, SHORT, MID, MID, DEFAULT, DEFAULT]
    # short query lengths over mid-range keys (chunked prefill, decode past launch_decode) stay on
    # the two-consumer tile, which was 15-22 % faster there than the mid-keys kernel
    assert {picks[(64, True, False, sq, 2048)] for sq in (1, 64, 128, 256, 512, 1024)} == {SHORT}


@pytest.mark.parametrize("flags, kwargs", [
    (("-DSK_SM90_D64_CAUSAL_SHORT_KEYS_MAX=2048",), dict(short_max=2048)),
    (("-DSK_SM90_D64_CAUSAL_MID_KEYS_MAX=16384",), dict(mid_max=16384)),
    (("-DSK_SM90_D64_CAUSAL_MID_QUERIES_MIN=1",), dict(mid_queries=1)),
    (("-DSK_SM90_D64_CAUSAL_MID_KEYS_MAX=1536",), dict(mid_max=1536)),
    (("-DSK_SM90_D64_CAUSAL_FEW_QUERIES_KEYS_MAX=131072",), dict(few_queries_keys_max=131072)),
], ids=["v21_routing", "mid_keys_at_long_keys", "mid_keys_at_every_query_length",
        "mid_keys_end_at_1536", "few_queries_on_short_keys_at_every_length"])
def test_switches_move_the_thresholds(tmp_path, flags, kwargs):
    """Each switch moves its own threshold and nothing else: the square long shapes keep the
    default kernel under the few-queries switch, and more than 1024 queries over keys past a lower
    mid-keys end take the default kernel, not the short-keys one."""
    picks = _picks(tmp_path, *flags)
    if "few_queries_keys_max" in kwargs:
        assert picks[(64, True, False, 16384, 16384)] == DEFAULT
        assert picks[(64, True, False, 128, 16384)] == SHORT
    if "mid_max" in kwargs and kwargs["mid_max"] < 2048:
        assert picks[(64, True, False, 2048, 2048)] == DEFAULT
        assert picks[(64, True, False, 512, 2048)] == SHORT
    wrong = {key: (got, _expected(*key, **kwargs)) for key, got in picks.items()
             if got != _expected(*key, **kwargs)}
    assert not wrong, list(wrong.items())[:10]
