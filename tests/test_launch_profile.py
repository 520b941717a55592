"""benchmarks/launch_profile.py: grouping the profiler's device activity into calls and summing
each call's kernel time and span."""

from __future__ import annotations

import pytest
from scripts import load_script


def _module():
    return load_script("benchmarks/launch_profile.py")


def test_calls_split_evenly_and_gaps_are_span_less_kernels():
    lp = _module()
    events = []
    for call in range(3):
        t0 = 1000.0 * call
        events.append(("Memset (Device)", t0, t0 + 2.0 + call))  # 2, 3, 4 us
        events.append(("flash_fwd_kernel", t0 + 5.0, t0 + 105.0))  # 100 us, 3 us after the memset
    groups = lp.per_call(events, 3)
    assert [len(g) for g in groups] == [2, 2, 2]
    summary = lp.summarize(groups)
    assert summary["kernels"] == [("Memset (Device)", 3.0), ("flash_fwd_kernel", 100.0)]
    assert summary["busy_us"] == pytest.approx(103.0)
    assert summary["span_us"] == pytest.approx(105.0)


def test_a_count_that_does_not_divide_is_refused():
    lp = _module()
    with pytest.raises(ValueError, match="not the same per call"):
        lp.per_call([("k", 0.0, 1.0)] * 5, 2)
    with pytest.raises(ValueError):
        lp.per_call([], 2)


def test_groups_whose_kernels_differ_are_refused():
    lp = _module()
    events = [("a", 0.0, 1.0), ("b", 2.0, 3.0), ("a", 10.0, 11.0), ("c", 12.0, 13.0)]
    with pytest.raises(ValueError, match="call 2 launched other kernels"):
        lp.per_call(events, 2)
