"""Databases the user cannot or should not write: read-only archives, newer releases and network
file systems."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap

import pytest

from small_disk import run_on_small_disk, session_on_tmpfs

import sessionkit.db as dbmod
from sessionkit.db import open_db
from sessionkit.errors import DatabaseError
from sessionkit.sessions import start_session


def _cli(args, *, unprivileged=False, cwd=None):
    """Run the real CLI in a child process. With ``unprivileged`` and when running as root (as CI
    does), the child loses the capabilities that let root ignore file permissions (util-linux's
    setpriv), so that a read-only file is read-only to it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("SESSIONKIT_DB", None)
    argv = [sys.executable, "-m", "sessionkit", *args]
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux's setpriv to drop file capabilities")
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]
    return subprocess.run(argv, env=env, cwd=cwd or "/", capture_output=True, text=True, timeout=120)


@pytest.fixture
def archive():
    """A finished database in a folder nobody may write, as a CI artifact or an archive is."""
    folder = tempfile.mkdtemp(prefix="sessionkit-archive-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "sessions.db")
    db = open_db(path, create=True)
    session = start_session(db, "archived", objective="kept for the record")
    from sessionkit.sessions import end_session
    end_session(db, session, outcome="done", status="passed")
    db.conn.close()
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    yield path
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize("command", [["sessions"], ["show", "last"], ["report", "last"],
                                     ["history"], ["export", "last"], ["status"]])
def test_reading_commands_work_on_a_read_only_database(archive, command):
    result = _cli(["--db", archive, *command], unprivileged=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if command[0] in ("sessions", "show", "export"):
        assert "archived" in result.stdout


def test_merge_reads_an_archive_in_a_folder_nobody_may_write(archive, tmp_path):
    """A WAL database in a read-only folder has no -shm to share: the reading commands opened it
    (as immutable), `merge` could not ("unable to open database file")."""
    target_dir = tempfile.mkdtemp(prefix="sessionkit-merge-into-")
    os.chmod(target_dir, 0o777)
    target = os.path.join(target_dir, "here.db")
    try:
        made = _cli(["--db", target, "start", "--objective", "local"], unprivileged=True)
        assert made.returncode == 0, made.stderr
        result = _cli(["--db", target, "merge", archive], unprivileged=True)
        assert result.returncode == 0, result.stderr
        shown = _cli(["--db", target, "sessions"], unprivileged=True)
        assert "archived" in shown.stdout
    finally:
        shutil.rmtree(target_dir)


def test_writing_commands_on_a_read_only_database_say_so_in_one_line(archive):
    result = _cli(["--db", archive, "start", "--objective", "x", "--force"], unprivileged=True)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "read-only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_database_of_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "future.db"
    db = open_db(path, create=True)
    with db.conn:
        db["_sqlite_migrations"].insert({"migration_set": "sessionkit", "name": "m999_from_the_future",
                                         "applied_at": "2030-01-01"})
    db.conn.close()
    with pytest.raises(DatabaseError, match="written by a newer sessionkit"):
        open_db(path)
    for args in (["sessions"], ["start", "--objective", "x"]):
        result = _cli(["--db", str(path), *args])
        assert result.returncode == 1
        assert result.stderr.startswith("Error: this database was written by a newer sessionkit (")
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["sessions"], ["status"], ["start", "--objective", "x"],
                                  ["step", "run", "x", "--", "true"]])
def test_a_database_of_something_else_is_refused_and_left_as_it_was(tmp_path, args):
    """A SQLite file of another program (tables, no sessionkit migration) given by mistake: one
    line, exit 1, and not a byte of it changed (no schema, no switch to WAL)."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO accounts (owner) VALUES ('someone')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    result = _cli(["--db", str(path), *args])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"Error: {path} is not a sessionkit database (it holds other "
                                     "tables: accounts); give another path")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def _fake_mounts(tmp_path, monkeypatch, fstype):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} {fstype} rw 0 0\n")
    monkeypatch.setattr(dbmod, "PROC_MOUNTS", str(mounts), raising=False)


@pytest.mark.parametrize("fstype", ["nfs4", "cifs", "lustre", "fuse.sshfs"])
def test_no_wal_on_a_network_file_system(tmp_path, monkeypatch, fstype):
    _fake_mounts(tmp_path, monkeypatch, fstype)
    db = open_db(tmp_path / "shared" / "s.db", create=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [n for n in db.notices if "network file system" in n and fstype in n]
    db.conn.close()
    again = open_db(tmp_path / "shared" / "s.db")
    assert again.notices == []  # said once, when the database was made


def test_the_users_journal_mode_is_kept_on_a_network_file_system(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    open_db(path, create=True).conn.close()  # made in WAL before the folder moved to NFS
    _fake_mounts(tmp_path, monkeypatch, "nfs")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()
    for _ in range(2):
        db = open_db(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        db.conn.close()


def test_local_file_systems_still_get_wal(tmp_path, monkeypatch):
    _fake_mounts(tmp_path, monkeypatch, "ext4")
    db = open_db(tmp_path / "s.db", create=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.notices == []


def test_filesystem_type_picks_the_longest_mount_point():
    mounts = "/dev/sda1 / ext4 rw 0 0\nsrv:/x /mnt/my\\040data nfs4 rw 0 0\n"
    assert dbmod.filesystem_type("/mnt/my data/proj/s.db", mounts) == "nfs4"
    assert dbmod.filesystem_type("/mnt/my/s.db", mounts) == "ext4"


READ_WHEN_FULL = session_on_tmpfs("2m", "full-disk") + textwrap.dedent("""
    "$2" -m sessionkit step run x -- echo hi >/dev/null || exit 79
    head -c 3000000 /dev/zero > filler 2>/dev/null   # the disk is now full
    for cmd in status "show 1" "export 1" "report 1" history sessions; do
        $2 -m sessionkit $cmd > "$3/out-$cmd"; echo "EXIT $cmd $?"
    done
    cd "$3" && grep -c full-disk "out-show 1" "out-export 1" "out-report 1" "out-status"
""")


def test_reading_commands_work_on_a_full_disk(tmp_path):
    """With no space left, the reading commands fall back to the read-only open and still answer."""
    outs = tmp_path / "outs"
    outs.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("SESSIONKIT_DB", None)
    result = run_on_small_disk(READ_WHEN_FULL, tmp_path, str(outs), timeout=180, env=env)
    out, err = result.stdout, result.stderr
    for cmd in ("status", "show 1", "export 1", "report 1", "history", "sessions"):
        assert f"EXIT {cmd} 0" in out, out + err
    assert "Traceback" not in err and "Error" not in err, err
    for name in ("out-show 1", "out-export 1", "out-report 1", "out-status"):
        assert f"{name}:0" not in out, out


def test_reading_commands_read_the_wal_of_an_archive_copied_without_its_shm(tmp_path):
    """A database copied with its -wal but not its -shm (from a host where it was open) into a
    folder nobody may write: the reading commands opened it as immutable, which ignores the -wal,
    and showed the sessions of the last checkpoint as if they were all (here: not the second
    one). They read a private copy of the two files now, as `merge` does, and leave the folder as
    it was."""
    live_path = tmp_path / "live.db"
    live = open_db(live_path, create=True)
    from sessionkit.sessions import end_session

    end_session(live, start_session(live, "checkpointed", objective="in the main file"),
                outcome="done", status="passed")
    live.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    live.execute("PRAGMA wal_autocheckpoint = 0")
    end_session(live, start_session(live, "only-in-the-wal", objective="not checkpointed"),
                outcome="done", status="passed")
    folder = tempfile.mkdtemp(prefix="sessionkit-archive-")
    try:
        path = os.path.join(folder, "sessions.db")
        shutil.copyfile(live_path, path)
        shutil.copyfile(f"{live_path}-wal", f"{path}-wal")
        live.conn.close()
        os.chmod(folder, 0o555)
        before = sorted(os.listdir(folder))
        for args in (["sessions"], ["show", "only-in-the-wal"], ["history"]):
            result = _cli(["--db", path, *args], unprivileged=True)
            assert result.returncode == 0, (args, result.stderr)
            assert "only-in-the-wal" in result.stdout, args
            assert "checkpointed" in result.stdout or args[0] == "show", args
        assert sorted(os.listdir(folder)) == before
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)
