"""The copy journals of ``sessionkit merge`` (``.merge-journals/`` below this database's artifacts
folder): a signal that lands as an import commits keeps its files, a journal can make merge
remove only what a merge could have copied and no row names, and never anything outside the
artifacts folder, and the journal of a merge that is still running is left alone."""

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
from step_standins import files_source as _source

ENV = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}


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


def _imported(tmp_path) -> tuple[Path, Path, Path]:
    """A database at tmp_path/t/m.db with one session imported: (it, its artifacts folder, the
    path of one of the imported files)."""
    source = tmp_path / "b" / "b.db"
    _source(source, "files", [100, 100])
    target = tmp_path / "t" / "m.db"
    assert _merge(target, source).returncode == 0
    root = artifacts_root(target)
    (recorded, _), _ = _rows(target)
    return target, root, Path(recorded)


def test_a_symlinked_journal_folder_is_neither_read_nor_written(tmp_path):
    """A `.merge-journals` that is a symbolic link (to a folder of the user's, say) was read as
    the journals' folder: the next merge removed every *.jsonl file in the folder it points to,
    outside the artifacts folder, and wrote its journals there. Such a folder is refused now,
    before anything is imported, in one line; nothing outside is touched."""
    target, root, _ = _imported(tmp_path)
    elsewhere = tmp_path / "user-data"
    elsewhere.mkdir()
    kept = {"experiment.jsonl": '{"loss": 0.5}\n',
            "other.jsonl": json.dumps({"file": str(root / "session-1" / "x.bin")}) + "\n"}
    for name, text in kept.items():
        (elsewhere / name).write_text(text)
    journals = root / ".merge-journals"
    if journals.exists():
        journals.rmdir()
    journals.symlink_to(elsewhere)
    other = tmp_path / "c" / "c.db"
    _source(other, "more", [100])

    out = _merge(target, other)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "symbolic link" in out.stderr and "Traceback" not in out.stderr
    assert {p.name: p.read_text() for p in elsewhere.iterdir()} == kept
    assert len(_rows(target)) == 2  # nothing imported


def test_a_crafted_journal_removes_nothing_a_merge_did_not_copy(tmp_path):
    """A hand-edited or damaged journal named a file that a row names through `..` (removed: the
    rows were matched by the path's text), a file of the user's beside the session folders
    (removed), and a journal that is a FIFO made the next merge wait forever. Now only files
    below a session-N/ folder, named as a merge names them (absolute, no `..`, no symbolic link
    on the way) and by no row in any form, are removed; a journal that is not a regular file is
    skipped; nothing outside the artifacts folder is touched."""
    target, root, recorded = _imported(tmp_path)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("mine\n")
    (outside / "dir" / "deep.txt").write_text("mine\n")
    (outside / "empty").mkdir()
    notes = root / "notes.txt"
    notes.write_text("the user's own notes\n")
    (root / "out").symlink_to(outside)
    (root / "session-7").mkdir()
    (root / "session-7" / "link.txt").symlink_to(outside / "secret.txt")
    stray = root / "session-7" / "stray.bin"  # what a killed merge copied: it goes
    stray.write_bytes(b"x")
    dotdot = str(recorded.parent / ".." / recorded.parent.name / recorded.name)
    entries = [{"file": dotdot}, {"file": str(notes)}, {"file": str(outside / "secret.txt")},
               {"file": str(root / ".." / ".." / "outside" / "secret.txt")},
               {"file": str(root / "out" / "secret.txt")}, {"file": str(root / "out" / "dir" / "deep.txt")},
               {"file": str(root / "session-1" / ".." / ".." / "m.db")},
               {"file": str(root / "session-7" / "link.txt")}, {"folder": str(outside / "empty")},
               {"folder": str(root / "out" / "dir")}, {"folder": str(root)},
               {"folder": str(root / ".merge-journals")}, {"file": "session-7/stray.bin"},
               {"file": str(stray)}]
    journals = root / ".merge-journals"
    journals.mkdir(exist_ok=True)
    (journals / "crafted.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in entries) + "not json\n[1, 2]\n{\"file\": 3}\n")
    os.mkfifo(journals / "fifo.jsonl")
    (journals / "link.jsonl").symlink_to(outside / "secret.txt")
    before = sorted(str(p) for p in tmp_path.rglob("*") if p != stray)
    other = tmp_path / "c" / "c.db"
    _source(other, "more", [100])

    out = _merge(target, other, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not stray.exists()
    after = {str(p) for p in tmp_path.rglob("*")}
    assert set(before) - after == {str(journals / "crafted.jsonl")}
    assert recorded.read_bytes() and notes.read_text() == "the user's own notes\n"
    assert (outside / "secret.txt").read_text() == "mine\n"
    assert all(Path(path).is_file() for path, _ in _rows(target))


def test_the_journal_of_a_merge_still_running_is_left_alone(tmp_path):
    """Two databases whose names share a stem (`a.db`, `a.sqlite`) share one artifacts folder,
    and so its journals, but not a write lock: a merge into one removed the files that a merge
    into the other was copying right then, and that merge then committed rows for files that
    were gone. A merge holds a lock on its journal while it is in use, and a journal so held is
    left alone. (The first merge is stopped with SIGSTOP while it copies, so that the second one
    runs while its journal is in use, and let go on with SIGCONT.)"""
    big = tmp_path / "big" / "big.db"
    _source(big, "big", [64 * 1024] * 200)
    small = tmp_path / "small" / "small.db"
    _source(small, "small", [100])
    first, second = tmp_path / "t" / "a.db", tmp_path / "t" / "a.sqlite"
    assert artifacts_root(first) == artifacts_root(second)
    journals = artifacts_root(first) / ".merge-journals"
    copies = artifacts_root(first) / "session-1"
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(first), "merge",
                             str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not (copies.is_dir() and any(copies.rglob("*.bin"))) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None and list(journals.glob("*.jsonl")), \
            "the first merge ended before it could be stopped mid-copy"
        out = _merge(second, small)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    rows = _rows(first)
    assert len(rows) == 200 and all(missing == 0 for _, missing in rows)
    gone = [path for path, _ in rows if not Path(path).is_file()]
    assert not gone, f"{len(gone)} files of the running merge were removed"
    assert all(Path(path).is_file() for path, _ in _rows(second))
    assert not list(journals.glob("*.jsonl"))
