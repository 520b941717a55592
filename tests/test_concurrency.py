"""Two processes record steps while a thread writes telemetry samples: no 'database is locked'."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from sessionkit.db import open_db
from sessionkit.sessions import start_session

WRITER = textwrap.dedent("""
    import sys
    from sessionkit.db import open_db
    from sessionkit.runner import run_step
    from sessionkit.sessions import get_session
    from sessionkit.steps import Step, StepResult

    class Tiny(Step):
        name = "tiny"
        def run(self, context):
            context.metric("value", 1.0, "count")
            return StepResult("passed")

    db = open_db(sys.argv[1])
    session = get_session(db, sys.argv[2])
    for i in range(int(sys.argv[3])):
        run_step(db, session, Tiny(), name=f"{sys.argv[4]}-{i}", stream=open("/dev/null", "w"))
""")


def test_two_processes_and_a_sampler_thread(tmp_path):
    path = tmp_path / "shared.db"
    db = open_db(path, create=True)
    session = start_session(db, objective="concurrency")
    steps_per_process = 100  # each step is 4 writes: insert, metric, finish, plus heartbeats
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), SESSIONKIT_TELEMETRY_INTERVAL="60s")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), session["id"],
                               str(steps_per_process), tag], env=env, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]

    # the sampler thread: 500 sample writes in batches of 10, on its own connection
    anchor = open_db(path)
    with anchor.conn:
        anchor["steps"].insert({"id": "sampler", "session_id": session["id"], "seq": 0,
                                "name": "sampler", "started_at": "2026-01-01T00:00:00+00:00",
                                "host": "h", "pid": os.getpid()})
    errors: list[BaseException] = []

    def sample():
        try:
            own = open_db(path)
            for batch in range(50):
                with own.conn:
                    own["telemetry_samples"].insert_all(
                        {"step_id": "sampler", "t_unix_s": batch * 10 + i, "power_w": 300.0}
                        for i in range(10))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=sample)
    thread.start()
    outputs = [p.communicate(timeout=180)[1] for p in procs]
    thread.join(timeout=180)

    assert not errors, errors
    for proc, err in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    final = open_db(path)
    assert final["telemetry_samples"].count == 500
    counts = dict(final.execute(
        "SELECT status, COUNT(*) FROM steps WHERE name != 'sampler' GROUP BY status").fetchall())
    assert counts == {"passed": 2 * steps_per_process}
    assert final["metrics"].count == 2 * steps_per_process
    seqs = [r[0] for r in final.execute("SELECT seq FROM steps WHERE name != 'sampler'").fetchall()]
    assert sorted(seqs) == list(range(1, 2 * steps_per_process + 1))  # unique, no gaps


def test_concurrent_end_exactly_one_wins(tmp_path):
    """8 processes end one open session at once, 5 times: exactly one succeeds each time, and the
    stored outcome is the winner's; the others get one error line."""
    db_path = str(tmp_path / "e.db")
    env = {**os.environ, "SESSIONKIT_DB": db_path}
    for round_ in range(5):
        started = subprocess.run([sys.executable, "-m", "sessionkit", "start", "--objective", "o",
                                  "--force"], env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        procs = [subprocess.Popen([sys.executable, "-m", "sessionkit", "end", "--outcome", f"o{i}"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(8)]
        results = [(i, *p.communicate(timeout=120), p.returncode) for i, p in enumerate(procs)]
        winners = [r for r in results if r[3] == 0]
        assert len(winners) == 1, results
        assert "Ended session" in winners[0][1]
        for i, out, err, code in results:
            if code != 0:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("Error: "), err
                assert "Traceback" not in err
        db = open_db(db_path)
        outcome = db.execute("SELECT outcome FROM sessions WHERE number = ?", [round_ + 1]).fetchone()
        assert outcome[0] == f"o{winners[0][0]}"
