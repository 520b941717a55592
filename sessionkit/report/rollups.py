"""Per-step figures kept in ``_step_rollups``, so that reading every session does not re-read every
result row.

A step's bench speedups (count, best and geometric mean of our kernel's ``ok`` ``speedup_vs_sdpa``)
and correctness counts (configs, passed, worst ``max_err / bound``) are final once the step has
ended, but rows can still be edited by hand. :func:`refresh` rolls up the steps added since the
last refresh (``steps.rowid`` above the mark in ``_step_rollups_mark``, which also covers merged
steps) and the steps in ``_step_rollups_dirty``, where triggers put every step whose bench or
correctness rows, or whose own session, seq, name or status, changed. Steps without bench rows and
not called ``correctness`` get no row. ``_session_rollups`` is then recomputed for the sessions of
those steps: step counts by status, the last bench step's figures and the last finished
correctness step's.

The table is derived data: its name starts with ``_``, so export and merge leave it out.
"""

from __future__ import annotations

import sqlite3

from .aggregates import ensure_math_functions

_OK_OURS = "impl = 'ours' AND status = 'ok' AND speedup_vs_sdpa IS NOT NULL"


def refresh(db) -> bool:
    """Bring ``_step_rollups`` and ``_session_rollups`` up to date. Returns False when they cannot
    be written now (a database not migrated this far or read-only, a transaction already open on
    this connection, or a lock held past the busy timeout); the caller then computes from the
    result rows. Concurrent refreshes are serialized by the write lock; each reads the mark again
    under it, so none redoes another's work."""
    conn = db.conn
    if conn.in_transaction:
        return False
    try:  # one statement when there is nothing to do
        mark, top, dirty = conn.execute(
            """SELECT (SELECT steps_rowid FROM _step_rollups_mark WHERE id = 1),
                      (SELECT COALESCE(MAX(rowid), 0) FROM steps),
                      EXISTS (SELECT 1 FROM _step_rollups_dirty)""").fetchone()
    except sqlite3.OperationalError:  # an older database, not migrated this far
        return False
    mark = mark or 0
    if top <= mark and not dirty:
        return True
    ensure_math_functions(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return False
    try:
        mark, top = conn.execute(
            """SELECT (SELECT steps_rowid FROM _step_rollups_mark WHERE id = 1),
                      (SELECT COALESCE(MAX(rowid), 0) FROM steps)""").fetchone()
        mark = mark or 0
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _rollup_candidates (id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM _rollup_candidates")
        conn.execute("INSERT OR IGNORE INTO _rollup_candidates SELECT id FROM steps WHERE rowid > ?", [mark])
        conn.execute("INSERT OR IGNORE INTO _rollup_candidates SELECT step_id FROM _step_rollups_dirty")
        # the sessions these steps belong to (or belonged to, for a moved or deleted step)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _rollup_sessions (id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM _rollup_sessions")
        conn.execute("INSERT OR IGNORE INTO _rollup_sessions SELECT session_id FROM steps "
                     "WHERE id IN (SELECT id FROM _rollup_candidates)")
        conn.execute("INSERT OR IGNORE INTO _rollup_sessions SELECT session_id FROM _step_rollups "
                     "WHERE step_id IN (SELECT id FROM _rollup_candidates)")
        conn.execute("DELETE FROM _step_rollups WHERE step_id IN (SELECT id FROM _rollup_candidates)")
        conn.execute(f"""
            INSERT OR REPLACE INTO _step_rollups
                (step_id, session_id, seq, name, status, bench_configs, bench_best, bench_geomean,
                 correctness_configs, correctness_passed, correctness_worst_ratio)
            SELECT st.id, st.session_id, st.seq, st.name, st.status, COALESCE(b.n, 0), b.best, b.geo,
                   COALESCE(c.n, 0), COALESCE(c.passed, 0), c.worst
            FROM steps st
            LEFT JOIN (SELECT step_id, COUNT(*) AS n, MAX(speedup_vs_sdpa) AS best,
                              EXP(AVG(CASE WHEN speedup_vs_sdpa > 0 THEN LN(speedup_vs_sdpa) END)) AS geo
                       FROM bench_results
                       WHERE {_OK_OURS} AND step_id IN (SELECT id FROM _rollup_candidates)
                       GROUP BY step_id) b ON b.step_id = st.id
            LEFT JOIN (SELECT step_id, COUNT(*) AS n, SUM(passed) AS passed,
                              MAX(CASE WHEN bound > 0 THEN max_err / bound END) AS worst
                       FROM correctness_results
                       WHERE step_id IN (SELECT id FROM _rollup_candidates)
                       GROUP BY step_id) c ON c.step_id = st.id
            WHERE st.id IN (SELECT id FROM _rollup_candidates)
              AND (b.n IS NOT NULL OR st.name = 'correctness')""")
        _refresh_sessions(conn)
        conn.execute("UPDATE _step_rollups_mark SET steps_rowid = ? WHERE id = 1", [top])
        conn.execute("DELETE FROM _step_rollups_dirty")
        conn.execute("DELETE FROM _rollup_candidates")
        conn.execute("DELETE FROM _rollup_sessions")
        conn.execute("COMMIT")
    except sqlite3.OperationalError:  # e.g. read-only: leave everything as it was
        conn.execute("ROLLBACK")
        return False
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def _refresh_sessions(conn) -> None:
    """Recompute ``_session_rollups`` for the sessions in ``_rollup_sessions``."""
    affected = "SELECT id FROM _rollup_sessions"
    conn.execute(f"DELETE FROM _session_rollups WHERE session_id IN ({affected})")
    conn.execute(f"""
        INSERT INTO _session_rollups (session_id, steps, passed, failed, interrupted)
        SELECT session_id, COUNT(*), SUM(status = 'passed'), SUM(status = 'failed'),
               SUM(status = 'interrupted')
        FROM steps WHERE session_id IN ({affected}) GROUP BY session_id""")
    conn.execute(f"""
        UPDATE _session_rollups SET (bench_step_id, bench_configs, bench_best, bench_geomean) =
            (SELECT step_id, bench_configs, bench_best, bench_geomean FROM _step_rollups r
             WHERE r.session_id = _session_rollups.session_id AND r.bench_configs > 0
             ORDER BY r.seq DESC LIMIT 1)
        WHERE session_id IN ({affected})""")
    conn.execute(f"""
        UPDATE _session_rollups SET (correctness_status, correctness_configs, correctness_passed,
                                     correctness_worst_ratio) =
            (SELECT status, correctness_configs, correctness_passed, correctness_worst_ratio
             FROM _step_rollups r
             WHERE r.session_id = _session_rollups.session_id AND r.name = 'correctness'
               AND r.status != 'running'
             ORDER BY r.seq DESC LIMIT 1)
        WHERE session_id IN ({affected})""")
