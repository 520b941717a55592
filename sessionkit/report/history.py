"""The history of all sessions, and the trend of the last ones against those before them.

A fixed handful of aggregate queries, whatever the number of sessions: a database of 1,000
sessions renders in well under a second (``benchmarks/history_speed.py`` measures it).
"""

from __future__ import annotations

from ..costs import session_costs
from ..timefmt import now_iso, seconds_between
from . import aggregates
from .aggregates import median

TREND_WINDOW = 5


def history_data(db, *, now: str | None = None) -> dict:
    """One row per session (oldest first) and the trend, as plain data."""
    now = now or now_iso()
    counts = aggregates.step_counts(db)
    correctness = aggregates.correctness_by_session(db)
    speedups = aggregates.bench_speedups(db)
    rows = []
    for s in db.execute(
            """SELECT id, number, name, status, objective, outcome, started_at, ended_at,
                      gpu_rate_usd_per_h, ai_rate_usd_per_h FROM sessions ORDER BY number""").fetchall():
        (sid, number, name, status, objective, outcome, started, ended, gpu_rate, ai_rate) = s
        session = {"started_at": started, "ended_at": ended, "gpu_rate_usd_per_h": gpu_rate,
                   "ai_rate_usd_per_h": ai_rate}
        cost = session_costs(session, [], now=now)
        c = counts.get(sid, {})
        corr = correctness.get(sid)
        bench = speedups.get(sid, {})
        rows.append({
            "id": sid, "number": number, "name": name, "status": status, "objective": objective,
            "outcome": outcome, "started_at": started, "ended_at": ended,
            "duration_s": seconds_between(started, ended or now), "open": status == "open",
            "cost_usd": cost["total_usd"],
            "steps": c.get("steps", 0), "passed": c.get("passed", 0), "failed": c.get("failed", 0),
            "interrupted": c.get("interrupted", 0),
            "correctness": corr,
            "geomean_speedup": bench.get("geomean"), "best_speedup": bench.get("best"),
            "bench_configs": bench.get("configs"),
        })
    return {"sessions": rows, "trend": trend(rows), "generated_at": now}


def _share(items, test) -> float | None:
    items = list(items)
    return sum(1 for i in items if test(i)) / len(items) if items else None


def _correctness_ran(row) -> bool:
    """Correctness ran in this session: it passed or failed (skipped or interrupted is not a run)."""
    return bool(row["correctness"]) and row["correctness"]["status"] in ("passed", "failed")


def _correctness_value(row) -> float | None:
    return (1.0 if row["correctness"]["status"] == "passed" else 0.0) if _correctness_ran(row) else None


def _steps_share(row) -> float | None:
    return row["passed"] / row["steps"] if row["steps"] else None


TREND_FIGURES = (
    # key, label, better, format, function of a group of rows, value of one row (tested)
    ("geomean_speedup", "geomean speedup vs SDPA (median)", "higher", "ratio",
     lambda g: median(r["geomean_speedup"] for r in g), lambda r: r["geomean_speedup"]),
    ("best_speedup", "best speedup vs SDPA (median)", "higher", "ratio",
     lambda g: median(r["best_speedup"] for r in g), lambda r: r["best_speedup"]),
    ("duration_s", "session duration (median)", "lower", "duration",
     lambda g: median(r["duration_s"] for r in g), lambda r: r["duration_s"]),
    ("cost_usd", "session cost (median)", "lower", "money",
     lambda g: median(r["cost_usd"] for r in g), lambda r: r["cost_usd"]),
    ("steps_passed_share", "steps passed (share)", "higher", "share",
     lambda g: (sum(r["passed"] for r in g) / sum(r["steps"] for r in g))
     if sum(r["steps"] for r in g) else None, _steps_share),
    ("correctness_passed_share", "correctness passed (share of sessions that ran it)", "higher", "share",
     lambda g: _share((r for r in g if _correctness_ran(r)), lambda r: r["correctness"]["status"] == "passed"),
     _correctness_value),
)

# As ``sessionkit compare`` does for samples: a change counts only when a Mann-Whitney U test of the
# per-session values rejects at TREND_ALPHA and the medians differ by at least TREND_MIN_EFFECT. With
# five sessions a side the test can reject at 5 %; with three or fewer it never can, and says so.
TREND_ALPHA = 0.05
TREND_MIN_EFFECT = 0.05


def trend_direction(recent: list[float], before: list[float], better: str, *,
                    alpha: float = TREND_ALPHA, min_effect: float = TREND_MIN_EFFECT):
    """(direction, note) of per-session values: ``better``/``worse`` only for a significant change of
    at least ``min_effect`` (relative to the earlier median); ``same`` otherwise, with the reason;
    (None, "no data") when a side has no value."""
    from ..bench.stats import mann_whitney_u

    if not recent or not before:
        return None, "no data"
    a, b = median(recent), median(before)
    if len(recent) < 2 or len(before) < 2:
        return "same", "too few sessions for a test"
    _, p = mann_whitney_u(recent, before, alternative="two-sided")
    if p >= alpha:
        return "same", f"not significant, p={p:.2g}"
    effect = abs(a - b) / abs(b) if b else (0.0 if a == b else float("inf"))
    if effect < min_effect:
        return "same", f"under {min_effect:.0%}"
    return ("better" if (a > b) == (better == "higher") else "worse"), f"p={p:.2g}"


def trend(rows: list[dict], window: int = TREND_WINDOW) -> dict | None:
    """The last ``window`` ended sessions against the ``window`` before them.

    With fewer than ``2 * window`` ended sessions, both groups shrink to half of what there is;
    with fewer than two there is no trend (None). Each figure's direction comes from
    :func:`trend_direction` on the per-session values.
    """
    ended = [r for r in rows if not r["open"]]
    k = min(window, len(ended) // 2)
    if k == 0:
        return None
    recent, before = ended[-k:], ended[-2 * k:-k]
    figures = []
    for key, label, better, fmt, fn, value in TREND_FIGURES:
        a, b = fn(recent), fn(before)
        if a is None and b is None:
            continue
        values_a = [v for v in map(value, recent) if v is not None]
        values_b = [v for v in map(value, before) if v is not None]
        direction, note = trend_direction(values_a, values_b, better)
        figures.append({"key": key, "label": label, "recent": a, "before": b, "format": fmt,
                        "direction": direction, "note": note,
                        "n_recent": len(values_a), "n_before": len(values_b)})
    return {"window": k, "recent": [r["number"] for r in recent],
            "before": [r["number"] for r in before], "figures": figures,
            "alpha": TREND_ALPHA, "min_effect": TREND_MIN_EFFECT}
