"""What a database path may be: an empty file is no database to a reading command, and a path
that is not a regular file (a folder, a FIFO, a device) is refused in one line before SQLite
opens it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.errors import DatabaseError, NoDatabaseError

# Every command that opens the database without creating it; none of them may write to it.
NOT_CREATING = [
    ["sessions"], ["show", "last"], ["status"], ["export"], ["report", "--no-plots"], ["history"],
    ["patterns"], ["compare"], ["env", "show"], ["env", "diff"], ["end", "--outcome", "x"],
    ["pattern", "apply", "profile-first"], ["step", "run", "x", "--", "true"],
]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", NOT_CREATING, ids=" ".join)
def test_a_reading_command_leaves_an_empty_file_empty(tmp_path, command):
    """`sessionkit --db EMPTY sessions` made the empty file a database (tables, WAL files). It
    is refused as a missing database is, in one line, exit 1, and the folder is left as it was."""
    empty = tmp_path / "empty.db"
    empty.touch()
    before = sorted(os.listdir(tmp_path))
    missing = invoke("--db", str(tmp_path / "missing.db"), *command)
    result = invoke("--db", str(empty), *command)
    assert missing.exit_code == 1 and missing.output.startswith("Error: no database at")
    assert result.exit_code == missing.exit_code, result.output
    assert result.output == (f"Error: no sessionkit data at {empty} (the file is empty); "
                             "run 'sessionkit start' to create a database there\n")
    assert empty.stat().st_size == 0
    assert sorted(os.listdir(tmp_path)) == before


def test_serve_refuses_an_empty_file(tmp_path):
    """`serve` on an empty file made it a database and served it; it is refused as a missing
    one. A real process, in its own group, ended should it start serving anyway."""
    empty = tmp_path / "empty.db"
    empty.touch()
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(empty), "serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("serve started on an empty file")
    assert proc.returncode == 1 and out == ""
    assert err == (f"Error: no sessionkit data at {empty} (the file is empty); "
                   "run 'sessionkit start' to create a database there\n")
    assert empty.stat().st_size == 0 and sorted(os.listdir(tmp_path)) == ["empty.db"]


def test_start_makes_an_empty_file_a_database(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    assert invoke("--db", str(empty), "start", "--objective", "x").exit_code == 0
    assert invoke("--db", str(empty), "sessions").exit_code == 0
    assert open_db(empty).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1


def test_the_library_opens_an_empty_file_only_to_create(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for read_only in (False, True):
        with pytest.raises(NoDatabaseError, match="the file is empty"):
            open_db(empty, read_only=read_only)
    assert empty.stat().st_size == 0
    assert open_db(empty, create=True).execute("SELECT COUNT(*) FROM sessions").fetchone() == (0,)


def _not_regular(tmp_path, kind):
    if kind == "folder":
        (tmp_path / "folder").mkdir()
        return str(tmp_path / "folder"), "a folder"
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return str(tmp_path / "fifo"), "a FIFO"
    return "/dev/null", "a character device"


@pytest.mark.parametrize("command", [["sessions"], ["start", "--objective", "x"], ["history"]],
                         ids=" ".join)
@pytest.mark.parametrize("kind", ["devnull", "folder", "fifo"])
def test_a_path_that_is_not_a_regular_file_is_said_so(tmp_path, kind, command):
    """`SESSIONKIT_DB=/dev/null sessionkit sessions` said "no space left on device (disk I/O
    error)"; a FIFO said the same. Through $SESSIONKIT_DB and --db, reading and creating: one line
    that names what the path is, exit 1, and the path is left as it was."""
    path, what = _not_regular(tmp_path, kind)
    mode = os.stat(path).st_mode
    expected = (f"Error: database path {path} is not a regular file (it is {what}); "
                "give the path of a database file")
    env = {**os.environ, "SESSIONKIT_DB": path}
    through_env = subprocess.run([sys.executable, "-m", "sessionkit", *command], env=env,
                                 capture_output=True, text=True, timeout=60)
    through_option = subprocess.run([sys.executable, "-m", "sessionkit", "--db", path, *command],
                                     capture_output=True, text=True, timeout=60)
    for result in (through_env, through_option):
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip() == expected and result.stdout == ""
    assert os.stat(path).st_mode == mode
    if kind != "devnull":
        assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_the_library_refuses_a_device_before_sqlite_opens_it(tmp_path):
    with pytest.raises(DatabaseError, match=r"^database path /dev/null is not a regular file "
                                            r"\(it is a character device\)"):
        open_db("/dev/null", create=True)
    link = tmp_path / "link.db"
    link.symlink_to("/dev/null")
    with pytest.raises(DatabaseError, match="is not a regular file"):
        open_db(link, read_only=True)


def test_a_database_migrated_by_another_process_meanwhile_is_not_foreign(tmp_path):
    """Eight `merge`s into one new --db failed now and then with "is not a sessionkit database
    (it holds other tables: _session_rollups, ...)": the check read the applied migrations and then,
    in another read, the tables, and another process's first migration committed in between. Both
    are read in one snapshot now: here the migration commits between the two reads."""
    import sqlite3

    from sessionkit.db import _refuse_foreign

    path = tmp_path / "new.db"
    first = sqlite3.connect(path, isolation_level=None)
    first.execute("PRAGMA journal_mode = WAL")
    first.execute("CREATE TABLE placeholder (x)")  # the file is no longer empty: "not new"
    first.execute("DROP TABLE placeholder")
    second = sqlite3.connect(path, isolation_level=None)
    migrated = []

    def migrate_meanwhile(statement):
        if statement.startswith("SELECT name FROM sqlite_master") and not migrated:
            migrated.append(True)
            open_db(path).conn.close()  # the other process: creates and migrates, commits

    second.set_trace_callback(migrate_meanwhile)
    _refuse_foreign(second, path)  # no DatabaseError: it is a sessionkit database (or an empty one)
    assert migrated == [True]
    second.close()
    first.close()


@pytest.mark.parametrize("args", [
    ["run", "--objective", "x", "-o", "dangling.md"],
    ["run", "--objective", "x", "--grid", "nope"],
    ["run", "--objective", "x", "--plan", "nope"],
    ["run", "--objective", "x", "--plan", "build,build"],
    ["run"],
    ["start"],
    ["start", "--objective", "  "],
])
def test_a_refused_start_or_run_makes_no_database(tmp_path, monkeypatch, args):
    """`sessionkit run -o LINK` with a dangling LINK, an unknown --grid or --plan step, or `start`
    and `run` without an objective made the database (and its folder) and only then refused.
    Checked before the database is opened: the one-line error, and nothing made."""
    monkeypatch.delenv("SESSIONKIT_DB")
    os.symlink(tmp_path / "nowhere" / "report.md", tmp_path / "dangling.md")
    before = sorted(os.listdir(tmp_path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (1, 2), result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert sorted(os.listdir(tmp_path)) == before
    explicit = CliRunner().invoke(cli, ["--db", str(tmp_path / "deep" / "new.db"), *args])
    assert (explicit.exit_code, explicit.output) == (result.exit_code, result.output)
    assert sorted(os.listdir(tmp_path)) == before
