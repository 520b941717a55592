"""Recorded artifacts carry the sha256 and size of the file as the step left it, however it ended."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sessionkit.db import open_db


def sk(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def _artifacts(step_name: str) -> list[dict]:
    db = open_db()
    return [dict(r) for r in db.query(
        "SELECT a.* FROM artifacts a JOIN steps s ON s.id = a.step_id WHERE s.name = ?", [step_name])]


def _assert_matches_disk(rows: list[dict]) -> None:
    assert rows
    for row in rows:
        data = Path(row["path"]).read_bytes()
        assert data, row
        assert row["size_bytes"] == len(data), row
        assert row["sha256"] == hashlib.sha256(data).hexdigest(), row


def test_step_run_log_hash_matches_file():
    assert sk("start", "--objective", "hash").returncode == 0
    assert sk("step", "run", "x", "--", "echo", "hello").returncode == 0
    rows = _artifacts("x")
    _assert_matches_disk(rows)
    assert Path(rows[0]["path"]).read_bytes() == b"hello\n"


def test_failed_step_log_hash_matches_file():
    assert sk("start", "--objective", "hash").returncode == 0
    res = sk("step", "run", "f", "--", sys.executable, "-c", "print('out'); raise SystemExit(3)")
    assert res.returncode == 3
    _assert_matches_disk(_artifacts("f"))


def _spawn_and_wait(name: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit", "step", "run", name, "--", sys.executable, "-c",
         "import time; print('started', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if "started" in proc.stdout.readline():
            return proc
    raise AssertionError("step never started")


def test_interrupted_step_log_hash_matches_file():
    assert sk("start", "--objective", "hash").returncode == 0
    proc = _spawn_and_wait("t")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    _assert_matches_disk(_artifacts("t"))


def test_killed_step_log_hash_fixed_when_reaped():
    assert sk("start", "--objective", "hash").returncode == 0
    proc = _spawn_and_wait("k")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert "marked interrupted" in sk("status").stderr
    _assert_matches_disk(_artifacts("k"))


def test_two_databases_in_one_folder_keep_their_own_logs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    for host in ("hostA", "hostB"):
        db = str(tmp_path / f"{host}.db")
        assert sk("--db", db, "start", "--objective", host, env=env).returncode == 0
        res = sk("--db", db, "step", "run", "compile", "--", "echo", f"built on {host}", env=env)
        assert res.returncode == 0, res.stderr
    for host in ("hostA", "hostB"):
        db = open_db(tmp_path / f"{host}.db")
        (path,) = [r[0] for r in db.execute("SELECT path FROM artifacts WHERE kind = 'log'")]
        assert Path(path).parent.parent.parent == tmp_path / f"artifacts-{host}"
        assert Path(path).read_text() == f"built on {host}\n"
        _assert_matches_disk([dict(r) for r in db.query("SELECT * FROM artifacts")])


def test_default_database_name_keeps_artifacts_folder(tmp_path):
    assert sk("start", "--objective", "default").returncode == 0
    assert sk("step", "run", "x", "--", "echo", "hi").returncode == 0
    (row,) = _artifacts("x")
    assert Path(row["path"]).is_relative_to(tmp_path / "artifacts" / "session-1")
