"""``sessionkit merge`` against crafted, damaged and concurrently merged sources: copies stay inside
this database's ``artifacts/session-N/``, copy errors become "missing" rows, damaged sources are
refused, and merges of the same sources at the same time import each session once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.db import artifacts_root, open_db
from sessionkit.errors import UsageError
from sessionkit.merge import merge_database
try:
    from sessionkit.merge import _copy_target
except ImportError:
    _copy_target = None
from test_merge import host_b
from step_standins import files_source


def _craft(source_db: Path, recorded: str) -> None:
    """Add an artifact row with ``recorded`` as its path (sha256 NULL) to the first step of session 1."""
    conn = sqlite3.connect(source_db)
    step = conn.execute("SELECT steps.id FROM steps JOIN sessions ON sessions.id = steps.session_id "
                        "WHERE sessions.number = 1 ORDER BY seq LIMIT 1").fetchone()[0]
    conn.execute("INSERT INTO artifacts (step_id, path, kind, sha256, size_bytes, created_at) "
                 "VALUES (?, ?, 'log', NULL, NULL, '2026-01-01T00:00:00+00:00')", [step, recorded])
    conn.commit()
    conn.close()


def _files_under(folder: Path) -> set[Path]:
    """Files below ``folder``, leaving out SQLite's -wal and -shm files."""
    return {p for p in folder.rglob("*") if (p.is_file() or p.is_symlink())
            and not p.name.endswith(("-wal", "-shm"))}


def _merge_into_new(tmp_path, src_db):
    """Merge ``src_db`` into a new database under tmp_path/t: (its path, the CLI result, the files
    copied beside it)."""
    target = tmp_path / "t" / "m.db"
    target.parent.mkdir()
    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    return target, out, [p for p in _files_under(tmp_path / "t") if p.suffix != ".db"]


def test_dotdot_artifact_path_cannot_write_outside(tmp_path):
    b = host_b(tmp_path / "src" / "b", sessions=1)
    b.conn.close()
    src_db = tmp_path / "src" / "b" / ".sessionkit" / "sessions.db"
    # an existing file, named through session-1/.. so that the part below session-1/ climbs out
    payload = tmp_path / "src" / "x" / "OUTSIDE.sh"
    payload.parent.mkdir(parents=True)
    payload.write_text("echo pwned\n")
    recorded = str(src_db.parent / "artifacts" / "session-1" / ".." / ".." / ".." / ".." / "x" / "OUTSIDE.sh")
    assert Path(recorded).is_file()
    _craft(src_db, recorded)
    target = tmp_path / "t" / "deep" / "m.db"
    target.parent.mkdir(parents=True)
    before = _files_under(tmp_path) - _files_under(tmp_path / "t")

    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output
    # nothing new anywhere but below the target's folder, and below it only under artifacts/session-1/
    assert _files_under(tmp_path) - _files_under(tmp_path / "t") == before
    for path in _files_under(target.parent.parent):
        if path.parent == target.parent and path.name == "m.db":
            continue
        assert path.resolve().is_relative_to((artifacts_root(target) / "session-1").resolve()), path
    db = open_db(target)
    row = db.execute("SELECT missing, path FROM artifacts WHERE origin_path = ?", [recorded]).fetchone()
    assert row == (1, recorded)
    assert "would leave this database's artifacts folder" in out.output
    assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1


def _source_with_files(tmp_path, files: dict[str, str]) -> Path:
    """A source database (one ended session) whose session-1 folder holds ``files`` (path below
    it: text), each recorded as an artifact; returns its path."""
    host_b(tmp_path / "b", sessions=1).conn.close()
    src_db = tmp_path / "b" / ".sessionkit" / "sessions.db"
    session_dir = src_db.parent / "artifacts" / "session-1"
    for tail, text in files.items():
        (session_dir / tail).parent.mkdir(parents=True, exist_ok=True)
        (session_dir / tail).write_text(text)
        _craft(src_db, str(session_dir / tail))
    return src_db


def _target_and_elsewhere(tmp_path) -> tuple[Path, Path, Path]:
    """The target database's path (not made), its artifacts/session-1 path (not made) and a folder
    outside it that nothing may be written into."""
    target = tmp_path / "t" / "m.db"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return target, artifacts_root(target) / "session-1", elsewhere


def test_a_symlink_or_folder_already_in_the_target_is_left_alone_and_never_written_through(tmp_path):
    src_db = _source_with_files(tmp_path, {"link/f.txt": "through a symlink\n",
                                           "isdir.txt": "its copy target is a folder\n"})
    # the target's session-1 folder already holds a symlink out and a folder where a file goes:
    # the copies go to names of their own beside them (link.2/, isdir.txt.2), never through them
    target, here, elsewhere = _target_and_elsewhere(tmp_path)
    here.mkdir(parents=True)
    (here / "link").symlink_to(elsewhere)
    (here / "isdir.txt").mkdir()

    db = open_db(target, create=True)
    result = merge_database(db, src_db)
    assert len(result.imported) == 1
    assert not list(elsewhere.iterdir())
    assert (here / "link").is_symlink() and not any((here / "isdir.txt").iterdir())
    assert (here / "link.2" / "f.txt").read_text() == "through a symlink\n"
    assert (here / "isdir.txt.2").read_text() == "its copy target is a folder\n"
    assert not any(Path(m["path"]).name in ("f.txt", "isdir.txt") for m in result.missing_artifacts)
    paths = {r[0] for r in db.execute("SELECT path FROM artifacts WHERE missing = 0")}
    assert {str(here / "link.2" / "f.txt"), str(here / "isdir.txt.2")} <= paths


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_session_folder_in_the_target_that_is_not_a_folder_stops_that_import(tmp_path, kind):
    """The folder an import's files go in, artifacts/session-N for the number it gets, is already
    a symbolic link (the copies landed where it pointed) or a file: that session is not imported,
    in one line saying why, and nothing is written through the link."""
    src_db = _source_with_files(tmp_path, {"01-step/out.txt": "a step's file\n"})
    target, here, elsewhere = _target_and_elsewhere(tmp_path)
    here.parent.mkdir(parents=True)
    if kind == "link":
        here.symlink_to(elsewhere)
    else:
        here.write_text("not a folder\n")

    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert "Traceback" not in out.output, out.output
    assert "where its step files would go: move it away and merge again" in out.output
    assert not list(elsewhere.iterdir())
    assert open_db(target).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
    # moved away, the same merge imports it
    here.unlink()
    again = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert again.exit_code == 0 and "1 imported" in again.output, again.output
    assert (here / "01-step" / "out.txt").read_text() == "a step's file\n"



@pytest.mark.parametrize("tail", ["../x", "a/../../x", "/etc/passwd", "..", "", ".", "a/../.."])
def test_copy_target_refuses_tails_that_leave_the_folder(tmp_path, tail):
    target, reason = _copy_target(tmp_path / "artifacts" / "session-1", tail)
    assert target is None and reason


def test_same_file_source_and_target_is_no_traceback(tmp_path):
    """The source's artifacts folder is the target's: copying a file onto itself is a missing row."""
    b = host_b(tmp_path / "b", sessions=1)
    b.conn.close()
    src_db = tmp_path / "b" / ".sessionkit" / "sessions.db"
    target = src_db.parent / "other.db"
    own = src_db.parent / "artifacts" / "session-1" / "own.txt"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("one file\n")
    _craft(src_db, str(own))
    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    assert own.read_text() == "one file\n"


def _source_and_secret(tmp_path):
    """A source database of one session, and a private file outside its artifacts folder."""
    b = host_b(tmp_path / "b", sessions=1)
    b.conn.close()
    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY\n")
    return tmp_path / "b" / ".sessionkit" / "sessions.db", secret


def test_reads_stay_inside_the_source_databases_artifacts_folder(tmp_path):
    """A source database can name any path; only files inside its own artifacts folder are read.
    One outside (absolute, relative with .., through a symlink) is a missing row with the reason."""
    src_db, secret = _source_and_secret(tmp_path)
    session_dir = src_db.parent / "artifacts" / "session-1"
    (session_dir / "logs").mkdir(parents=True)
    (session_dir / "logs" / "key.log").symlink_to(secret)
    (session_dir / "ok.log").write_text("inside\n")
    crafted = [str(secret), "../../home/id_ed25519", str(session_dir / "logs" / "key.log"),
               str(session_dir / "ok.log")]
    for recorded in crafted:
        _craft(src_db, recorded)
    target, out, copies = _merge_into_new(tmp_path, src_db)
    assert [p.read_text() for p in copies if p.read_text() != "probe ran\n"] == ["inside\n"]
    assert not any("PRIVATE" in p.read_text() for p in copies)
    db = open_db(target)
    rows = dict(db.execute("SELECT origin_path, missing FROM artifacts").fetchall())
    assert [rows[r] for r in crafted] == [1, 1, 1, 0]
    refused = "is outside the source database's artifacts folder"
    assert out.output.count(refused) == 3
    assert f"missing  {secret}: its file '{secret}' {refused} ({src_db.parent / 'artifacts'})" in out.output


def test_an_artifacts_folder_that_is_a_symlink_is_not_read(tmp_path):
    """A source whose artifacts folder is itself a link (to /, to a home folder) would make every
    file there "inside" it: none is read, each row is missing with the reason."""
    src_db, secret = _source_and_secret(tmp_path)
    root = artifacts_root(src_db)
    root.rename(root.with_name("artifacts.moved"))
    root.symlink_to(tmp_path)  # artifacts -> a folder that holds home/id_ed25519
    recorded = str(root / "home" / "id_ed25519")
    _craft(src_db, recorded)
    target, out, copies = _merge_into_new(tmp_path, src_db)
    assert not any("PRIVATE" in p.read_text() for p in copies)
    missing = dict(open_db(target).execute("SELECT origin_path, missing FROM artifacts").fetchall())
    assert missing[recorded] == 1
    assert f"missing  {recorded}: the source database's artifacts folder {root} is a symbolic link" \
        in out.output


@pytest.mark.parametrize("damaged", ["idx_sessions_number", "patterns_applied"])
def test_damaged_source_is_refused(tmp_path, damaged):
    """A source with a damaged b-tree page that the import itself would not read (PRAGMA quick_check
    fails) is refused whole: nothing is imported."""
    b = host_b(tmp_path / "b", sessions=2)
    b.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src_db = Path(b.path)
    page_size = b.execute("PRAGMA page_size").fetchone()[0]
    root = b.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [damaged]).fetchone()[0]
    b.conn.close()
    conn = sqlite3.connect(src_db)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()
    data = bytearray(src_db.read_bytes())
    start = (root - 1) * page_size
    data[start:start + 8] = b"\x0d\xff\xff\xff\xff\xff\xff\xff"  # a leaf header with absurd counts
    src_db.write_bytes(bytes(data))
    conn = sqlite3.connect(src_db)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] != "ok"
    except sqlite3.DatabaseError:
        pass  # quick_check itself cannot read it
    conn.close()
    target = tmp_path / "m.db"
    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(src_db)])
    assert out.exit_code == 1, out.output
    assert out.output.startswith("Error: ") and len(out.output.splitlines()) == 1
    assert "damaged" in out.output or "malformed" in out.output
    assert not target.exists()  # refused before this database was made


@pytest.mark.slow
def test_concurrent_merges_of_the_same_sources_import_each_session_once(tmp_path):
    sources = []
    for i in range(3):
        db = host_b(tmp_path / f"src{i}", sessions=2)
        db.conn.close()
        sources.append(str(tmp_path / f"src{i}" / ".sessionkit" / "sessions.db"))
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    failures = []
    for round_ in range(5):
        target = tmp_path / f"m{round_}.db"
        procs = [subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(target), "merge", *sources],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for _ in range(8)]
        outs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
        for p in procs:
            p.stdout.close()
        failures += [out for code, out in outs if code != 0]
        db = open_db(target)
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 6
        assert db.execute("SELECT COUNT(DISTINCT number) FROM sessions").fetchone()[0] == 6
        assert sum(out.count("  imported  ") for _, out in outs) == 6
        db.conn.close()
    assert failures == []


def _folder_state(folder: Path) -> dict:
    """Every file below ``folder``, SQLite's -wal and -shm included: its size, mtime and content."""
    import hashlib

    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _merge_process(target: Path, source: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    return subprocess.run([sys.executable, "-m", "sessionkit", "--db", str(target), "merge",
                           str(source), "--json"], capture_output=True, text=True, timeout=120,
                          env=env)


def test_merge_leaves_the_source_folder_as_it_found_it(tmp_path):
    """A merge left sessions.db-wal and sessions.db-shm beside the database it read (a read-only
    connection makes them and never removes them). Its folder holds the same files afterwards,
    each with the same size, time and content."""
    host_b(tmp_path / "b", sessions=2).conn.close()
    folder = tmp_path / "b" / ".sessionkit"
    before = _folder_state(tmp_path / "b")
    assert ".sessionkit/sessions.db" in before
    assert not any(n.endswith(("-wal", "-shm")) for n in before)
    res = _merge_process(tmp_path / "t" / "m.db", folder / "sessions.db")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)[0]["imported"]) == 2
    assert _folder_state(tmp_path / "b") == before
    again = _merge_process(tmp_path / "t" / "m.db", folder / "sessions.db")  # nothing to import
    assert again.returncode == 0, again.stderr
    assert _folder_state(tmp_path / "b") == before


def _half_read_then(conn, exc):
    rows = conn.execute("SELECT * FROM sessions")
    rows.fetchone()  # half read, as where a signal lands
    raise exc


def test_a_merge_stopped_with_a_cursor_on_the_source_open_still_tidies_its_folder(tmp_path,
                                                                                  monkeypatch):
    """A signal that lands while a query on the source is half read (a loop over its rows) left
    that cursor in the frames of the exception in flight, which kept the source's connection open
    after close() (sqlite3_close_v2 waits for its statements), so the folder kept the -wal and
    -shm its read made (CI saw it once under SIGHUP). Stopped at such a point every time here
    (the second session's rows), the folder holds what it held before."""
    from sessionkit import merge
    from sessionkit.errors import Interrupted

    host_b(tmp_path / "b", sessions=3).conn.close()
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    before = _folder_state(tmp_path / "b")
    assert not any(n.endswith(("-wal", "-shm")) for n in before)
    real = merge._select_children
    calls = []

    def stopped_mid_query(conn, table, *rest):
        calls.append(table)
        if len(calls) > 3:
            _half_read_then(conn, Interrupted(128 + signal.SIGHUP))
        return real(conn, table, *rest)

    monkeypatch.setattr(merge, "_select_children", stopped_mid_query)
    (tmp_path / "t").mkdir()
    target = open_db(tmp_path / "t" / "m.db", create=True)
    with pytest.raises(Interrupted):
        merge_database(target, source)
    assert _folder_state(tmp_path / "b") == before


@pytest.mark.parametrize("where", ["open", "check", "chained"])
def test_other_ways_a_stopped_merge_held_the_source_open(tmp_path, monkeypatch, where):
    """Three more ways a stopped merge kept a connection to the source open past the tidying: a
    signal during the open's quick_check (the half-open connection in that frame), the same in
    the CLI's check of its sources before the merge, and a second signal landing in the clean-up
    of the first (the cursor then hangs off the new exception's __context__)."""
    from sessionkit import merge
    from sessionkit.errors import Interrupted

    host_b(tmp_path / "b", sessions=2).conn.close()
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    before = _folder_state(tmp_path / "b")

    real_columns = merge._columns

    def columns_stopped(conn, table):  # the open's checks, after its quick_check
        if table == "sessions" and real_columns(conn, "steps"):
            _half_read_then(conn, Interrupted(128 + signal.SIGTERM))
        return real_columns(conn, table)

    (tmp_path / "t").mkdir()
    target = open_db(tmp_path / "t" / "m.db", create=True)
    if where in ("open", "check"):
        monkeypatch.setattr(merge, "_columns", columns_stopped)
        with pytest.raises(Interrupted):
            if where == "open":
                merge_database(target, source)
            else:
                merge.check_sources([source], target.path, contents=True)
    else:
        real_select = merge._select_children

        def stopped_twice(conn, table, *rest):
            try:
                _half_read_then(conn, Interrupted(128 + signal.SIGTERM))
            finally:
                raise KeyboardInterrupt  # Ctrl-C during the clean-up of the first
            return real_select(conn, table, *rest)

        monkeypatch.setattr(merge, "_select_children", stopped_twice)
        with pytest.raises(KeyboardInterrupt):
            merge_database(target, source)
    assert _folder_state(tmp_path / "b") == before


def test_a_merge_leaves_the_exception_its_caller_handles_alone(tmp_path):
    """merge_database called while its caller handles an exception clears no frame of that one
    (the clearing is for exceptions raised inside the merge)."""
    host_b(tmp_path / "b", sessions=1).conn.close()
    (tmp_path / "t").mkdir()
    target = open_db(tmp_path / "t" / "m.db", create=True)

    def failing():
        kept = "the caller's local"  # noqa: F841 (read back from the frame below)
        raise ValueError("the caller's own")

    try:
        failing()
    except ValueError as exc:
        merge_database(target, tmp_path / "b" / ".sessionkit" / "sessions.db")
        frame = exc.__traceback__.tb_next.tb_frame
        assert frame.f_locals.get("kept") == "the caller's local"


def test_merge_of_a_database_in_use_keeps_its_files(tmp_path):
    """A source that another connection holds open keeps its -wal and -shm (they are that
    connection's), and that connection goes on working."""
    live = host_b(tmp_path / "b", sessions=1)
    folder = tmp_path / "b" / ".sessionkit"
    names = sorted(os.listdir(folder))
    assert "sessions.db-wal" in names and "sessions.db-shm" in names
    res = _merge_process(tmp_path / "m.db", folder / "sessions.db")
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(folder)) == names
    with live.conn:
        live.execute("UPDATE sessions SET name = 'renamed'")
    assert live.execute("SELECT name FROM sessions").fetchone()[0] == "renamed"
    live.conn.close()


def test_merge_of_a_copy_with_its_wal_but_no_shm_reads_the_wal_and_adds_nothing(tmp_path):
    """A database copied with its -wal but without its -shm (from a host where it was open): the
    sessions only in the -wal are imported, and no -shm is left beside the copy, nor is the copy
    changed by a checkpoint."""
    live = host_b(tmp_path / "live", sessions=2)
    live.execute("PRAGMA wal_autocheckpoint = 0")
    src = tmp_path / "live" / ".sessionkit" / "sessions.db"
    copy = tmp_path / "copy" / "sessions.db"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    Path(f"{copy}-wal").write_bytes(Path(f"{src}-wal").read_bytes())
    live.conn.close()
    main_only = sqlite3.connect(f"{copy.as_uri()}?immutable=1", uri=True)
    assert main_only.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sessions'"
                             ).fetchone()[0] == 0  # the sessions are in the -wal only
    main_only.close()
    before = _folder_state(tmp_path / "copy")
    res = _merge_process(tmp_path / "m.db", copy)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)[0]["imported"]) == 2
    assert _folder_state(tmp_path / "copy") == before


def test_a_hard_link_to_this_database_is_this_database(tmp_path):
    """`merge` of a hard link to this database read it as another one (a second -wal beside the
    link, left there, and every session "already here"). It is this database: refused, exit 2, and
    nothing is made beside the link."""
    host_b(tmp_path / "b", sessions=1).conn.close()
    db_path = tmp_path / "b" / ".sessionkit" / "sessions.db"
    linked = tmp_path / "elsewhere" / "copy.db"
    linked.parent.mkdir()
    os.link(db_path, linked)
    before = _folder_state(tmp_path / "elsewhere")
    res = _merge_process(db_path, linked)
    assert res.returncode == 2, res.stderr
    assert res.stderr == f"Error: {linked} is this database; name another one to merge\n"
    assert _folder_state(tmp_path / "elsewhere") == before
    db = open_db(db_path)
    with pytest.raises(UsageError, match="is this database"):
        merge_database(db, linked)
    db.conn.close()


@pytest.mark.parametrize("bad", ["missing", "fifo", "self", "junk", "foreign"])
def test_a_refused_source_makes_no_database(tmp_path, bad):
    """`sessionkit merge typo.db` in a folder with no database made .sessionkit/sessions.db (and
    with --db, that file and its folders) before it refused the source. Every source is checked
    first: a refused one leaves nothing behind, and no other source is merged."""
    host_b(tmp_path / "b", sessions=1).conn.close()
    good = tmp_path / "b" / ".sessionkit" / "sessions.db"
    target = tmp_path / "t" / "deep" / "m.db"
    sources = {"missing": tmp_path / "typo.db", "fifo": tmp_path / "fifo.db", "self": target,
               "junk": tmp_path / "junk.db", "foreign": tmp_path / "foreign.db"}[bad]
    if bad == "fifo":
        os.mkfifo(sources)
    if bad == "junk":  # a file that is no SQLite database
        sources.write_text("not a database, only text that fills more than a header\n" * 4)
    if bad == "foreign":  # an SQLite database, not sessionkit's
        conn = sqlite3.connect(sources)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    if bad == "self":  # a database that exists and is named twice: here and as a source
        target.parent.mkdir(parents=True)
        open_db(target, create=True).conn.close()
    before = _folder_state(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "sessionkit", "--db", str(target), "merge", str(good), str(sources)],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"})
    assert res.returncode == {"missing": 1, "fifo": 1, "self": 2, "junk": 1, "foreign": 1}[bad], \
        res.stderr
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert _folder_state(tmp_path) == before
    assert (tmp_path / "t").exists() == (bad == "self")
    assert not (tmp_path / ".sessionkit").exists()


def _many_sessions(path: Path, n: int) -> None:
    """Make the ended database at ``path`` hold ``n`` more sessions of 20 steps each (copies of its
    first session's first step, with new ids), so that merging it takes seconds."""
    import uuid

    conn = sqlite3.connect(path)
    cur = conn.execute("SELECT * FROM sessions ORDER BY number LIMIT 1")
    scols = [d[0] for d in cur.description]
    session = dict(zip(scols, cur.fetchone()))
    cur = conn.execute("SELECT * FROM steps WHERE session_id = ? LIMIT 1", [session["id"]])
    tcols = [d[0] for d in cur.description]
    step = dict(zip(tcols, cur.fetchone()))
    top = conn.execute("SELECT MAX(number) FROM sessions").fetchone()[0]
    for i in range(n):
        sid = str(uuid.uuid4())
        row = {**session, "id": sid, "number": top + 1 + i, "name": f"copy-{i}"}
        conn.execute(f"INSERT INTO sessions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
        for seq in range(1, 21):
            srow = {**step, "id": str(uuid.uuid4()), "session_id": sid, "seq": seq,
                    "output_tail": "x" * 2000}
            conn.execute(f"INSERT INTO steps ({', '.join(srow)}) VALUES ({', '.join('?' * len(srow))})",
                         list(srow.values()))
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")  # closed cleanly: no -wal or -shm beside it
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_merge_stopped_by_a_signal_leaves_the_source_folder_and_this_database_whole(tmp_path, sig):
    """SIGTERM or SIGHUP (`timeout`, a closed SSH session) killed a merge outright: the source's
    folder kept the -wal and -shm its read made, for good (a later merge takes them for a
    database in use). A merge stopped by any of the three now leaves the source's folder as it was,
    keeps the sessions it had committed here, and exits 128 + the signal's number."""
    host_b(tmp_path / "b", sessions=1).conn.close()
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    _many_sessions(source, 600)
    before = _folder_state(tmp_path / "b")
    assert not any(n.endswith(("-wal", "-shm")) for n in before)
    target = tmp_path / "t" / "m.db"
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(target), "merge",
                             str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    import time

    deadline = time.monotonic() + 60
    imported = 0
    while imported < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            probe = sqlite3.connect(f"{target.as_uri()}?mode=ro", uri=True, timeout=5)
            imported = probe.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            probe.close()
        except sqlite3.Error:
            continue
    assert proc.poll() is None and imported >= 5, "the merge ended before it could be stopped"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err
    assert _folder_state(tmp_path / "b") == before
    db = open_db(target)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kept = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert 5 <= kept < 601
    # every session kept came whole: 20 steps each (the first: its one step)
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 1 + 20 * (kept - 1)
    db.conn.close()
    again = _merge_process(target, source)
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)[0]["imported"]) == 601 - kept
    assert _folder_state(tmp_path / "b") == before


@pytest.mark.parametrize("sig, raised", [(signal.SIGTERM, "Interrupted"),
                                         (signal.SIGINT, "KeyboardInterrupt")])
def test_a_signal_while_the_source_folder_is_tidied_waits_for_the_tidying(tmp_path, monkeypatch,
                                                                           sig, raised):
    """A signal that landed while the merge tidied the source's folder (its last step, the
    -wal and -shm its read made) cut that short and left both files there for good. Now it waits
    until the folder is as it was, and is raised then: the merge still ends with its status."""
    import sessionkit.db as skdb
    from sessionkit.errors import Interrupted

    host_b(tmp_path / "b", sessions=1).conn.close()
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    _many_sessions(source, 3)
    before = _folder_state(tmp_path / "b")
    assert not any(n.endswith(("-wal", "-shm")) for n in before)
    tidy = skdb._close_as_last_reader

    def signalled_then_tidy(path):
        os.kill(os.getpid(), sig)  # delivered now, in the middle of the tidying
        return tidy(path)

    monkeypatch.setattr(skdb, "_close_as_last_reader", signalled_then_tidy)
    db = open_db(tmp_path / "t" / "m.db", create=True)
    with pytest.raises((Interrupted, KeyboardInterrupt)) as stopped:
        merge_database(db, source)
    assert type(stopped.value).__name__ == raised
    if raised == "Interrupted":
        assert stopped.value.exit_code == 128 + sig
    assert _folder_state(tmp_path / "b") == before
    assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 4  # all were committed


def _artifact_files_on_disk(db_path: Path) -> set[str]:
    root = artifacts_root(db_path)
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.slow
def test_a_merge_killed_mid_copy_leaves_no_files_that_no_row_names(tmp_path):
    """kill -9 while a merge copied a session's artifact files rolled the session back in the
    database but left the files it had copied in artifacts/session-N/. A session started here
    afterwards took that number, and so that folder and the stray files; merging again put the
    session under N+1 and the strays stayed for good. The next merge now removes what the killed
    one had copied and no row names, before it imports anything."""
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    files_source(source, "part", [256 * 1024] * 400)

    target = tmp_path / "t" / "m.db"
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(target), "merge",
                             str(source)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    import time

    deadline = time.monotonic() + 60
    copied = artifacts_root(target) / "session-1"
    while not (copied.is_dir() and any(copied.rglob("*.bin"))) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    here = open_db(target)
    assert here.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0, \
        "the merge committed before it could be killed"
    here.conn.close()
    assert any("/session-1/" in p for p in _artifact_files_on_disk(target))  # copied, no row

    # a session of this host takes number 1, and with it the folder of the strays
    runner = CliRunner()
    for args in (["start", "--objective", "here"], ["step", "run", "hello", "--", "echo", "hi"],
                 ["end", "--outcome", "said hi"]):
        assert runner.invoke(cli, ["--db", str(target), *args]).exit_code == 0
    again = _merge_process(target, source)
    assert again.returncode == 0, again.stderr
    assert [s["local_number"] for s in json.loads(again.stdout)[0]["imported"]] == [2]
    here = open_db(target)
    recorded = {r[0] for r in here.execute("SELECT path FROM artifacts WHERE missing = 0")}
    assert _artifact_files_on_disk(target) == recorded
    assert sum("/session-2/" in p for p in recorded) == 400
    assert any("/session-1/" in p for p in recorded)  # the local session's log is kept
    here.conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_merge_stopped_mid_copy_leaves_no_file_or_folder_of_the_session(tmp_path, sig):
    """SIGTERM or Ctrl-C while a merge copied a session's files rolled the session back and
    removed the copies it had finished, but not the one it was copying (the signal lands inside
    the copy) nor the folders it had made. Every file and folder the import made is now written
    down before it is made, and removed when the session is rolled back."""
    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    files_source(source, "part", [256 * 1024] * 400)
    target = tmp_path / "t" / "m.db"
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(target), "merge",
                             str(source)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    import time

    deadline = time.monotonic() + 60
    copied = artifacts_root(target) / "session-1"
    while not (copied.is_dir() and any(copied.rglob("*.bin"))) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err
    here = open_db(target)
    assert here.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
    here.conn.close()
    root = artifacts_root(target)
    assert [str(p) for p in root.rglob("*")] == [str(root / ".merge-journals")]  # and no journal


MERGE_ON_A_FULL_DISK = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=3m tmpfs "$1" || exit 77
    "$2" -m sessionkit --db "$1/m.db" merge "$3" --json > "$1/merge.json"; echo "EXIT $?"
    "$2" - "$1" <<'PY'
    import json, sqlite3, sys
    from pathlib import Path
    root = Path(sys.argv[1])
    conn = sqlite3.connect(root / "m.db")
    rows = conn.execute("SELECT path, missing, origin_path FROM artifacts").fetchall()
    files = sorted(str(p) for p in (root / "artifacts-m").rglob("*") if p.is_file())
    print("STATE " + json.dumps({"rows": rows, "files": files,
                                 "merge": json.loads((root / "merge.json").read_text())}))
    PY
""")


def test_a_copy_that_fills_the_disk_leaves_no_partial_file(tmp_path):
    """A file whose copy ran out of space became a missing row ("no space left on device"), but
    the part of it already written stayed below artifacts/session-N/, a file no row names, taking
    the space the rest of the merge needed. It is removed now; the files after it are copied."""
    from small_disk import run_on_small_disk

    source = tmp_path / "b" / ".sessionkit" / "sessions.db"
    files_source(source, "part", [5 * 1024 * 1024, 64 * 1024])  # larger than the disk, then small
    result = run_on_small_disk(MERGE_ON_A_FULL_DISK, tmp_path, str(source), timeout=180)
    assert "EXIT 0" in result.stdout, result.stdout + result.stderr
    state = json.loads(result.stdout.split("STATE ", 1)[1])
    by_origin = {Path(origin).name: (path, missing) for path, missing, origin in state["rows"]}
    assert by_origin["part-0000.bin"][1] == 1 and by_origin["part-0001.bin"][1] == 0
    (missing,) = state["merge"][0]["missing_artifacts"]
    assert Path(missing["path"]).name == "part-0000.bin"
    assert "No space left on device" in missing["reason"] or "no space" in missing["reason"]
    assert state["files"] == [by_origin["part-0001.bin"][0]]  # no partial part-0000.bin


def _merge_without_file_capabilities(target: Path, *sources: Path) -> subprocess.CompletedProcess:
    """``sessionkit --db target merge sources`` in a child process that file permissions bind (as
    root, as CI runs, it loses the capabilities that let root ignore them: util-linux's setpriv)."""
    import shutil

    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    argv = [sys.executable, "-m", "sessionkit", "--db", str(target), "merge", *map(str, sources)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux's setpriv to drop file capabilities")
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("locked", ["artifacts", "journals"])
def test_a_read_only_artifacts_folder_is_refused_before_anything_is_imported(tmp_path, locked):
    """With this database's artifacts folder (or its .merge-journals) read-only, merge imported
    the sessions with every artifact row recorded missing ("Permission denied"), for good: merging
    again found the sessions already here and copied nothing. It is refused now, in one line,
    before any session is imported; once the folder is writable, merging again copies the files."""
    sources = [tmp_path / name / "sessions.db" for name in ("a", "b")]
    for source in sources:
        files_source(source, "part", [1024, 2048])
    target = tmp_path / "t" / "m.db"
    open_db(target, create=True).conn.close()
    folder = artifacts_root(target)
    (folder / ".merge-journals").mkdir(parents=True)
    locked_folder = folder if locked == "artifacts" else folder / ".merge-journals"
    before = [_folder_state(source.parent) for source in sources]
    locked_folder.chmod(0o555)
    try:
        res = _merge_without_file_capabilities(target, *sources)
    finally:
        locked_folder.chmod(0o755)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout == ""
    assert res.stderr == (f"Error: {locked_folder} cannot be written: merge copies the imported "
                          "sessions' files there; make it writable and merge again\n")
    assert open_db(target)["sessions"].count == 0
    assert [_folder_state(source.parent) for source in sources] == before
    again = _merge_without_file_capabilities(target, *sources)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("artifacts: 2 copied, 0 recorded as missing") == 2, again.stdout


def test_a_merge_never_writes_into_a_step_folder_it_did_not_make(tmp_path):
    """This database's artifacts folder may hold files that no row of it names: those of a
    database deleted and started again in the same place, or of another database with the same
    stem. A merge copied the imported session's files to the same names there, over them (and a
    merge stopped midway then removed them as its own copies). Each step folder of the session is
    now made by the merge itself, ``NN-name.2`` (``.3``, ...) when that name is taken, as a step
    does, and the files found there stay as they were."""
    source = tmp_path / "b" / "sessions.db"
    files_source(source, "part", [1024, 2048])
    target = tmp_path / "t" / "m.db"
    stale = artifacts_root(target) / "session-1"
    (stale / "01-part").mkdir(parents=True)
    (stale / "01-part" / "part-0000.bin").write_text("an earlier database's file\n")
    (stale / "01-part.2").mkdir()
    before = _folder_state(stale)
    out = CliRunner().invoke(cli, ["--db", str(target), "merge", str(source)])
    assert out.exit_code == 0, out.output
    assert "artifacts: 2 copied, 0 recorded as missing" in out.output, out.output
    assert {k: v for k, v in _folder_state(stale).items() if k in before} == before
    assert not any((stale / "01-part.2").iterdir())
    db = open_db(target)
    rows = list(db.execute("SELECT path, sha256, missing FROM artifacts"))
    assert len(rows) == 2
    for path, sha256, missing in rows:
        assert missing == 0 and Path(path).parent == stale / "01-part.3"
        import hashlib
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256
    again = CliRunner().invoke(cli, ["--db", str(target), "merge", str(source)])
    assert again.exit_code == 0 and "1 already here" in again.output, again.output
    report = CliRunner().invoke(cli, ["--db", str(target), "export", "1", "--json"])
    assert report.exit_code == 0 and "01-part.3" in report.output
