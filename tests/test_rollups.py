"""The per-step and per-session rollups that history reads give the same figures as the result rows,
after every kind of change: new steps, edited or deleted result rows, status changes, merges."""

from __future__ import annotations

import uuid

import pytest
from fixtures_db import NOW, _bench, build_fixture_db, sid, stid

from sessionkit.report import aggregates, rollups
from sessionkit.report.history import history_data


def _direct(db, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(rollups, "refresh", lambda db: False)
        return history_data(db, now=NOW)["sessions"], aggregates.bench_speedups(db), \
            aggregates.correctness_by_session(db)


def _same(db, monkeypatch):
    direct = _direct(db, monkeypatch)
    rolled = (history_data(db, now=NOW)["sessions"], aggregates.bench_speedups(db),
              aggregates.correctness_by_session(db))
    assert _approx_equal(rolled, direct)
    return rolled


def _approx_equal(a, b) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_approx_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return all(_approx_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and b is not None:
        assert a == pytest.approx(b, rel=1e-12)
        return True
    assert a == b
    return True


def test_rollups_match_the_result_rows_through_changes(tmp_path, monkeypatch):
    db = build_fixture_db(tmp_path / "f.db")
    rows, speedups, _ = _same(db, monkeypatch)
    assert rows[1]["best_speedup"] == pytest.approx(5.0 / 4.2)
    assert db.execute("SELECT COUNT(*) FROM _session_rollups").fetchone()[0] == 3  # 4 has no steps

    with db.conn:  # edited and deleted result rows
        db.execute("UPDATE bench_results SET speedup_vs_sdpa = 9.5 WHERE impl = 'ours' AND step_id = ?",
                   [stid(1, 4)])
        db.execute("DELETE FROM correctness_results WHERE step_id = ? AND idx = 3", [stid(2, 3)])
    rows, _, corr = _same(db, monkeypatch)
    assert rows[0]["best_speedup"] == 9.5 and corr[sid(2)]["configs"] == 3

    with db.conn:  # a running bench step in the open session, then more rows, then it ends
        step = str(uuid.uuid4())
        db["steps"].insert({"id": step, "session_id": sid(4), "seq": 1, "name": "bench", "status": "running",
                            "started_at": "2026-01-07T11:01:00+00:00", "host": "h", "pid": 1})
    rows, _, _ = _same(db, monkeypatch)
    assert rows[3]["best_speedup"] is None
    with db.conn:
        _bench(db, step, ours_ms=(0.5, 4.0, 0.3, 2.0), sdpa_ms=(0.5, 5.0, 0.25, 2.8), flash_ms=(1, 9, 1, 5))
    rows, _, _ = _same(db, monkeypatch)
    assert rows[3]["best_speedup"] == pytest.approx(1.4)
    with db.conn:
        db.execute("UPDATE steps SET status = 'passed', ended_at = ? WHERE id = ?", [NOW, step])
        db.execute("UPDATE steps SET status = 'interrupted' WHERE id = ?", [stid(1, 3)])
    rows, _, corr = _same(db, monkeypatch)
    assert rows[3]["passed"] == 1 and corr[sid(1)]["status"] == "interrupted"

    with db.conn:  # a later correctness step replaces the earlier one; a deleted step disappears
        db["steps"].insert({"id": str(uuid.uuid4()), "session_id": sid(1), "seq": 9, "name": "correctness",
                            "status": "passed", "started_at": NOW, "ended_at": NOW, "host": "h", "pid": 1})
        db.execute("DELETE FROM bench_samples WHERE result_id IN (SELECT id FROM bench_results WHERE step_id = ?)",
                   [stid(3, 2)])
    rows, _, corr = _same(db, monkeypatch)
    assert corr[sid(1)] == {"status": "passed", "configs": 0, "passed": 0, "worst_ratio": None}


def test_merged_sessions_are_rolled_up(tmp_path, monkeypatch):
    from sessionkit.db import open_db
    from sessionkit.merge import merge_database

    a = build_fixture_db(tmp_path / "a.db")
    fresh = open_db(tmp_path / "fresh.db", create=True)
    history_data(fresh, now=NOW)  # rolled up while empty
    merge_database(fresh, a.path)
    rows, _, _ = _same(fresh, monkeypatch)
    assert [r["number"] for r in rows] == [1, 2, 3]
    assert rows[1]["best_speedup"] == pytest.approx(5.0 / 4.2)
    # derived tables are not merged or exported
    assert fresh.execute("SELECT COUNT(*) FROM _step_rollups").fetchone()[0] > 0
    from sessionkit.sessions import export_session, get_session

    assert not any(k.startswith("_") for k in export_session(fresh, get_session(fresh, 1)))


def test_concurrent_history_commands_agree(tmp_path, monkeypatch):
    """Four `sessionkit history --json` processes at once on a database whose rollups are not built
    yet: each waits for the write lock or finds the work done, and all print the same rows."""
    import json
    import os
    import subprocess
    import sys

    db = build_fixture_db(tmp_path / "f.db")
    expected = _direct(db, monkeypatch)[0]
    db.conn.close()
    env = {**os.environ, "SESSIONKIT_DB": str(tmp_path / "f.db")}
    procs = [subprocess.Popen([sys.executable, "-m", "sessionkit", "history", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    for out, _ in outs:
        rows = json.loads(out)["sessions"]
        assert [(r["number"], r["passed"], r["best_speedup"], r["correctness"]) for r in rows] == \
            [(r["number"], r["passed"], r["best_speedup"], r["correctness"]) for r in expected]
