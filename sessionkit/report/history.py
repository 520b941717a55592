"""The history of all sessions, and the trend of the last ones against those before them.

A fixed handful of aggregate queries, whatever the number of sessions: a database of 1,000
sessions renders in well under a second (``benchmarks/history_speed.py`` measures it).
"""

from __future__ import annotations

from ..timefmt import now_iso, parse_iso
from . import aggregates
from .aggregates import median

TREND_WINDOW = 5


def history_data(db, *, now: str | None = None) -> dict:
    """One row per session (oldest first) and the trend, as plain data.

    Durations are seconds (to ``now`` for open sessions); ``cost_usd`` is the GPU and AI rates in USD
    per hour times the duration (None when neither rate is set); speedups are ratios over SDPA.
    """
    now = now or now_iso()
    now_dt = parse_iso(now)
    counts = aggregates.step_counts(db)
    correctness = aggregates.correctness_by_session(db)
    speedups = aggregates.bench_speedups(db)
    no_counts: dict = {}
    no_bench: dict = {}
    rows = []
    for (sid, number, name, status, objective, outcome, started, ended, gpu_rate,
         ai_rate) in db.execute(
            """SELECT id, number, name, status, objective, outcome, started_at, ended_at,
                      gpu_rate_usd_per_h, ai_rate_usd_per_h FROM sessions ORDER BY number"""):
        duration = ((parse_iso(ended) if ended else now_dt) - parse_iso(started)).total_seconds()
        if gpu_rate is None and ai_rate is None:
            cost = None
        else:  # as costs.session_costs: the rates times the wall time, never below zero
            wall = max(0.0, duration)
            cost = ((gpu_rate * wall / 3600.0) if gpu_rate is not None else 0.0) + \
                   ((ai_rate * wall / 3600.0) if ai_rate is not None else 0.0)
        c = counts.get(sid, no_counts)
        bench = speedups.get(sid, no_bench)
        rows.append({
            "id": sid, "number": number, "name": name, "status": status, "objective": objective,
            "outcome": outcome, "started_at": started, "ended_at": ended,
            "duration_s": duration, "open": status == "open",
            "cost_usd": cost,
            "steps": c.get("steps", 0), "passed": c.get("passed", 0), "failed": c.get("failed", 0),
            "interrupted": c.get("interrupted", 0),
            "correctness": correctness.get(sid),
            "geomean_speedup": bench.get("geomean"), "best_speedup": bench.get("best"),
            "bench_configs": bench.get("configs"),
        })
    return {"sessions": rows, "trend": trend(rows), "generated_at": now}


def history_table(rows: list[dict]) -> str:
    """The body rows of the history table, one Markdown line per session.

    Written out here rather than in the template: a Jinja loop costs about 50 us a row, which is
    seconds at 100,000 sessions.
    """
    from .render import f_date, f_dur, f_money, f_short, f_times

    lines = []
    for s in rows:
        c = s["correctness"]
        if not c:
            corr = "not run"
        elif c["configs"]:
            corr = f"{c['passed']}/{c['configs']} {c['status']}"
        else:
            corr = c["status"]
        steps = f"{s['passed']}/{s['failed']}"
        if s["interrupted"]:
            steps += f" ({s['interrupted']} interrupted)"
        if s["outcome"]:
            outcome = f_short(s["outcome"], 60)
        else:
            outcome = "open" if s["open"] else s["status"]
        lines.append(
            f"| {s['number']} | {f_short(s['name'], 40)} | {f_date(s['started_at'])} | "
            f"{f_dur(s['duration_s'])}{' (open)' if s['open'] else ''} | {f_money(s['cost_usd'])} | "
            f"{steps} | {corr} | {f_times(s['best_speedup'])} | {f_times(s['geomean_speedup'])} | "
            f"{outcome} |")
    return "\n".join(lines)


def _share(items, test) -> float | None:
    items = list(items)
    return sum(1 for i in items if test(i)) / len(items) if items else None


TREND_FIGURES = (
    # key, label, better, format, function of a group of rows
    ("geomean_speedup", "geomean speedup vs SDPA (median)", "higher", "ratio",
     lambda g: median(r["geomean_speedup"] for r in g)),
    ("best_speedup", "best speedup vs SDPA (median)", "higher", "ratio",
     lambda g: median(r["best_speedup"] for r in g)),
    ("duration_s", "session duration (median)", "lower", "duration",
     lambda g: median(r["duration_s"] for r in g)),
    ("cost_usd", "session cost (median)", "lower", "money",
     lambda g: median(r["cost_usd"] for r in g)),
    ("steps_passed_share", "steps passed (share)", "higher", "share",
     lambda g: (sum(r["passed"] for r in g) / sum(r["steps"] for r in g))
     if sum(r["steps"] for r in g) else None),
    ("correctness_passed_share", "correctness passed (share of sessions that ran it)", "higher", "share",
     lambda g: _share((r for r in g if r["correctness"]), lambda r: r["correctness"]["status"] == "passed")),
)


def trend(rows: list[dict], window: int = TREND_WINDOW) -> dict | None:
    """The last ``window`` ended sessions against the ``window`` before them.

    With fewer than ``2 * window`` ended sessions, both groups shrink to half of what there is;
    with fewer than two there is no trend (None).
    """
    ended = [r for r in rows if not r["open"]]
    k = min(window, len(ended) // 2)
    if k == 0:
        return None
    recent, before = ended[-k:], ended[-2 * k:-k]
    figures = []
    for key, label, better, fmt, fn in TREND_FIGURES:
        a, b = fn(recent), fn(before)
        if a is None and b is None:
            continue
        direction = None
        if a is not None and b is not None:
            if a == b:
                direction = "same"
            else:
                direction = "better" if (a > b) == (better == "higher") else "worse"
        figures.append({"key": key, "label": label, "recent": a, "before": b, "format": fmt,
                        "direction": direction})
    return {"window": k, "recent": [r["number"] for r in recent],
            "before": [r["number"] for r in before], "figures": figures}
