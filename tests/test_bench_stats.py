"""Statistics of the bench: quantiles, spread, the stopping rule and Mann-Whitney U.

Reference p-values were computed offline with scipy 1.17 (scipy.stats.mannwhitneyu) and are
written here as numbers; scipy is not a dependency.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.bench import stats


def test_quantiles_match_linear_interpolation():
    xs = [7, 1, 3, 5]
    assert stats.median(xs) == 4.0
    assert stats.quantile(xs, 0.25) == 2.5
    assert stats.quantile(xs, 0.75) == 5.5
    assert stats.iqr(xs) == 3.0
    assert stats.median([2.0]) == 2.0
    assert stats.quantile([1, 2, 3, 4, 5], 0.1) == pytest.approx(1.4)
    with pytest.raises(ValueError):
        stats.median([])


def test_mad_and_robust_spread():
    xs = [10.0, 10.1, 9.9, 10.0, 30.0]  # one outlier barely moves the robust spread
    assert stats.mad(xs) == pytest.approx(0.1)
    assert stats.robust_spread(xs) == pytest.approx(stats.MAD_TO_SIGMA * 0.1 / 10.0)
    assert stats.robust_spread([1.0, 2.0]) is None
    err = stats.median_rel_error(xs)
    assert err == pytest.approx(math.sqrt(math.pi / 2) * stats.robust_spread(xs) / math.sqrt(5))


def test_stop_rule_needs_min_samples_then_stops_on_precision():
    rule = stats.StopRule(target_rel=0.01, min_samples=5, time_limit_s=10)
    noisy = [1.0, 1.5, 0.7, 1.3, 0.8, 1.2]
    assert rule.decide([1.0] * 4, 0.1) == (False, "")
    assert rule.decide([1.0, 1.001, 0.999, 1.0, 1.0005], 0.1) == (True, "converged")
    assert rule.decide(noisy, 0.1) == (False, "")
    assert rule.decide(noisy, 10.5) == (True, "time")
    assert rule.decide([1.0] * 5, 0.1) == (True, "converged")  # no spread at all


def test_stop_rule_limits():
    rule = stats.StopRule(target_rel=1e-9, min_samples=3, max_samples=6, time_limit_s=5,
                          hard_limit_s=8)
    noisy = [1.0, 2.0, 3.0]
    assert rule.decide(noisy * 2, 0.0) == (True, "max_samples")
    assert rule.decide(noisy[:2], 4.0) == (False, "")  # under min_samples the soft limit waits
    assert rule.decide(noisy[:2], 9.0) == (True, "time")  # the hard limit does not


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 100.0), min_size=3, max_size=60), st.floats(1.01, 3.0))
def test_more_spread_never_converges_sooner(xs, factor):
    m = stats.median(xs)
    wider = [m + (x - m) * factor for x in xs]
    if min(wider) <= 0:
        return
    a, b = stats.median_rel_error(xs), stats.median_rel_error(wider)
    if a is not None and b is not None:
        assert b >= a - 1e-12


def test_ranks_with_ties():
    ranks, ties = stats.rank_with_ties([3, 1, 3, 2, 3])
    assert ranks == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert sorted(ties) == [1, 1, 3]


def test_exact_u_distribution_small_cases():
    # n1 = n2 = 2: U takes 0..4 with counts 1, 1, 2, 1, 1 (6 orderings)
    assert stats._u_counts(2, 2) == (1, 1, 2, 1, 1)
    assert stats._u_counts(3, 2) == (1, 1, 2, 2, 2, 1, 1)
    for n1, n2 in [(1, 1), (4, 7), (8, 30), (6, 6)]:
        counts = stats._u_counts(n1, n2)
        assert sum(counts) == math.comb(n1 + n2, n1)
        assert counts == counts[::-1]  # symmetric about n1*n2/2


# (x, y, alternative, method, U of x, p from scipy.stats.mannwhitneyu)
SCIPY_CASES = [
    ([1.1, 2.3, 0.4], [3.5, 4.2, 5.0, 2.9], "two-sided", "exact", 0.0, 0.05714285714285714),
    ([1.1, 2.3, 0.4], [3.5, 4.2, 5.0, 2.9], "less", "exact", 0.0, 0.02857142857142857),
    ([5.1, 6.2, 4.4, 7.7, 3.0], [3.5, 4.2, 5.0, 2.9, 1.0, 2.2], "greater", "exact", 26.0,
     0.025974025974025976),
    ([1, 2, 2, 3, 3, 3, 4, 5, 9, 9], [2, 3, 4, 4, 6, 7, 7, 8, 10, 11, 12], "two-sided",
     "asymptotic", 28.5, 0.06534789781389473),
    ([1, 2, 2, 3, 3, 3, 4, 5, 9, 9], [2, 3, 4, 4, 6, 7, 7, 8, 10, 11, 12], "less",
     "asymptotic", 28.5, 0.032673948906947366),
    ([1, 2, 2, 3, 3, 3, 4, 5, 9, 9], [2, 3, 4, 4, 6, 7, 7, 8, 10, 11, 12], "greater",
     "asymptotic", 28.5, 0.9721739653592134),
]


@pytest.mark.parametrize("x, y, alternative, method, u, p", SCIPY_CASES)
def test_mann_whitney_matches_scipy(x, y, alternative, method, u, p):
    got_u, got_p = stats.mann_whitney_u(x, y, alternative=alternative, method=method)
    assert got_u == u
    assert got_p == pytest.approx(p, rel=1e-9)


def test_mann_whitney_auto_picks_exact_for_small_untied_samples():
    x, y = [1.1, 2.3, 0.4], [3.5, 4.2, 5.0, 2.9]
    assert stats.mann_whitney_u(x, y) == stats.mann_whitney_u(x, y, method="exact")
    tied = [1.0, 2.0, 2.0]
    assert stats.mann_whitney_u(tied, y) == stats.mann_whitney_u(tied, y, method="asymptotic")


def test_mann_whitney_textbook_critical_value():
    # n1 = n2 = 10: the two-sided 5 % critical value of U is 23 (standard tables), so
    # U = 23 is significant and U = 24 is not.
    counts = stats._u_counts(10, 10)
    total = math.comb(20, 10)
    p23 = 2 * sum(counts[:24]) / total
    p24 = 2 * sum(counts[:25]) / total
    assert p23 <= 0.05 < p24
    assert p23 == pytest.approx(0.0433, abs=5e-4)


def test_mann_whitney_bad_input():
    with pytest.raises(ValueError):
        stats.mann_whitney_u([], [1.0])
    with pytest.raises(ValueError):
        stats.mann_whitney_u([1.0], [2.0], alternative="sideways")


def test_verdicts():
    base = [1.0 + 0.001 * (i % 7) for i in range(60)]
    slower = [v * 1.10 for v in base]
    faster = [v * 0.90 for v in base]
    tiny = [v * 1.01 for v in base]
    assert stats.compare_samples(base, slower).verdict == "SLOWER"
    assert stats.compare_samples(base, faster).verdict == "FASTER"
    small = stats.compare_samples(base, tiny)
    assert small.verdict == "SAME" and "under" in small.reason  # significant but under 5 %
    same = stats.compare_samples(base, list(reversed(base)))
    assert same.verdict == "SAME" and same.ratio == 1.0
    v = stats.compare_samples(base, slower, min_effect=0.2)
    assert v.verdict == "SAME"
    # a large but noisy difference with few samples is not significant
    assert stats.compare_samples([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]).verdict == "SAME"


def test_geomean():
    assert stats.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert stats.geomean([None, 0.0]) is None


def test_stop_rule_min_time_spans_power_periods():
    rule = stats.StopRule(target_rel=0.01, min_samples=3, time_limit_s=5, min_time_s=1.0)
    steady = [1.0, 1.0005, 0.9995, 1.0]
    assert rule.decide(steady, 0.5) == (False, "")
    assert rule.decide(steady, 1.0) == (True, "converged")


def test_usable_samples():
    xs, flags = [1.0] * 6 + [2.0] * 2, [False] * 6 + [True] * 2
    assert stats.usable_samples(xs, flags) == ([1.0] * 6, False)
    # fewer than five clean ones, or fewer clean than throttled: all samples, flagged
    assert stats.usable_samples(xs[:4] + xs[6:], flags[:4] + flags[6:])[1] is True
    assert stats.usable_samples([1.0] * 6 + [2.0] * 7, [False] * 6 + [True] * 7)[1] is True
    assert stats.usable_samples([1.0, 2.0], [False, False]) == ([1.0, 2.0], False)
