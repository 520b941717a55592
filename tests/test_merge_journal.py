"""The copy journals of ``sessionkit merge`` (``.merge-journals/`` below this database's artifacts
folder): a signal that lands as an import commits keeps its files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sessionkit.db import artifacts_root, open_db

ENV = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}


def _source(path: Path, step: str, sizes: list[int], sessions: int = 1) -> None:
    """A database at ``path`` with ``sessions`` ended sessions, each with one step named ``step``
    that wrote and recorded a file of random bytes of each of ``sizes``."""
    from sessionkit.runner import run_step
    from sessionkit.sessions import end_session, start_session
    from sessionkit.steps import Step, StepResult

    class Files(Step):
        name = step
        description = "Write and record files."
        budget_s = 60.0

        def run(self, context):
            for i, size in enumerate(sizes):
                out = context.workdir / f"{step}-{i:04d}.bin"
                out.write_bytes(os.urandom(size))
                context.artifact(out, "data")
            return StepResult("passed", message="wrote them")

    db = open_db(path, create=True)
    for _ in range(sessions):
        s = start_session(db, "files", objective="a session with artifacts")
        run_step(db, s, Files(), stream=open(os.devnull, "w"))
        end_session(db, s, outcome="done", status="passed")
    db.conn.close()


def _merge(target: Path, source: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sessionkit", "--db", str(target), "merge",
                           str(source), "--json"], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _rows(target: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(target)
    try:
        return conn.execute("SELECT path, missing FROM artifacts ORDER BY path").fetchall()
    finally:
        conn.close()


# Runs the merge CLI in this process with a SIGTERM sent to itself as the import's COMMIT
# returns: where a signal that arrives while SQLite commits is handled (Python runs signal
# handlers between bytecodes, and the first one after COMMIT is still inside the import's try).
SIGNAL_AS_COMMIT_RETURNS = textwrap.dedent("""
    import dis, inspect, os, signal, sys
    from sessionkit import merge
    from sessionkit.cli import cli

    source, first = inspect.getsourcelines(merge._import_session)
    lines = [first + i for i, text in enumerate(source) if 'local.execute("COMMIT")' in text]
    commit_line = lines[-1]  # the import's own commit; the others end an "already here" check
    POP_TOP = dis.opmap["POP_TOP"]
    sent = []

    def in_import(frame, event, arg):
        if (event == "opcode" and not sent and frame.f_lineno == commit_line
                and frame.f_code.co_code[frame.f_lasti] == POP_TOP):  # COMMIT has returned
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return in_import

    def tracer(frame, event, arg):
        if frame.f_code is merge._import_session.__code__:
            frame.f_trace_opcodes = True
            return in_import
        return None

    sys.settrace(tracer)
    try:
        cli.main(sys.argv[1:], prog_name="sessionkit")
    finally:
        sys.settrace(None)
        print("SENT" if sent else "NOT SENT", file=sys.stderr)
""")


def test_a_signal_that_lands_as_an_import_commits_keeps_its_files(tmp_path):
    """SIGTERM (or SIGHUP, Ctrl-C) that arrived while an import's COMMIT ran was raised just after
    it returned, inside the import's error path, which then removed every file it had copied:
    the session stayed here with its artifact rows saying the files are present (missing = 0)
    and none of them on disk, and merging again found it already here, so they never came back
    (2 runs in 60 of a merge of 300 small sessions stopped at a random time lost a session's
    files this way). A committed import keeps its files now; the merge exits 143."""
    source = tmp_path / "b" / "b.db"
    _source(source, "files", [4096] * 3)
    target = tmp_path / "t" / "m.db"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AS_COMMIT_RETURNS, "--db", str(target),
                           "merge", str(source)], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert "SENT" in proc.stderr.split() and proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = _rows(target)
    assert len(rows) == 3 and all(missing == 0 for _, missing in rows)
    assert all(Path(path).is_file() for path, _ in rows), "the committed session lost its files"

    again = _merge(target, source)
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)[0]["unchanged"]) == 1
    assert all(Path(path).is_file() for path, _ in _rows(target))
    assert not list((artifacts_root(target) / ".merge-journals").glob("*"))
