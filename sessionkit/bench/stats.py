"""Robust statistics for timings: median, quartiles, a noise-based stopping rule and the
Mann-Whitney U test. Pure Python, no numpy or scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

# 1 / Phi^-1(3/4): scales a median absolute deviation to a normal standard deviation.
MAD_TO_SIGMA = 1.482602218505602
# The median of n normal samples has a standard error of about sqrt(pi/2) * sigma / sqrt(n).
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)


def quantile(values, q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default method)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values) -> float:
    return quantile(values, 0.5)


def iqr(values) -> float:
    return quantile(values, 0.75) - quantile(values, 0.25)


def mad(values) -> float:
    """Median absolute deviation from the median."""
    m = median(values)
    return median([abs(v - m) for v in values])


def robust_spread(values) -> float | None:
    """Relative spread: MAD scaled to a standard deviation, over the median (nvbench's "stdrel",
    made robust to the occasional outlier). None with fewer than 3 values or a zero median."""
    if len(values) < 3:
        return None
    m = median(values)
    if m == 0:
        return None
    return MAD_TO_SIGMA * mad(values) / abs(m)


def median_rel_error(values) -> float | None:
    """Estimated relative standard error of the median of ``values``."""
    spread = robust_spread(values)
    if spread is None:
        return None
    return MEDIAN_SE_FACTOR * spread / math.sqrt(len(values))


def usable_samples(samples, excluded, *, min_clean: int = 5) -> tuple[list[float], bool]:
    """The samples a median should use: those not flagged in ``excluded``, when at least
    ``min_clean`` and at least half of all remain; else all of them (the flagged state is then
    the GPU's steady state, and the unflagged few would be a biased pick). Returns (samples,
    whether flagged ones are included)."""
    samples = list(samples)
    clean = [s for s, t in zip(samples, excluded) if not t]
    if len(clean) == len(samples):
        return samples, False
    if len(clean) >= min_clean and 2 * len(clean) >= len(samples):
        return clean, False
    return samples, True


@dataclass
class StopRule:
    """When to stop sampling one implementation on one config.

    Stop once there are ``min_samples``, ``min_time_s`` has passed (so that the samples span a few
    of the GPU's power-management periods) and the median is known to ``target_rel`` (relative
    standard error); or at ``max_samples``; or when ``time_limit_s`` has passed (with at least
    ``min_samples`` unless ``hard_limit_s`` passed too).
    """

    target_rel: float = 0.002
    min_samples: int = 10
    max_samples: int = 2000
    time_limit_s: float = 2.0
    hard_limit_s: float | None = None
    min_time_s: float = 0.0

    def decide(self, samples, elapsed_s: float) -> tuple[bool, str]:
        n = len(samples)
        if self.hard_limit_s is not None and elapsed_s >= self.hard_limit_s:
            return True, "time"
        if n >= self.max_samples:
            return True, "max_samples"
        if n < self.min_samples:
            return False, ""
        if elapsed_s >= self.time_limit_s:
            return True, "time"
        if elapsed_s < self.min_time_s:
            return False, ""
        err = median_rel_error(samples)
        if err is not None and err <= self.target_rel:
            return True, "converged"
        if err is None:  # all equal: nothing more to learn
            return True, "converged"
        return False, ""


# --------------------------------------------------------------------------------------------
# Mann-Whitney U


def rank_with_ties(values) -> tuple[list[float], list[int]]:
    """Mid-ranks (1-based) of ``values`` and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@lru_cache(maxsize=64)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many of the C(n1+n2, n1) orderings of the two samples give each value of U.

    These are the coefficients of the Gaussian binomial [n1+n2 choose n1]_q, the polynomial
    prod_{i=1..m} (1 - q^(k+i)) / (1 - q^i) with m = min(n1, n2), k = max(n1, n2): m polynomial
    multiplications and exact divisions of length n1*n2 + 1, in integers.
    """
    m, k = min(n1, n2), max(n1, n2)
    size = m * k + 1
    poly = [0] * size
    poly[0] = 1
    for i in range(1, m + 1):
        a = k + i
        for u in range(size - 1, a - 1, -1):  # times (1 - q^a)
            poly[u] -= poly[u - a]
        for u in range(i, size):  # divided by (1 - q^i): a running sum with stride i
            poly[u] += poly[u - i]
    return tuple(poly)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def mann_whitney_u(x, y, *, alternative: str = "two-sided", method: str = "auto",
                   continuity: bool = True) -> tuple[float, float]:
    """The Mann-Whitney U test of ``x`` against ``y``: (U of x, p-value).

    U of x counts pairs with x > y (ties count one half). ``alternative`` is ``two-sided``,
    ``greater`` (x tends to be larger) or ``less``. ``method``: ``exact`` (the exact null
    distribution, no tie correction), ``asymptotic`` (normal approximation with tie and continuity
    corrections) or ``auto`` (exact when one sample has at most 8 values and there are no ties).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"bad alternative {alternative!r}")
    ranks, ties = rank_with_ties(list(x) + list(y))
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1
    if alternative == "greater":
        u, factor = u1, 1
    elif alternative == "less":
        u, factor = u2, 1
    else:
        u, factor = max(u1, u2), 2
    has_ties = any(t > 1 for t in ties)
    if method == "auto":
        method = "exact" if (min(n1, n2) <= 8 and not has_ties) else "asymptotic"
    if method == "exact":
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        start = math.ceil(u)
        p = sum(counts[start:]) / total
    elif method == "asymptotic":
        n = n1 + n2
        tie_term = sum(t ** 3 - t for t in ties)
        var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
        num = u - n1 * n2 / 2 - (0.5 if continuity else 0.0)
        if var <= 0:
            p = 1.0
        else:
            p = _normal_sf(num / math.sqrt(var))
    else:
        raise ValueError(f"bad method {method!r}")
    return u1, min(1.0, factor * p)


@dataclass
class Verdict:
    verdict: str  # FASTER | SLOWER | SAME
    ratio: float | None  # median(new) / median(old): above 1 is slower
    p_value: float | None
    reason: str


def compare_samples(old, new, *, min_effect: float = 0.05, alpha: float = 0.01) -> Verdict:
    """Is ``new`` (latencies) faster, slower or the same as ``old``?

    Different only when the Mann-Whitney test rejects at ``alpha`` AND the medians differ by at
    least ``min_effect`` (relative): a tiny but consistent shift is SAME.
    """
    if not old or not new:
        return Verdict("SAME", None, None, "no samples on one side")
    m_old, m_new = median(old), median(new)
    if m_old <= 0:
        return Verdict("SAME", None, None, "old median is not positive")
    ratio = m_new / m_old
    if len(old) < 2 or len(new) < 2:
        return Verdict("SAME", ratio, None, "too few samples for a test")
    _, p = mann_whitney_u(new, old, alternative="two-sided")
    effect = abs(ratio - 1.0)
    if p >= alpha:
        return Verdict("SAME", ratio, p, f"not significant (p={p:.2g})")
    if effect < min_effect:
        return Verdict("SAME", ratio, p, f"significant but under {min_effect:.0%}")
    return Verdict("SLOWER" if ratio > 1 else "FASTER", ratio, p, f"p={p:.2g}")


def geomean(values) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
