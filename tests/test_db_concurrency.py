"""Several processes on one database: opening a new or older database at once, and start --force.

Each race runs real processes, started together by a shared go-time, in repeated rounds.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from sessionkit.db import open_db
from sessionkit.schema import migration_names

PROCS = 8
ROUNDS = 20

# Each process takes part in every round: round r starts at go + r * SPACING_S, on its own path.
SPACING_S = 0.4

OPENER = textwrap.dedent("""
    import sys, time
    from sessionkit.db import open_db
    go, spacing, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    for r, path in enumerate(paths):
        while time.time() < go + r * spacing:
            time.sleep(0.0005)
        try:
            db = open_db(path, create=True)
            db["sessions"].count
            db.conn.close()
        except BaseException as exc:
            print(f"FAIL round {r} {type(exc).__name__}: {exc}", flush=True)
""")

STARTER = textwrap.dedent("""
    import sys, time
    from sessionkit.db import open_db
    from sessionkit.sessions import start_session
    go, spacing, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    dbs = [open_db(path) for path in paths]
    for r, db in enumerate(dbs):
        while time.time() < go + r * spacing:
            time.sleep(0.0005)
        try:
            start_session(db, objective="race", force=True)
        except BaseException as exc:
            print(f"FAIL round {r} {type(exc).__name__}: {exc}", flush=True)
""")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def race(script: str, paths: list, procs: int = PROCS) -> list[str]:
    """Run ``procs`` copies of ``script``; in round r all of them act on ``paths[r]`` at one instant.
    Returns one line per failed action."""
    go = time.time() + 2.0  # time enough for every interpreter to start and import
    running = [subprocess.Popen([sys.executable, "-c", script, str(go), str(SPACING_S),
                                 *map(str, paths)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(procs)]
    failures = []
    for proc in running:
        out, _ = proc.communicate(timeout=300)
        failures += [line for line in out.splitlines() if line.startswith("FAIL")]
        if proc.returncode != 0:
            failures.append(f"FAIL exit {proc.returncode}: {out.strip()[-300:]}")
    return failures


@pytest.mark.parametrize("start_from", ["new", "one release behind"])
def test_processes_opening_one_database_at_once(tmp_path, start_from):
    paths = [tmp_path / f"r{round_}.db" for round_ in range(ROUNDS)]
    if start_from != "new":
        for path in paths:
            _make_older(path)
    failures = race(OPENER, paths)
    for path in paths:
        db = open_db(path)
        applied = [r[0] for r in db.execute(
            "SELECT name FROM _sqlite_migrations ORDER BY id").fetchall()]
        assert applied == migration_names()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.conn.close()
    assert failures == [], f"{len(failures)}/{PROCS * ROUNDS} opens failed: {failures[:5]}"


def _make_older(path):
    """A database as the release before this one left it: every migration but the last."""
    from sessionkit.schema import MIGRATIONS

    saved = list(MIGRATIONS)
    MIGRATIONS[:] = saved[:-1]
    try:
        db = open_db(path, create=True)
        db.conn.close()
    finally:
        MIGRATIONS[:] = saved


def test_start_force_from_several_processes_numbers_every_session(tmp_path):
    paths = [tmp_path / f"s{round_}.db" for round_ in range(ROUNDS)]
    for path in paths:
        open_db(path, create=True).conn.close()
    failures = race(STARTER, paths)
    for path in paths:
        db = open_db(path)
        numbers = sorted(r[0] for r in db.execute("SELECT number FROM sessions").fetchall())
        db.conn.close()
        assert numbers == list(range(1, len(numbers) + 1))
    assert failures == [], f"{len(failures)}/{PROCS * ROUNDS} starts failed: {failures[:5]}"


CLI_STARTER = textwrap.dedent("""
    import os, sys, time
    import click
    from sessionkit.cli import cli
    go, spacing, folders = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    for r, folder in enumerate(folders):
        os.chdir(folder)
        while time.time() < go + r * spacing:
            time.sleep(0.0005)
        try:
            cli.main(["start", "--objective", "race"], prog_name="sessionkit", standalone_mode=False)
            print(f"OPENED round {r}", flush=True)
        except click.ClickException as exc:
            if "is still open" in exc.format_message():
                print(f"REFUSED round {r}", flush=True)
            else:
                print(f"FAIL round {r} Error: {exc.format_message()}", flush=True)
        except BaseException as exc:
            print(f"FAIL round {r} {type(exc).__name__}: {exc}", flush=True)
""")


def test_sessionkit_start_in_a_new_folder_from_several_processes(tmp_path, monkeypatch):
    """8 'sessionkit start' at once in a folder without a database: one opens the session, the
    others say it is open; none fails otherwise, and never are two sessions open."""
    monkeypatch.delenv("SESSIONKIT_DB")
    folders = [tmp_path / f"f{round_}" for round_ in range(ROUNDS)]
    for folder in folders:
        folder.mkdir()
    go = time.time() + 2.0
    running = [subprocess.Popen([sys.executable, "-c", CLI_STARTER, str(go), str(SPACING_S),
                                 *map(str, folders)], env=_env(), cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(PROCS)]
    lines = []
    for proc in running:
        out, _ = proc.communicate(timeout=300)
        lines += out.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    opened = sum(line.startswith("OPENED") for line in lines)
    for folder in folders:
        db = open_db(folder / ".sessionkit" / "sessions.db")
        assert db.execute("SELECT COUNT(*) FROM sessions WHERE status = 'open'").fetchone()[0] == 1
        db.conn.close()
    assert failures == [], f"{len(failures)}/{PROCS * ROUNDS} starts failed: {failures[:5]}"
    assert opened == ROUNDS


def test_a_finishing_write_waits_out_a_lock_longer_than_the_busy_timeout(tmp_path):
    """A merge copying large artifacts holds the write lock past the busy timeout: a step that
    finishes meanwhile waits (saying so once) and then records, instead of failing with
    "database is locked" and being marked interrupted later."""
    import sqlite3
    import threading

    from sessionkit.db import open_db, patiently

    path = tmp_path / "s.db"
    db = open_db(path, create=True)
    db.conn.execute("CREATE TABLE scratch (x)")
    db.conn.execute("PRAGMA busy_timeout = 50")  # stands for the 30 s of real use
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.8, lambda: other.execute("ROLLBACK"))
    release.start()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.execute("INSERT INTO scratch VALUES (1)")
    notes = []
    patiently(db, lambda: db.execute("INSERT INTO scratch VALUES (2)"), what="step 'x'",
              notice=notes.append)
    release.join()
    assert notes == ["the database is locked by another writer; waiting to record step 'x'"]
    assert [r[0] for r in db.execute("SELECT x FROM scratch")] == [2]
    # past its patience it gives up with the error
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        patiently(db, lambda: db.execute("INSERT INTO scratch VALUES (3)"), what="x",
                  patience_s=0.3)
    other.execute("ROLLBACK")


def test_a_running_steps_records_wait_out_a_long_lock_too(make_context, db, tmp_path):
    """The log a command step records as it starts (and any metric or artifact while a step runs)
    waits out a lock held past the busy timeout, saying so once, instead of failing the step as
    "step crashed: OperationalError: database is locked"."""
    import sqlite3
    import threading

    ctx = make_context()
    notes = []
    ctx.progress.note = notes.append
    log = tmp_path / "x.log"
    log.write_text("hello\n")
    db.conn.execute("PRAGMA busy_timeout = 50")  # stands for the 30 s of real use
    other = sqlite3.connect(db.path, isolation_level=None, check_same_thread=False)
    for record in (lambda: ctx.artifact(log, "log"), lambda: ctx.metric("m", 1.5, "ms")):
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.6, lambda: other.execute("ROLLBACK"))
        release.start()
        record()
        release.join()
    assert len(notes) == 2 and all("locked by another writer" in n for n in notes), notes
    assert [r["kind"] for r in db["artifacts"].rows_where("step_id = ?", [ctx.step_id])] == ["log"]
    assert [r["value"] for r in db["metrics"].rows_where("step_id = ?", [ctx.step_id])] == [1.5]
    other.close()
