"""Keep or stop the GPU: idle time and its cost, the measured restart cost, and the advice line."""

from __future__ import annotations

import json
import socket
import uuid

from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.idle import SOON_S, format_idle, idle_state, restart_seconds
from sessionkit.sessions import start_session
from sessionkit.timefmt import now_iso

HOST = socket.gethostname()


def _iso(minute: float, day: int = 1) -> str:
    h, m = divmod(int(minute), 60)
    s = int(round((minute - int(minute)) * 60))
    return f"2026-02-{day:02d}T{h:02d}:{m:02d}:{s:02d}+00:00"


def _past_session(db, n, host, build_after_min, *, build_status="passed", rate=2.0):
    sid = str(uuid.uuid4())
    db["sessions"].insert({"id": sid, "number": n, "name": f"s{n}", "objective": "o", "status": "passed",
                           "started_at": _iso(0, day=n), "ended_at": _iso(50, day=n), "host": host,
                           "gpu_rate_usd_per_h": rate})
    for seq, (name, status, end) in enumerate([("preflight", "passed", 1), ("build", "failed", build_after_min / 2),
                                              ("build", build_status, build_after_min),
                                              ("build", "passed", build_after_min + 20)], 1):
        db["steps"].insert({"id": str(uuid.uuid4()), "session_id": sid, "seq": seq, "name": name,
                            "status": status, "started_at": _iso(0, day=n), "ended_at": _iso(end, day=n),
                            "duration_s": 1.0, "host": host, "pid": 1})
    return sid


def _open_session(db, last_step_end: str | None):
    s = start_session(db, "now", objective="keep or stop", gpu_rate=3.6, force=True)
    if last_step_end:
        db["steps"].insert({"id": str(uuid.uuid4()), "session_id": s["id"], "seq": 1, "name": "bench",
                            "status": "passed", "started_at": s["started_at"], "ended_at": last_step_end,
                            "duration_s": 1.0, "host": HOST, "pid": 1})
    return s


def _steps(db, s):
    return [dict(r) for r in db.query("SELECT * FROM steps WHERE session_id = ?", [s["id"]])]


def test_restart_cost_is_the_median_first_passed_build_on_this_host(db):
    for n, minutes in enumerate((4, 6, 10), 1):
        _past_session(db, n, HOST, minutes)
    _past_session(db, 4, "other-host", 1)  # another host's history does not count
    _past_session(db, 5, HOST, 3, build_status="failed")  # its first passed build is at 23 min
    assert sorted(restart_seconds(db, HOST)) == [240.0, 360.0, 600.0, 1380.0]
    assert sorted(restart_seconds(db, HOST, limit=2)) == [600.0, 1380.0]  # the latest two (days 3, 5)
    s = _open_session(db, None)
    state = idle_state(db, s, _steps(db, s), host=HOST)
    assert state["restart_s"] == 480.0 and state["restart_sessions"] == 4
    assert abs(state["restart_usd"] - 3.6 * 480 / 3600) < 1e-9


def test_advice_when_idling_soon_costs_more_than_a_restart(db):
    for n, minutes in enumerate((10, 10, 10), 1):
        _past_session(db, n, HOST, minutes)
    s = _open_session(db, "2026-03-01T12:00:00+00:00")
    steps = _steps(db, s)

    early = idle_state(db, s, steps, now="2026-03-01T12:01:00+00:00", host=HOST)
    assert early["idle_s"] == 60.0 and abs(early["idle_usd"] - 0.06) < 1e-9
    assert early["advice"] is None  # 9 minutes to go: nothing to advise yet

    soon = idle_state(db, s, steps, now="2026-03-01T12:07:00+00:00", host=HOST)
    assert 600 - 420 <= SOON_S
    assert soon["advice"].startswith("in 3m00s idling costs more than a restart (10m00s, $0.60)")

    late = idle_state(db, s, steps, now="2026-03-01T12:25:00+00:00", host=HOST)
    assert late["advice"].startswith("idle for longer than a restart takes")
    text = format_idle(late)
    assert "idle:      25m00s since the last step ($1.50 at $3.60/h)" in text
    assert "restart:   10m00s, median start-to-first-passed-build of 3 sessions" in text
    assert "advice:    idle for longer" in text


def test_no_history_says_so_and_running_step_is_not_idle(db):
    s = _open_session(db, None)
    state = idle_state(db, s, _steps(db, s), host=HOST)
    assert state["restart_s"] is None and "no restart history" in state["advice"]
    db["steps"].insert({"id": str(uuid.uuid4()), "session_id": s["id"], "seq": 1, "name": "build",
                        "status": "running", "started_at": now_iso(), "host": HOST, "pid": 1})
    state = idle_state(db, s, _steps(db, s), host=HOST)
    assert state["running"] and state["idle_s"] is None
    assert "a step is running" in format_idle(state)


def test_status_shows_idle_and_restart(db):
    for n, minutes in enumerate((2, 3, 4), 1):
        _past_session(db, n, HOST, minutes)
    _open_session(db, "2026-01-01T00:00:00+00:00")  # long ago: idle for longer than a restart
    out = CliRunner().invoke(cli, ["status"])
    assert out.exit_code == 0, out.output
    assert "idle:" in out.output and "restart:   3m00s" in out.output
    assert "stop the GPU unless the next step starts now" in out.output
    data = json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)
    assert data["idle"]["restart_s"] == 180.0 and data["idle"]["idle_s"] > 0


def test_a_command_step_named_build_is_not_a_build(db):
    """`step run build -- sleep 1` is a command that happens to be called build: it says nothing
    about how long the kernels take to build, so the restart cost ignores it."""
    sid = _past_session(db, 1, HOST, 10)
    db["steps"].insert({"id": str(uuid.uuid4()), "session_id": sid, "seq": 9, "name": "build",
                        "kind": "command", "status": "passed", "started_at": _iso(0, day=1),
                        "ended_at": _iso(2, day=1), "duration_s": 1.0, "host": HOST, "pid": 1})
    assert restart_seconds(db, HOST) == [600.0]
