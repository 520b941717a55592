"""The history of all sessions, and the trend of the last ones against those before them.

A fixed handful of queries, whatever the number of sessions: one query over the sessions, their
step counts and the per-step rollups of bench and correctness results (``report/rollups.py``).
``benchmarks/history_speed.py`` measures it on generated databases of 1,000 to 100,000 sessions.
"""

from __future__ import annotations

from ..costs import session_costs
from ..timefmt import now_iso, seconds_between
from . import aggregates
from .aggregates import median

TREND_WINDOW = 5


_SESSIONS = """SELECT id, number, name, status, objective, outcome, started_at, ended_at,
                       gpu_rate_usd_per_h, ai_rate_usd_per_h, host, origin_number, imported_from"""

_ROLLUPS = """SELECT session_id, steps, passed, failed, interrupted, bench_best, bench_geomean,
                      bench_configs, correctness_status, correctness_configs, correctness_passed,
                      correctness_worst_ratio FROM _session_rollups"""
_NO_ROLLUP = (0, 0, 0, 0, None, None, None, None, None, None, None)


def _joined_rows(db):
    """(session rows, {session id: figures}) from two sequential scans, sessions and
    ``_session_rollups``, joined here by id (faster than a join in SQL over UUID keys); None when
    the rollups cannot be brought up to date."""
    from . import rollups

    if not (aggregates.table_exists(db, "bench_results") and aggregates.table_exists(db, "correctness_results")
            and rollups.refresh(db)):
        return None
    figures = {row[0]: row[1:] for row in db.execute(_ROLLUPS).fetchall()}
    return db.execute(f"{_SESSIONS} FROM sessions ORDER BY number").fetchall(), figures


def _dict_rows(db):
    """The same as :func:`_joined_rows`, from the per-session aggregates."""
    counts = aggregates.step_counts(db)
    correctness = aggregates.correctness_by_session(db)
    speedups = aggregates.bench_speedups(db)
    figures = {}
    for sid in counts.keys() | correctness.keys() | speedups.keys():
        c, b, k = counts.get(sid, {}), speedups.get(sid, {}), correctness.get(sid)
        figures[sid] = (c.get("steps", 0), c.get("passed", 0), c.get("failed", 0), c.get("interrupted", 0),
                        b.get("best"), b.get("geomean"), b.get("configs"),
                        *((k["status"], k["configs"], k["passed"], k["worst_ratio"]) if k else (None,) * 4))
    return db.execute(f"{_SESSIONS} FROM sessions ORDER BY number").fetchall(), figures


def history_data(db, *, now: str | None = None, table: list[str] | None = None) -> dict:
    """One row per session (oldest first) and the trend, as plain data.

    A session merged from another database (``sessionkit merge``) keeps its ``host``,
    ``origin_number`` and ``imported_from``; its Markdown line names the host and that number.

    Durations are seconds (to ``now`` for open sessions); ``cost_usd`` is the GPU and AI rates in USD
    per hour times the duration (None when neither rate is set); speedups are ratios over SDPA.
    A fixed number of queries whatever the number of sessions.

    With ``table``, also appends to it the history table's Markdown line for each row, written in
    the same pass (the cells are those of the filters in :mod:`.render`). A Jinja loop would cost
    about 50 us a row, seconds at 100,000 sessions.
    """
    import datetime as _dt

    from .render import DASH, f_date, f_dur, f_money, f_short

    def short(text, length):  # f_short, without its work for the common plain short text
        if text.__class__ is str and text and len(text) <= length and "|" not in text \
                and text.isprintable():
            return text
        return f_short(text, length)

    now = now or now_iso()
    parse = _dt.datetime.fromisoformat
    now_dt = parse(now)
    source = _joined_rows(db)
    if source is None:
        source = _dict_rows(db)
    rows = []
    append = rows.append
    line = table.append if table is not None else None
    sessions, figures = source
    get = figures.get
    for (sid, number, name, status, objective, outcome, started, ended, gpu_rate, ai_rate, host,
         origin_number, imported_from) in sessions:
        (steps, passed, failed, interrupted, best, geo, configs,
         c_status, c_configs, c_passed, c_worst) = get(sid, _NO_ROLLUP)
        try:
            duration = ((parse(ended) if ended else now_dt) - parse(started)).total_seconds()
        except (ValueError, TypeError):  # a stored time that is not one (a damaged row)
            duration = seconds_between(started, ended or now) or 0.0
        if gpu_rate is None and ai_rate is None:
            cost = None
        else:  # as costs.session_costs: the rates times the wall time, never below zero
            wall = duration if duration > 0 else 0.0
            try:
                cost = ((gpu_rate * wall / 3600.0) if gpu_rate is not None else 0.0) + \
                       ((ai_rate * wall / 3600.0) if ai_rate is not None else 0.0)
            except TypeError:  # a stored rate that is not a number
                cost = session_costs({"started_at": started, "ended_at": ended,
                                      "gpu_rate_usd_per_h": gpu_rate,
                                      "ai_rate_usd_per_h": ai_rate}, [], now=now)["total_usd"]
        is_open = status == "open"
        passed, failed, interrupted = passed or 0, failed or 0, interrupted or 0
        correctness = None if c_status is None else {
            "status": c_status, "configs": c_configs or 0, "passed": c_passed or 0, "worst_ratio": c_worst}
        append({
            "id": sid, "number": number, "name": name, "status": status, "objective": objective,
            "outcome": outcome, "started_at": started, "ended_at": ended,
            "duration_s": duration, "open": is_open, "cost_usd": cost,
            "steps": steps, "passed": passed, "failed": failed, "interrupted": interrupted,
            "correctness": correctness,
            "geomean_speedup": geo, "best_speedup": best, "bench_configs": configs,
            "host": host, "origin_number": origin_number, "imported_from": imported_from,
        })
        if line is None:
            continue
        if correctness is None:
            corr = "not run"
        elif c_configs:
            corr = f"{c_passed or 0}/{c_configs} {c_status}"
        else:
            corr = c_status
        shown = short(name, 40)
        if imported_from is not None:
            shown += f" (imported from {short(host or 'unknown host', 40)} #{origin_number})"
        line(
            f"| {number} | {shown} | "
            f"{started[:10] if started.endswith('+00:00') else f_date(started)} | "
            f"{f_dur(duration)}{' (open)' if is_open else ''} | "
            f"{f_money(cost)} | "
            f"{passed}/{failed}{f' ({interrupted} interrupted)' if interrupted else ''} | "
            f"{corr} | {DASH if best is None else f'{best:.2f}x'} | "
            f"{DASH if geo is None else f'{geo:.2f}x'} | "
            f"{short(outcome, 60) if outcome else ('open' if is_open else status)} |")
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
    ``untested`` when a side has fewer than two sessions (no test can tell); (None, "no data") when a
    side has no value."""
    from ..bench.stats import mann_whitney_u

    if not recent or not before:
        return None, "no data"
    a, b = median(recent), median(before)
    if len(recent) < 2 or len(before) < 2:
        return "untested", "too few sessions for a test"
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
