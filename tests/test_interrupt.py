"""Nothing recorded is lost: kill -9, Ctrl-C and SIGTERM against a real sessionkit process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sessionkit.db import open_db

SLEEPER = "import time; print('started', flush=True); time.sleep(60)"


def sk(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=60, **kw)


def spawn_step(name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sessionkit", "step", "run", name, "--", sys.executable, "-c", SLEEPER],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_running(proc: subprocess.Popen, name: str) -> dict:
    """Wait until the child printed 'started' and the step row is 'running'."""
    deadline = time.time() + 30
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "started" in line:
            break
    else:
        raise AssertionError(f"step never started: {seen}")
    db = open_db()
    row = db.execute("SELECT id, status, pid FROM steps WHERE name = ?", [name]).fetchone()
    assert row[1] == "running"
    return {"id": row[0], "pid": row[2]}


@pytest.fixture
def session_with_history():
    assert sk("start", "--objective", "survive").returncode == 0
    assert sk("step", "run", "before", "--", "echo", "kept").returncode == 0
    db = open_db()
    return [dict(r) for r in db.query("SELECT * FROM steps ORDER BY seq")]


def test_kill_9_is_detected_by_next_command(session_with_history):
    proc = spawn_step("victim")
    wait_running(proc, "victim")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as when a machine is lost
    proc.wait(timeout=10)

    status = sk("status")
    assert status.returncode == 0
    assert "Notice: step 'victim' of session 1 was marked interrupted" in status.stderr
    victim_line = next(line for line in status.stdout.splitlines() if " victim " in line)
    assert "interrupted" in victim_line

    db = open_db()
    rows = [dict(r) for r in db.query("SELECT * FROM steps ORDER BY seq")]
    assert rows[0] == session_with_history[0]  # earlier rows untouched
    victim = rows[1]
    assert victim["status"] == "interrupted" and "ended without a word" in victim["message"]
    assert "started" in victim["output_tail"]  # recovered from the log on disk
    assert victim["duration_s"] is not None and victim["duration_s"] >= 0
    # it is reported once; the next command has nothing to say
    assert "Notice" not in sk("status").stderr


TICKER = ("import time\nprint('started', flush=True)\n"
          "for i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n")


def test_kill_9_duration_comes_from_the_last_sign_of_life(session_with_history):
    """Killed before its first heartbeat, a step still worked for seconds: its log says so, and the
    duration recorded is that estimate, marked as one (it used to be 0.0 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit", "step", "run", "ticker", "--", sys.executable, "-c", TICKER],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_running(proc, "ticker")
    time.sleep(2.5)  # the heartbeat comes every 5 s: none since the row was written
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = time.time()

    shown = sk("show", "last")
    assert "was marked interrupted" in shown.stderr and "is an estimate" in shown.stderr
    line = next(line for line in shown.stdout.splitlines() if " ticker " in line)
    assert " ~" in line  # the duration column says it is estimated

    row = dict(next(open_db().query("SELECT * FROM steps WHERE name = 'ticker'")))
    assert row["status"] == "interrupted"
    from sessionkit.timefmt import parse_iso

    lived = killed_at - parse_iso(row["started_at"]).timestamp()
    assert 2.0 <= row["duration_s"] <= lived
    assert "is an estimate, up to its last sign of life (log write at" in row["message"]
    estimate = json.loads(row["summary"])["duration_estimate"]
    assert estimate["from"] == "log write" and row["ended_at"] == estimate["at"]


def test_last_sign_of_life_takes_the_latest_evidence_within_the_step(db, session, tmp_path):
    from sessionkit.liveness import last_sign_of_life

    started, beat = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:05+00:00"
    db["steps"].insert({"id": "s", "session_id": session["id"], "seq": 1, "name": "s",
                        "started_at": started, "host": "h", "pid": 1, "heartbeat_at": beat})
    step = dict(db["steps"].get("s"))
    now = "2026-01-01T01:00:00+00:00"
    assert last_sign_of_life(db, step, now=now) == ("2026-01-01T00:00:05.000000+00:00", "heartbeat")
    db["telemetry_samples"].insert({"step_id": "s", "t_unix_s": 1767225612.5})  # 00:00:12.5
    assert last_sign_of_life(db, step, now=now) == ("2026-01-01T00:00:12.500000+00:00", "telemetry sample")
    log = tmp_path / "out.log"
    log.write_text("x")
    os.utime(log, (1767225630, 1767225630))  # 00:00:30
    db["artifacts"].insert({"step_id": "s", "path": str(log), "kind": "log", "created_at": started})
    assert last_sign_of_life(db, step, now=now) == ("2026-01-01T00:00:30.000000+00:00", "log write")
    # a clock ahead of ours cannot end the step in the future
    assert last_sign_of_life(db, step, now="2026-01-01T00:00:20+00:00")[0] == "2026-01-01T00:00:20.000000+00:00"


def test_ctrl_c_marks_interrupted_and_exits_130(session_with_history):
    proc = spawn_step("ctrlc")
    wait_running(proc, "ctrlc")
    os.killpg(proc.pid, signal.SIGINT)  # a terminal sends SIGINT to the whole foreground group
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "[2] ctrlc INTERRUPTED (exit 130)" in out
    db = open_db()
    row = dict(next(db.query("SELECT * FROM steps WHERE name = 'ctrlc'")))
    assert row["status"] == "interrupted" and row["exit_code"] == 130
    assert row["message"] == "interrupted by Ctrl-C" and "started" in row["output_tail"]
    assert dict(next(db.query("SELECT * FROM steps WHERE seq = 1"))) == session_with_history[0]


def test_sigterm_marks_interrupted_and_exits_143(session_with_history):
    proc = spawn_step("term")
    info = wait_running(proc, "term")
    os.kill(info["pid"], signal.SIGTERM)  # only sessionkit; it must stop its child itself
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    db = open_db()
    row = dict(next(db.query("SELECT * FROM steps WHERE name = 'term'")))
    assert (row["status"], row["exit_code"], row["message"]) == ("interrupted", 143, "interrupted by SIGTERM")
    assert json.loads(row["command"])[-1] == SLEEPER


def test_step_on_another_host_is_reaped_only_when_heartbeat_is_stale(db, session):
    from sessionkit.liveness import STALE_AFTER_S, reap_dead_steps
    from sessionkit.timefmt import now_iso, utcnow
    import datetime as dt

    old = (utcnow() - dt.timedelta(seconds=STALE_AFTER_S + 5)).isoformat()
    for step_id, beat in (("fresh", now_iso()), ("stale", old)):
        db["steps"].insert({"id": step_id, "session_id": session["id"], "seq": 1 if step_id == "fresh" else 2,
                            "name": step_id, "started_at": old, "host": "other-gpu-host", "pid": 1,
                            "heartbeat_at": beat})
    notices = reap_dead_steps(db)
    assert len(notices) == 1 and "'stale'" in notices[0] and "other-gpu-host" in notices[0]
    status = {r["id"]: r["status"] for r in db["steps"].rows}
    assert status == {"fresh": "running", "stale": "interrupted"}


def test_reused_pid_is_not_mistaken_for_the_step(db, session):
    from sessionkit.liveness import reap_dead_steps
    from sessionkit.timefmt import now_iso
    import socket

    # our own pid is alive, but its recorded start time belongs to another process
    db["steps"].insert({"id": "s", "session_id": session["id"], "seq": 1, "name": "s",
                        "started_at": now_iso(), "host": socket.gethostname(), "pid": os.getpid(),
                        "pid_started": 1.0, "heartbeat_at": now_iso()})
    assert len(reap_dead_steps(db)) == 1


def test_a_step_whose_output_reader_goes_away_still_runs_and_is_recorded(tmp_path):
    """`sessionkit step run X -- CMD | head -1`: once the reader has gone, the command keeps
    running (its output still reaches the log and the tail), the step closes with the command's
    own status, and nothing is printed in vain."""
    assert sk("start", "--objective", "pipe").returncode == 0
    marker = tmp_path / "marker"
    script = ("import sys, time\n"
              "print('first', flush=True)\n"
              "time.sleep(1.0)\n"
              "for i in range(2000): print('line', i, flush=True)\n"
              f"open({str(marker)!r}, 'w').write('done')\n")
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "step", "run", "piped", "--",
                             sys.executable, "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and "first" not in proc.stdout.readline():
        pass
    proc.stdout.close()  # as `| head -1` does after its line
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert marker.read_text() == "done", err
    assert "Traceback" not in err
    row = open_db().execute("SELECT status, exit_code, output_tail FROM steps WHERE name = 'piped'"
                            ).fetchone()
    assert row[0] == "passed" and row[1] == 0, row
    assert "line 1999" in row[2]


def test_a_session_run_whose_output_reader_goes_away_still_ends_and_is_recorded():
    """`sessionkit run ... | head -1`: the session's steps still run and are recorded, and the
    session ends with its report, after the reader of its output has gone."""
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "run", "-m", "piped run",
                             "--plan", "preflight,build", "--no-plots", "--no-hooks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert "started" in first
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err
    db = open_db()
    session = db.execute("SELECT status, ended_at FROM sessions").fetchone()
    assert session[1] is not None, err
    steps = [r[0] for r in db.execute("SELECT name FROM steps ORDER BY seq")]
    assert steps == ["preflight", "build"], (steps, err)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                       (signal.SIGINT, 130)])
def test_a_signal_while_the_steps_end_is_written_keeps_its_outcome(session_with_history, tmp_path,
                                                                   sig, code):
    """The step's command has ended and sessionkit is writing its record, held up by another
    writer's lock (a merge, say): a signal now once killed sessionkit on the spot (SIGTERM, SIGHUP),
    so the step's outcome was lost and a later command marked it interrupted. It is written first,
    then sessionkit exits with the signal's status."""
    import sqlite3

    started, locked, ended = tmp_path / "started", tmp_path / "locked", tmp_path / "ended"
    script = (f"import os, time\nopen({str(started)!r}, 'w').close()\n"
              f"while not os.path.exists({str(locked)!r}): time.sleep(0.02)\n"
              f"print('finished', flush=True)\nopen({str(ended)!r}, 'w').close()\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit", "step", "run", "fin", "--", sys.executable, "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:  # the command runs
        time.sleep(0.02)
    other = sqlite3.connect(os.environ["SESSIONKIT_DB"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the database while the step ends
    locked.touch()
    while not ended.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # the command has exited; sessionkit waits for the lock to record it
    os.kill(proc.pid, sig)
    time.sleep(0.5)
    other.execute("ROLLBACK")
    other.close()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    row = dict(next(open_db().query("SELECT * FROM steps WHERE name = 'fin'")))
    assert (row["status"], row["exit_code"]) == ("passed", 0), (row["message"], out)
    assert "finished" in row["output_tail"]
