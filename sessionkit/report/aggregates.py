"""Per-session figures for all sessions at once, each from one aggregate SQL query.

History and the pattern evidence read every session; they use these so that the number of queries
does not grow with the number of sessions.
"""

from __future__ import annotations

import json
import math
import statistics


def table_exists(db, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                      [name]).fetchone() is not None


def geomean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ensure_math_functions(conn) -> None:
    """``ln`` and ``exp`` in SQL, from Python's math module where SQLite was built without them."""
    try:
        conn.execute("SELECT ln(2.0), exp(0.0)").fetchone()
    except Exception:  # sqlite3.OperationalError: no such function
        conn.create_function("ln", 1, lambda x: math.log(x) if x is not None and x > 0 else None,
                             deterministic=True)
        conn.create_function("exp", 1, lambda x: math.exp(x) if x is not None else None,
                             deterministic=True)


def last_per_session(rows) -> dict:
    """session_id -> the row of its highest ``seq`` (the last of equal ones), from rows whose first
    two items are ``(session_id, seq)``."""
    out: dict = {}
    seqs: dict = {}
    for row in rows:
        session_id, seq = row[0], row[1]
        if seqs.get(session_id, -1) > seq:
            continue
        seqs[session_id] = seq
        out[session_id] = row
    return out


def bench_speedups(db) -> dict[str, dict]:
    """session_id -> {"geomean", "best", "configs", "step_id"} from the session's last bench step.

    Speedups are the ``speedup_vs_sdpa`` of our kernel's ``ok`` rows in ``bench_results``; the
    geometric mean skips values that are not positive. Read from the per-step rollups
    (:mod:`sessionkit.report.rollups`), else aggregated in SQL per step; the last step per session
    is picked here.
    """
    if not table_exists(db, "bench_results"):
        return {}
    from . import rollups

    if rollups.refresh(db):
        rows = db.execute(
            """SELECT session_id, seq, step_id, bench_configs, bench_best, bench_geomean
               FROM _step_rollups WHERE bench_configs > 0""").fetchall()
    else:
        ensure_math_functions(db.conn)
        rows = db.execute(
            """SELECT st.session_id, st.seq, st.id, p.n, p.best, p.geo
               FROM (SELECT step_id, COUNT(*) AS n, MAX(speedup_vs_sdpa) AS best,
                            EXP(AVG(CASE WHEN speedup_vs_sdpa > 0 THEN LN(speedup_vs_sdpa) END)) AS geo
                     FROM bench_results
                     WHERE impl = 'ours' AND status = 'ok' AND speedup_vs_sdpa IS NOT NULL
                     GROUP BY step_id) p
               JOIN steps st ON st.id = p.step_id""").fetchall()
    return {session_id: {"geomean": geo, "best": best, "configs": n, "step_id": step_id}
            for session_id, (_, _, step_id, n, best, geo) in last_per_session(rows).items()}


def correctness_by_session(db) -> dict[str, dict]:
    """session_id -> the last finished correctness step: {"status", "configs", "passed", "worst_ratio"}."""
    from . import rollups

    if table_exists(db, "correctness_results") and rollups.refresh(db):
        rows = db.execute(
            """SELECT session_id, seq, status, correctness_configs, correctness_passed,
                      correctness_worst_ratio
               FROM _step_rollups WHERE name = 'correctness' AND status != 'running'""").fetchall()
    elif table_exists(db, "correctness_results"):
        rows = db.execute(
            """SELECT st.session_id, st.seq, st.status, COUNT(cr.step_id), SUM(cr.passed),
                      MAX(CASE WHEN cr.bound > 0 THEN cr.max_err / cr.bound END)
               FROM steps st LEFT JOIN correctness_results cr ON cr.step_id = st.id
               WHERE st.name = 'correctness' AND st.status != 'running'
               GROUP BY st.id""").fetchall()
    else:
        rows = db.execute("""SELECT session_id, seq, status, 0, 0, NULL FROM steps
                             WHERE name = 'correctness' AND status != 'running'""").fetchall()
    return {session_id: {"status": status, "configs": configs or 0, "passed": passed or 0,
                         "worst_ratio": worst}
            for session_id, (_, _, status, configs, passed, worst) in last_per_session(rows).items()}


def step_counts(db) -> dict[str, dict]:
    """session_id -> counts of steps by status and seconds lost to interrupted steps."""
    out = {}
    for sid, total, passed, failed, interrupted, skipped, lost in db.execute(
            """SELECT session_id, COUNT(*), SUM(status = 'passed'), SUM(status = 'failed'),
                      SUM(status = 'interrupted'), SUM(status = 'skipped'),
                      SUM(CASE WHEN status = 'interrupted' THEN COALESCE(duration_s, 0) ELSE 0 END)
               FROM steps GROUP BY session_id""").fetchall():
        out[sid] = {"steps": total, "passed": passed or 0, "failed": failed or 0,
                    "interrupted": interrupted or 0, "skipped": skipped or 0,
                    "interrupted_s": lost or 0.0}
    return out


def step_durations(db, name: str) -> dict[str, float]:
    """session_id -> total seconds spent in finished steps called ``name`` (retries included)."""
    return {sid: total for sid, total in db.execute(
        """SELECT session_id, SUM(duration_s) FROM steps
           WHERE name = ? AND status != 'running' AND duration_s IS NOT NULL
           GROUP BY session_id""", [name]).fetchall()}


def step_failures(db, name: str) -> dict[str, float]:
    """session_id -> failed runs of step ``name``, for sessions that ran it at least once."""
    return {sid: float(n or 0) for sid, n in db.execute(
        """SELECT session_id, SUM(status = 'failed') FROM steps
           WHERE name = ? AND status != 'running' GROUP BY session_id""", [name]).fetchall()}


def step_metric(db, step_name: str, key: str, subject: str | None = None) -> dict[str, float]:
    """session_id -> the metric ``key`` (and ``subject``) of the last step called ``step_name``."""
    sql = """SELECT st.session_id, st.seq, m.value FROM metrics m JOIN steps st ON st.id = m.step_id
             WHERE st.name = ? AND m.key = ? AND m.value IS NOT NULL"""
    args = [step_name, key]
    if subject is not None:
        sql += " AND m.subject = ?"
        args.append(subject)
    sql += " ORDER BY st.seq, m.id"
    out: dict[str, float] = {}
    for sid, _seq, value in db.execute(sql, args).fetchall():
        out[sid] = value  # ordered by seq: the last one wins
    return out


def decode_json(text, default=None):
    if text is None:
        return default
    if isinstance(text, (dict, list)):
        return text
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested too deep
        return default
