"""Bring sessions recorded in other databases (other GPU hosts) into this one.

Sessions are keyed by their UUID, so a merge is idempotent: a session that is already here with the
same content is skipped. One that is here with different content is a conflict: it is reported, with
the fields that differ (here and there), and neither copy is changed (the step columns of
:data:`UNCOMPARED_STEP_COLUMNS` are not compared). An imported session keeps its id and host; its number on the host that
recorded it is kept as ``origin_number`` and it gets the next local number. Every row that hangs off
it (steps, metrics, artifacts, telemetry, environment snapshots, applied patterns, correctness and
bench results with their samples) comes with it, with integer row ids renumbered.

The other database is opened read-only and is never migrated or changed, and its folder keeps
the files it had (:func:`sessionkit.db.read_as_found`: no ``-wal`` or ``-shm`` left beside it); it may be at an older
migration level (tables or columns it lacks get their defaults here) or a newer one (what this
version does not know is left out, and said so). Artifact files are copied under this database's
``artifacts/session-N/``, each step's in a folder the merge makes itself (``NN-name.2``... when
that name is taken: a file already there is never written over), when they can be found inside the other database's own artifacts folder (at
their recorded path, or at the same place below that folder); otherwise their row is kept with
``missing = 1``. Reads are confined as writes are: a recorded path that resolves outside the other
database's artifacts folder (an absolute path elsewhere, ``..``, a symlink out) is never read, nor
is any file when that folder is itself a symlink, and its row is kept with ``missing = 1`` and the
reason. A copy only ever
lands inside ``artifacts/session-N/``: a recorded path whose part below ``session-N/`` is absolute,
holds ``..`` or resolves (through symlinks) outside that folder is not copied; its row is kept with
``missing = 1`` and the reason is listed in :attr:`MergeResult.missing_artifacts`, as is a copy that
fails (unreadable file, full disk, the same file).

A session's files are copied inside the transaction that imports it, each file and folder written
down first in a journal below ``artifacts/.merge-journals/``: a session rolled back (Ctrl-C, SIGTERM)
takes its copies with it, and the copies of a merge killed outright (kill -9, a crash), which SQLite
rolls back, are removed by the next merge into this database. A copy that fails midway (a full disk)
leaves no partial file. A signal that lands as an import commits keeps its copies (rows name them).
What a journal names is removed only when it is named as a merge names its copies (inside a
``session-N/`` folder, no ``..``, no symbolic link on the way) and no row names that file; a journal
that another merge still holds (``flock``) is left alone, and a ``.merge-journals`` that is a
symbolic link stops the merge before anything is imported.

Before anything is read, each other database passes ``PRAGMA quick_check``; a damaged one is refused
whole (:class:`~sessionkit.errors.DatabaseError`), so nothing half-read is imported.

The "already here" test runs inside the write transaction (``BEGIN IMMEDIATE``) that imports the
session, so merges of the same databases run at the same time import each session once and report it
as already here in the others.

Sessions still open in the other database are not imported: their content may still change, so a
later merge would only find a conflict. Merge again once they have ended.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .db import (_applied_names, artifacts_root, database_file_exists, empty_file_message,
                 make_own_folder, not_a_folder_of_its_own, read_as_found)
from .errors import DatabaseError, Interrupted, NoDatabaseError, SessionkitError, UsageError
from .timefmt import now_iso

# Columns that say where a session sits in one database, not what it recorded.
LOCAL_COLUMNS = {"number", "origin_number", "imported_from", "imported_at"}

# Step columns left out when two copies of a session are compared: they say how a running step's
# process was watched where it ran (``pid_ns``: in which pid namespace its pid meant it), not what
# the step recorded, and a database of an older migration level lacks them (``pid_ns`` came with
# ``m008_steps_pid_namespace``). A copy that came here through such a database holds NULL there,
# so a later merge of the session from a database that has the value is no conflict.
UNCOMPARED_STEP_COLUMNS = {"pid_ns"}


@dataclass
class MergeResult:
    """What one merge did. Each list holds ``{"id", "number", "name", ...}`` dicts of the source's
    sessions; ``imported`` ones also carry their new ``local_number``, ``conflicts`` the
    ``local_number`` of the copy here and either a ``reason`` or ``differences`` (``[{"field",
    "here", "there"}]``, at most :data:`MAX_DIFFERENCES`) with ``differences_total``."""

    source: str
    imported: list[dict] = field(default_factory=list)
    unchanged: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    skipped_open: list[dict] = field(default_factory=list)
    artifacts_copied: int = 0
    artifacts_missing: int = 0
    missing_artifacts: list[dict] = field(default_factory=list)  # {"session_id", "path", "reason"}
    left_out: list[str] = field(default_factory=list)  # "table" or "table.column" not known here

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("source", "imported", "unchanged", "conflicts",
                                              "skipped_open", "artifacts_copied",
                                              "artifacts_missing", "missing_artifacts",
                                              "left_out")}


def _open_source(path: Path, shown: Path) -> sqlite3.Connection:
    """A read-only connection to the database at ``path`` (``shown`` is the path it is known by,
    for messages), checked with ``PRAGMA quick_check`` and for sessionkit's tables and recorded
    migrations. Raises :class:`DatabaseError` (one line) for one that cannot be read, is damaged
    or is not sessionkit's. Whatever stops it (a signal during the quick_check, say), the
    connection it made is closed before it leaves: left to the garbage collector (a connection
    and its statement cache reference each other), it kept the source's folder its -wal and -shm."""
    made: list[sqlite3.Connection] = []
    try:
        return _open_checked(path, shown, made)
    except BaseException:
        for conn in made:
            conn.close()
        raise


def _open_checked(path: Path, shown: Path, made: list) -> sqlite3.Connection:
    """:func:`_open_source`'s work; each connection it makes is appended to ``made``."""
    conn = None
    # A WAL database in a folder nobody may write (an archive, a read-only mount) has no -shm
    # to share: it opens as immutable then, as the reading commands do (nothing writes it).
    tries = [""] if os.access(path.parent, os.W_OK) else ["", "&immutable=1"]
    for extra in tries:
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{extra}", uri=True)
            made.append(conn)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
            break
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
                conn = None
            if extra == tries[-1]:
                raise DatabaseError(f"cannot read {shown}: {exc}") from None
    # The connection is closed by _open_source on any way out but the return.
    if problems != ["ok"]:
        found = " ".join(" ".join(str(p).split()) for p in problems)[:200]
        raise DatabaseError(f"{shown} is damaged (PRAGMA quick_check: {found}); nothing was imported from it")
    if not _columns(conn, "sessions") or not _columns(conn, "steps"):
        raise DatabaseError(f"{shown} is not a sessionkit database (no sessions or steps table)")
    # As every other command tells them apart (sessionkit.db): another program's database may
    # hold tables of those names, whose rows this merge could not read or insert.
    try:
        applied = _applied_names(conn)
    except sqlite3.DatabaseError:
        applied = None
    if not applied:
        raise DatabaseError(f"{shown} is not a sessionkit database (no sessionkit migrations "
                            "recorded in it)")
    return conn


def _columns(conn, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])")]


def _tables(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name")]


def _foreign_keys(conn, table: str) -> list[tuple[str, str, str]]:
    """(column, other table, other column) of each foreign key of ``table``."""
    return [(r[3], r[2], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list([{table}])")]


def _integer_pk(conn, table: str) -> str | None:
    """The INTEGER PRIMARY KEY column (a rowid alias, renumbered on import), if any."""
    pks = [r for r in conn.execute(f"PRAGMA table_info([{table}])") if r[5]]
    if len(pks) == 1 and pks[0][2].upper() == "INTEGER":
        return pks[0][1]
    return None


def _child_plan(local, source) -> tuple[list[tuple[str, list]], list[str]]:
    """Tables below ``sessions`` in the order to copy them: [(table, foreign keys)], and what the
    source has that this database does not know."""
    local_tables, source_tables = set(_tables(local)), set(_tables(source))
    left_out = sorted(source_tables - local_tables)
    plan: list[tuple[str, list]] = []
    placed = {"sessions"}
    pending = sorted((local_tables & source_tables) - {"sessions"})
    while pending:
        progress = False
        for table in list(pending):
            fks = _foreign_keys(local, table)
            parents = {other for _, other, _ in fks}
            if parents and parents <= placed | {table}:
                plan.append((table, fks))
                placed.add(table)
                pending.remove(table)
                progress = True
        if not progress:  # tables that do not hang off a session are not per-session data
            break
    for table, _ in plan:
        known = set(_columns(local, table))
        left_out += [f"{table}.{c}" for c in _columns(source, table) if c not in known]
    known = set(_columns(local, "sessions"))
    left_out += [f"sessions.{c}" for c in _columns(source, "sessions") if c not in known]
    return plan, left_out


def _rows(conn, sql: str, args=()) -> list[dict]:
    cur = conn.execute(sql, list(args))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _select_children(source, table: str, fks, copied: dict[str, dict]) -> list[dict]:
    """Rows of ``table`` that belong to the session whose parent rows are in ``copied``
    (table -> {source key: local key})."""
    clauses, args = [], []
    for column, other, other_column in fks:
        keys = list(copied.get(other, {}))
        if other == table or not keys:
            continue
        marks = ",".join("?" * len(keys))
        clauses.append(f"[{column}] IN ({marks})")
        args += keys
    if not clauses:
        return []
    order = "rowid"
    return _rows(source, f"SELECT * FROM [{table}] WHERE {' OR '.join(clauses)} ORDER BY {order}", args)


def _fingerprint(conn, session_id: str, session_cols: list[str], step_cols: list[str],
                 counts: list[tuple[str, str]]) -> str:
    """A digest of what a session recorded, over the columns both databases know."""
    digest = hashlib.sha256()
    srow = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in session_cols)} FROM sessions WHERE id = ?",
                        [session_id]).fetchone()
    digest.update(json.dumps(srow, default=str).encode())
    for row in conn.execute(f"SELECT {', '.join(f'[{c}]' for c in step_cols)} FROM steps "
                            "WHERE session_id = ? ORDER BY id", [session_id]):
        digest.update(json.dumps(row, default=str).encode())
    for table, column in counts:
        n = conn.execute(f"SELECT COUNT(*) FROM [{table}] WHERE [{column}] IN "
                         "(SELECT id FROM steps WHERE session_id = ?)", [session_id]).fetchone()[0]
        digest.update(f"{table}:{n};".encode())
    return digest.hexdigest()


MAX_DIFFERENCES = 20  # fields listed per conflicting session (the rest are counted)
SHOWN_DIFFERENCES = 5  # of those, printed by format_merge


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(local, source, session_id: str, session_cols: list[str], step_cols: list[str],
                 counts: list[tuple[str, str]]) -> tuple[list[dict], int]:
    """What differs between the two copies of a session, over what :func:`_fingerprint` reads:
    ([{"field", "here", "there"}] with at most :data:`MAX_DIFFERENCES` entries, total number of
    differences). Values are shortened reprs; ``field`` is a session column, ``step N (name)
    column``, ``step N (name)`` for a step only one side has, or ``TABLE rows``."""
    found: list[dict] = []
    total = 0

    def add(field_name: str, here, there) -> None:
        nonlocal total
        total += 1
        if len(found) < MAX_DIFFERENCES:
            found.append({"field": field_name, "here": _short(here), "there": _short(there)})

    def same(a, b) -> bool:  # as the fingerprint compares: through their JSON text
        return json.dumps(a, default=str) == json.dumps(b, default=str)

    def session_row(conn):
        return _rows(conn, f"SELECT {', '.join(f'[{c}]' for c in session_cols)} FROM sessions "
                           "WHERE id = ?", [session_id])[0]

    mine, theirs = session_row(local), session_row(source)
    for column in session_cols:
        if not same(mine[column], theirs[column]):
            add(column, mine[column], theirs[column])
    cols = list(dict.fromkeys(["id", "seq", "name", *step_cols]))

    def step_rows(conn):
        return {r["id"]: r for r in _rows(conn, f"SELECT {', '.join(f'[{c}]' for c in cols)} FROM steps "
                                                "WHERE session_id = ? ORDER BY seq, id", [session_id])}

    mine_steps, their_steps = step_rows(local), step_rows(source)
    for step_id in list(dict.fromkeys([*mine_steps, *their_steps])):
        a, b = mine_steps.get(step_id), their_steps.get(step_id)
        row = a or b
        label = f"step {row['seq']} ({row['name']})"
        if a is None or b is None:
            add(label, "present" if a else "absent", "present" if b else "absent")
            continue
        for column in step_cols:
            if column != "id" and not same(a[column], b[column]):
                add(f"{label} {column}", a[column], b[column])
    for table, column in counts:
        sql = (f"SELECT COUNT(*) FROM [{table}] WHERE [{column}] IN "
               "(SELECT id FROM steps WHERE session_id = ?)")
        n_here = local.execute(sql, [session_id]).fetchone()[0]
        n_there = source.execute(sql, [session_id]).fetchone()[0]
        if n_here != n_there:
            add(f"{table} rows", n_here, n_there)
    return found, total


def _artifact_tail(path_text: str, markers: list[str]) -> str:
    """An artifact's path below its ``session-N/`` folder (the first of ``markers`` found in the
    recorded path), else its file name."""
    recorded = Path(path_text)
    parts = recorded.parts
    for marker in markers:
        if marker in parts[:-1]:
            return str(Path(*parts[parts.index(marker) + 1:]))
    return recorded.name


def _artifact_source(path_text: str, source_db: Path, folder: str, tail: str) -> tuple[Path | None, str]:
    """The file an artifact row of the source database names, or None and why not.

    Only files inside the source database's own artifacts folder (:func:`~sessionkit.db.artifacts_root`)
    are read: the recorded path (taken relative to the database's folder when relative), then
    ``<artifacts>/<folder>/<tail>``. One that resolves elsewhere (an absolute path out, ``..``, a
    symlink that leads out) is refused, so that a crafted database cannot have any readable file of
    this host copied in. An artifacts folder that is itself a symbolic link is not read at all."""
    root = artifacts_root(source_db)
    if root.is_symlink():  # "inside" it would be inside wherever it points: / or a home folder
        return None, (f"the source database's artifacts folder {root} is a symbolic link; files "
                      "are read only from a real folder")
    recorded = Path(path_text)
    candidates = [recorded if recorded.is_absolute() else source_db.resolve().parent / recorded,
                  root / folder / tail]
    refused = None
    for candidate in candidates:
        try:
            if not candidate.is_file():
                continue
            inside = candidate.resolve().is_relative_to(root.resolve())
        except (OSError, ValueError):  # odd path text, a symlink loop
            continue
        if inside:
            return candidate, ""
        refused = refused or candidate
    if refused is not None:
        return None, (f"its file {str(refused)!r} is outside the source database's artifacts folder "
                      f"({root}); only files inside it are read")
    return None, "file not found"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (through symbolic and hard links alike)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is not there
        return False


def check_sources(others, db_path: str | os.PathLike | None = None, *,
                  contents: bool = False) -> list[Path]:
    """Check the databases to merge before anything is opened or made, and return them as Paths:
    each must be a database file (a regular file, or a link to one) that is not empty, and none
    may be the database at ``db_path`` (the one merged into, when it exists; by a symbolic or a
    hard link too). With ``contents``, each is also opened read-only as :func:`merge_database`
    opens it (its folder left as it was) and must be a readable, undamaged sessionkit database
    (``PRAGMA quick_check``; a ``sessions`` and a ``steps`` table, and sessionkit's migrations
    recorded, as :mod:`sessionkit.db` tells a sessionkit database from another program's).

    Raises :class:`NoDatabaseError` (exit status 1) for the first one that is not there or is an
    empty file (in the words the reading commands use for an empty ``--db``),
    :class:`DatabaseError` (exit status 1) for one that is not a regular file (a folder, a FIFO, a
    device; in the words of :func:`sessionkit.db.database_file_exists`) and :class:`UsageError`
    (exit status 2) for this database; with ``contents``, :class:`DatabaseError` (exit status 1)
    for one that is not a database, is damaged or is not sessionkit's.
    """
    paths = [Path(other) for other in others]
    for other in paths:
        if db_path is not None and _same_file(other, Path(db_path)):
            raise UsageError(f"{other} is this database; name another one to merge")
        if not database_file_exists(other):
            raise NoDatabaseError(f"no database at {other}")
        if os.stat(other).st_size == 0:
            raise NoDatabaseError(empty_file_message(other))
    if contents:
        with _signals_interrupt():
            for other in paths:
                with read_as_found(other) as readable, _frames_released():
                    _open_source(readable, shown=other).close()
    return paths


def _release_frames(exc: BaseException | None, stop: BaseException | None = None,
                    seen: set | None = None) -> None:
    """Clear the locals of the ended frames in the tracebacks of ``exc`` and of the exceptions
    chained to it (``__cause__``, ``__context__``), up to ``stop``: a cursor or a connection to a
    source database that one of them still holds keeps that connection open past close() (Python's
    sqlite3 closes with sqlite3_close_v2, which waits for its statements), and the source's folder
    would then keep the -wal and -shm its read made."""
    seen = set() if seen is None else seen
    if exc is None or exc is stop or id(exc) in seen:
        return
    seen.add(id(exc))
    traceback.clear_frames(exc.__traceback__)
    _release_frames(exc.__cause__, stop, seen)
    _release_frames(exc.__context__, stop, seen)


@contextmanager
def _frames_released():
    """On an exception raised inside the block (a signal's among them), :func:`_release_frames`
    before it leaves, so that the blocks it passes on the way out (read_as_found's tidying) find
    the source's connections closed. The exception the caller was handling, if any, is left
    alone."""
    outer = sys.exc_info()[1]
    try:
        yield
    except BaseException as exc:
        _release_frames(exc, stop=outer)
        raise


@contextmanager
def _signals_interrupt():
    """Inside the block, SIGTERM and SIGHUP raise :class:`~sessionkit.errors.Interrupted` (exit
    status 143, 129) and SIGINT KeyboardInterrupt: the session being imported is rolled back,
    those committed stay, and the source's folder is tidied on the way out. The block gets a
    function, ``hold``: once it is called, a signal waits until the block has ended (the tidying
    of the source's folder is not cut short by it, which left that folder its -wal and -shm), and
    is raised then, unless something else already is. Only in the main thread (elsewhere signals
    cannot be handled); the previous handlers come back after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    state = {"hold": False, "pending": None}

    def stop(signum, frame):
        if state["hold"]:
            state["pending"] = state["pending"] or signum
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(128 + signum)

    def hold() -> None:
        state["hold"] = True

    previous = {sig: signal.signal(sig, stop)
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield hold
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state["pending"] == signal.SIGINT:
        raise KeyboardInterrupt
    if state["pending"]:
        raise Interrupted(128 + state["pending"])


def merge_database(db, other: str | Path) -> MergeResult:
    """Import the sessions of the database at ``other`` into ``db`` (opened with
    :func:`sessionkit.db.open_db`). Returns what was imported, skipped and in conflict.

    Raises :class:`NoDatabaseError` when nothing is at ``other``, :class:`UsageError` when it is
    this database, :class:`DatabaseError` when it is not a readable sessionkit database (or
    not a regular file), and :class:`~sessionkit.errors.SessionkitError` when this database's
    artifacts folder cannot be written (:func:`check_artifacts_folder`), before anything is
    imported. SIGTERM and SIGHUP raise :class:`~sessionkit.errors.Interrupted` (Ctrl-C
    KeyboardInterrupt) with the sessions imported so far committed and the one in progress rolled
    back.
    """
    other = Path(other)
    check_sources([other], db.path)
    # Only read: its folder keeps the files it had (no -wal or -shm left beside it), even when
    # SIGTERM or SIGHUP stops the merge (they would end the process before the folder is tidied).
    # A cursor or connection on the source that the frames of an exception in flight still hold
    # (a signal raised mid-query, or during the open's quick_check) would keep it open past
    # close(); _frames_released clears those frames' locals before the tidying.
    with _signals_interrupt() as hold, read_as_found(other) as readable, _frames_released():
        source = _open_source(readable, shown=other)
        try:
            return _merge(db, source, other)
        finally:
            try:
                hold()  # a signal from here on waits until the folder is tidied (read_as_found)
            finally:
                source.close()


def _merge(db, source, other: Path) -> MergeResult:
    local = db.conn
    result = MergeResult(source=str(other))
    plan, result.left_out = _child_plan(local, source)
    local_session_cols = set(_columns(local, "sessions"))
    source_session_cols = _columns(source, "sessions")
    shared_session = [c for c in source_session_cols if c in local_session_cols and c not in LOCAL_COLUMNS]
    local_step_cols = set(_columns(local, "steps"))
    shared_step = [c for c in _columns(source, "steps")
                   if c in local_step_cols and c not in UNCOMPARED_STEP_COLUMNS]
    counts = [(t, c) for t, fks in plan for c, other_t, _ in fks if other_t == "steps"
              and t not in ("artifacts",)]
    local_artifacts = artifacts_root(db.path)
    check_artifacts_folder(db.path)
    _undo_unfinished_copies(local, local_artifacts)

    order = "ORDER BY started_at, number"
    for srow in _rows(source, f"SELECT * FROM sessions {order}"):
        brief = {"id": srow["id"], "number": srow["number"], "name": srow["name"],
                 "host": srow.get("host")}
        if srow["status"] == "open":
            result.skipped_open.append(brief)
            continue
        step_ids = [r[0] for r in source.execute("SELECT id FROM steps WHERE session_id = ?", [srow["id"]])]
        fingerprint = (shared_session, shared_step, counts)
        _import_session(db, source, other, srow, brief, step_ids, fingerprint, plan, local_artifacts,
                        result)
    return result


def _import_session(db, source, other: Path, srow: dict, brief: dict, step_ids: list, fingerprint,
                    plan, local_artifacts: Path, result: MergeResult) -> None:
    """Copy one session and everything below it in one write transaction, or find it already here
    (unchanged or in conflict). The test for "already here" runs after the write lock is taken, so
    concurrent merges of the same source import each session once. Adds to ``result``."""
    local = db.conn
    origin_number = srow.get("origin_number") or srow["number"]
    journal = _CopyJournal(local_artifacts)
    copied = 0
    missing: list[dict] = []
    local.execute("BEGIN IMMEDIATE")
    try:
        here = local.execute("SELECT number FROM sessions WHERE id = ?", [srow["id"]]).fetchone()
        if here is not None:
            mine = _fingerprint(local, srow["id"], *fingerprint)
            theirs = _fingerprint(source, srow["id"], *fingerprint)
            if mine == theirs:
                local.execute("COMMIT")
                result.unchanged.append({**brief, "local_number": here[0]})
                return
            differences, total = _differences(local, source, srow["id"], *fingerprint)
            local.execute("COMMIT")
            result.conflicts.append({**brief, "local_number": here[0], "differences": differences,
                                     "differences_total": total})
            return
        clash = local.execute(
            f"SELECT COUNT(*) FROM steps WHERE id IN ({','.join('?' * len(step_ids))})",
            step_ids).fetchone()[0] if step_ids else 0
        if clash:
            local.execute("COMMIT")
            result.conflicts.append({**brief, "local_number": None,
                                     "reason": f"{clash} of its step ids belong to another session here"})
            return
        number = local.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM sessions").fetchone()[0]
        # Its files go below artifacts/session-<number>: something already there that is not a
        # folder (a file, or a symbolic link, through which they would land wherever it points)
        # is no session's here, and the import waits until it is moved away, as a step does.
        folder = local_artifacts / f"session-{number}"
        problem = not_a_folder_of_its_own(folder)
        if problem:
            local.execute("COMMIT")
            result.conflicts.append({**brief, "local_number": None,
                                     "reason": f"{folder} is {problem}, where its step files "
                                               "would go: move it away and merge again"})
            return
        session_cols = set(_columns(local, "sessions"))
        row = {k: v for k, v in srow.items() if k in session_cols}
        row.update(number=number, origin_number=origin_number,
                   imported_from=srow.get("imported_from") or str(other.resolve()),
                   imported_at=now_iso())
        _insert(local, "sessions", row)
        placed: dict[str, Path] = {}  # where this import puts each step folder (see _own_target)
        keymap: dict[str, dict] = {"sessions": {srow["id"]: srow["id"]}}
        for table, fks in plan:
            cols = set(_columns(local, table))
            pk = _integer_pk(local, table)
            keymap[table] = {}
            for child in _select_children(source, table, fks, keymap):
                new = {k: v for k, v in child.items() if k in cols}
                for column, other_t, _ in fks:
                    if new.get(column) is not None and other_t in keymap:
                        new[column] = keymap[other_t].get(new[column], new[column])
                if table == "artifacts":
                    got, reason = _place_artifact(new, other, srow["number"], origin_number,
                                                  local_artifacts / f"session-{number}", journal,
                                                  placed)
                    if got is None:
                        missing.append({"session_id": srow["id"], "path": new.get("origin_path"),
                                        "reason": reason})
                    else:
                        copied += 1
                old_key = child.get(pk) if pk else child.get("id")
                if pk:
                    new.pop(pk, None)
                cur = _insert(local, table, new)
                if old_key is not None:
                    keymap[table][old_key] = cur.lastrowid if pk else old_key
        local.execute("COMMIT")
    except BaseException:
        if local.in_transaction:
            # Its copies go while the write lock is still held: once it is let go, another merge
            # may import this session under the same number, to the same paths.
            try:
                _undo_copies(None, journal.path, local_artifacts)
            finally:
                journal.close()
                local.execute("ROLLBACK")
        else:
            # Committed (a signal that arrived while COMMIT ran is raised as it returns) or rolled
            # back by SQLite itself: rows name its files, or none does. The journal stays for the
            # next merge, which keeps what rows name and removes the rest under the write lock.
            journal.close()
        raise
    journal.discard()  # committed: every file it lists is named by a row
    result.artifacts_copied += copied
    result.artifacts_missing += len(missing)
    result.missing_artifacts += missing
    result.imported.append({**brief, "local_number": number})


def _insert(conn, table: str, row: dict):
    cols = list(row)
    return conn.execute(f"INSERT INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])


COPY_JOURNALS = ".merge-journals"  # below this database's artifacts folder
_SESSION_FOLDER = re.compile(r"session-[0-9]+")  # what a merge copies into, below that folder


class _CopyJournal:
    """The folders and files one session's import makes below this database's artifacts folder
    (``root``), each written down (one JSON line, flushed) before it is made, in a file of its
    own under ``root / COPY_JOURNALS``.

    A merge killed (kill -9, a crash) while it imports a session has its transaction rolled back
    by SQLite, but the files it copied stay; the next merge finds the journal and removes them
    (:func:`_undo_unfinished_copies`). The journal is made with the first folder or file and
    removed once the session is committed. While it is in use the journal is held under an
    exclusive ``flock(2)``, which the kernel lets go when the process ends however it ends: a
    merge into another database that shares this artifacts folder (``a.db`` and ``a.sqlite``)
    does not take the write lock this merge holds, and leaves a journal so held alone."""

    def __init__(self, root: Path):
        import uuid

        self.root = root
        self.path = root / COPY_JOURNALS / f"{uuid.uuid4()}.jsonl"
        self._fh = None

    def _open(self):
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink():
            raise OSError(errno.ELOOP, f"{folder} is a symbolic link")
        # Made under another name and locked before it is named *.jsonl: a merge that looks for
        # journals never finds it unlocked while it is in use.
        made = folder / f".{self.path.name}.new"
        fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        fh = os.fdopen(fd, "a", encoding="utf-8")
        try:
            _lock(fd)
            os.rename(made, self.path)
        except BaseException:
            fh.close()
            made.unlink(missing_ok=True)
            raise
        return fh

    def _add(self, kind: str, path: Path) -> None:
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(json.dumps({kind: str(path)}) + "\n")
        self._fh.flush()  # in the kernel's hands: a process killed after this has it written

    def will_make_folders(self, folder: Path) -> None:
        """Write down the folders up to ``folder`` that do not exist yet, outermost first."""
        missing = []
        while folder != self.root and folder.is_relative_to(self.root) and not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            self._add("folder", made)

    def will_make_folder(self, folder: Path) -> None:
        """Write down ``folder``, about to be made (:func:`~sessionkit.db.make_own_folder`)."""
        self._add("folder", folder)

    def will_write(self, path: Path) -> None:
        self._add("file", path)

    def close(self) -> None:
        """Let the journal go (and its lock), leaving it where it is."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """Remove the journal, then let its lock go. The folder stays: another import may be
        opening its journal in it right now."""
        try:
            if self._fh is not None:
                self.path.unlink(missing_ok=True)
        finally:
            self.close()


def _lock(fd: int) -> bool:
    """Take an exclusive ``flock(2)`` on ``fd`` without waiting: False when another open file
    holds one; True when taken, or when this file system has no such locks (then the database's
    write lock alone keeps merges apart)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: no flock here
        return True
    return True


def _open_unused_journal(journal: Path):
    """The journal at ``journal`` opened for reading and locked, or None when it is not a regular
    file (a symbolic link, a FIFO: nothing a merge writes, and a FIFO would block the read) or
    is held by a merge still running."""
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone, a symbolic link, unreadable
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _lock(fd):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return os.fdopen(fd, "r", encoding="utf-8", errors="replace")


def _made_by_a_merge(path: Path, root: Path, real_root: str, *, folder: bool) -> bool:
    """Whether ``path`` is named as a merge names what it makes below ``root``: absolute, inside a
    ``session-N/`` folder of ``root`` (or that folder itself, for a folder), with no ``..`` and
    no symbolic link on the way below ``root`` (a file: not a link either). Anything else in a
    journal (a damaged or hand-edited one) is never removed."""
    if not path.is_absolute() or ".." in path.parts:
        return False
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if len(rel.parts) < (1 if folder else 2) or not _SESSION_FOLDER.fullmatch(rel.parts[0]):
        return False
    try:
        if folder:
            return os.path.realpath(path) == os.path.join(real_root, *rel.parts)
        return (os.path.realpath(path.parent) == os.path.join(real_root, *rel.parts[:-1])
                and not path.is_symlink())
    except (OSError, ValueError):
        return False


class _RowPaths:
    """The paths the rows of ``conn``'s ``artifacts`` table name, read once (the column has no
    index, and a killed import may leave thousands of files to look up)."""

    def __init__(self, conn):
        self.exact: set[str] = set()
        self.by_name: dict[str, list[str]] = {}
        for (path,) in conn.execute("SELECT path FROM artifacts WHERE path IS NOT NULL"):
            self.exact.add(path)
            self.by_name.setdefault(os.path.basename(path), []).append(path)

    def name(self, path: Path) -> bool:
        """Whether a row names ``path``: as it is, or in another form that leads to the same file
        (a relative path, a link)."""
        if str(path) in self.exact:
            return True
        return any(_same_file(Path(named), path) for named in self.by_name.get(path.name, ()))


def _undo_copies(rows: _RowPaths | None, journal: Path, root: Path, text: str | None = None) -> None:
    """Remove what the import of ``journal`` (whose content is ``text``, when already read) made
    below ``root``: its files that none of ``rows`` (the ``artifacts`` rows) names (every one, with
    ``rows`` None: an import undoing its own copies), then its folders that are left empty
    (innermost first); then the journal. A committed import's files are all named by rows, so it
    keeps them; a rolled-back one's are named by none. Only paths named as a merge names what it
    copies (:func:`_made_by_a_merge`) are touched: never one outside ``root``, nor one outside
    its ``session-N/`` folders."""
    if text is None:
        try:
            text = journal.read_text(encoding="utf-8", errors="replace")
        except OSError:  # gone (another merge undid it first) or unreadable: nothing to go by
            return
    files, folders = [], []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # the last line of a merge killed while writing it
            continue
        if not isinstance(entry, dict):
            continue
        for kind, found in (("file", files), ("folder", folders)):
            if isinstance(entry.get(kind), str):
                found.append(Path(entry[kind]))
    real_root = os.path.realpath(root)
    for path in files:
        try:
            if (_made_by_a_merge(path, root, real_root, folder=False)
                    and not (rows is not None and rows.name(path))
                    and not path.is_dir()):
                path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
    for folder in reversed(folders):
        try:
            if _made_by_a_merge(folder, root, real_root, folder=True):
                folder.rmdir()  # only when empty
        except (OSError, ValueError):
            pass
    try:
        journal.unlink(missing_ok=True)
    except OSError:
        pass


def _check_journal_folder(root: Path) -> None:
    """Refuse a merge into the database whose artifacts folder is ``root`` when its
    ``COPY_JOURNALS`` is there but not a folder of its own (a symbolic link, a file): journals
    read there would be removed wherever it points, and copies could not be written down first.
    Raises :class:`~sessionkit.errors.SessionkitError` (one line)."""
    folder = root / COPY_JOURNALS
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        what = "a symbolic link" if folder.is_symlink() else "not a folder"
        raise SessionkitError(f"{folder} is {what}: merge writes down the files it copies only in "
                              "a folder of its own there; move it away and merge again")


def check_artifacts_folder(db_path: str | os.PathLike) -> None:
    """Refuse a merge into the database at ``db_path`` (which need not exist yet) whose artifacts
    folder (:func:`~sessionkit.db.artifacts_root`) cannot take the imported sessions' files: that
    folder, or the nearest one above it that is there (which would make it), and its
    ``COPY_JOURNALS`` folder when there, must be folders this process may write (``os.access``:
    permissions, a read-only mount); ``COPY_JOURNALS`` must not be a symbolic link. Checked before
    anything is imported: an import whose copies fail records each artifact missing for good,
    since merging again finds the session already here.

    Raises :class:`~sessionkit.errors.SessionkitError` (one line)."""
    root = artifacts_root(db_path)
    _check_journal_folder(root)
    nearest = root
    while not os.path.lexists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise SessionkitError(f"{nearest} is not a folder: merge copies the imported sessions' "
                              "files into a folder there; move it away and merge again")
    journals = root / COPY_JOURNALS
    for folder in (nearest, *([journals] if journals.is_dir() else [])):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SessionkitError(f"{folder} cannot be written: merge copies the imported "
                                  "sessions' files there; make it writable and merge again")


def _undo_unfinished_copies(conn, root: Path) -> None:
    """Before a merge imports anything: undo (:func:`_undo_copies`) the copies of every import
    whose journal is still below ``root``, under this database's write lock. An import writes its
    journal only while it holds that lock and removes it once it has committed or rolled back,
    so a journal found under the lock belongs to a merge that was killed, or to one that has just
    committed (whose files rows name, and which are kept) or rolled back (whose files go either
    way). A journal that another process holds locked (:class:`_CopyJournal`: a merge into a
    database that shares this folder, still running) is left alone, as is anything there that
    is not a regular file."""
    folder = root / COPY_JOURNALS
    if folder.is_symlink() or not folder.is_dir() or not any(folder.glob("*.jsonl")):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = None
        for journal in sorted(folder.glob("*.jsonl")):
            fh = _open_unused_journal(journal)
            if fh is None:
                continue
            with fh:  # locked until its files are undone and it is removed
                try:
                    text = fh.read()
                except OSError:
                    continue
                rows = rows or _RowPaths(conn)
                _undo_copies(rows, journal, root, text)
    finally:
        conn.execute("COMMIT")


def _copy_target(folder: Path, tail: str) -> tuple[Path | None, str | None]:
    """Where an artifact's file would go by its name: ``folder / tail``, or None and why when that
    would not stay inside ``folder`` (an absolute tail, a ``..`` part, no file name). The file
    goes to a folder of its own (:func:`_own_target`), whose real path is checked once made: what
    is already below ``folder`` (a symbolic link out) is never written through."""
    rel = Path(tail)
    if not tail or rel.is_absolute() or ".." in rel.parts or rel.name in ("", "."):
        return None, f"its path below session-N/ ({tail!r}) would leave this database's artifacts folder"
    return folder / rel, None


def _own_target(folder: Path, tail: str, journal: _CopyJournal, placed: dict[str, Path]) -> Path:
    """Where the file at ``tail`` below a session's folder is copied to, below ``folder`` (this
    database's ``session-N/``), in a folder or under a name this import made itself: the tail's
    first part (a step folder, ``01-build``) becomes a folder made for it
    (:func:`~sessionkit.db.make_own_folder`: ``01-build.2``... when the name is taken by files no
    row here names, a database's before it), the same one for every file of that step folder
    (``placed`` keeps them, per import); a file right below ``session-N/`` takes the first of its
    name, ``<name>.2``... that is free. Each folder is written down in ``journal`` before it is
    made. Raises :class:`OSError` when a folder cannot be made."""
    journal.will_make_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first, *rest = Path(tail).parts
    if first not in placed:
        if rest:
            placed[first] = make_own_folder(folder / first, before=journal.will_make_folder)
        else:
            free = next((folder / name for name in
                         (first, *(f"{first}.{n}" for n in range(2, 1000)))
                         if not os.path.lexists(folder / name)), None)
            if free is None:
                raise FileExistsError(errno.EEXIST, "999 files of that name are already there",
                                      str(folder / first))
            placed[first] = free
    return placed[first].joinpath(*rest)


def _place_artifact(row: dict, other: Path, source_number: int, origin_number: int,
                    folder: Path, journal: _CopyJournal,
                    placed: dict[str, Path]) -> tuple[Path | None, str]:
    """Copy an artifact's file under ``folder`` and point ``row`` at the copy; or mark the row
    missing. Returns ``(new path, "")``, or ``(None, reason)`` when its copy would land outside
    ``folder``, the file was not found or lies outside the source database's artifacts folder, its
    sha256 differs, or copying failed (a partial copy is removed). The file is looked for under
    the source's own folder of the session (``session-<source_number>``). It is copied only into
    a folder this import made (:func:`_own_target`, with ``placed``), never over a file already
    there. Each folder and file it makes is written down in ``journal`` first."""
    recorded = row["path"]
    row["origin_path"] = row.get("origin_path") or recorded
    row["missing"] = 1
    copying = None
    try:
        markers = list(dict.fromkeys([f"session-{source_number}", f"session-{origin_number}"]))
        tail = _artifact_tail(recorded, markers)
        named, reason = _copy_target(folder, tail)
        if named is None:
            return None, reason
        found, reason = _artifact_source(recorded, other, markers[0], tail)
        if found is None:
            return None, reason
        if row.get("sha256") and _sha256(found) != row["sha256"]:
            return None, "file differs from its recorded sha256"
        target = _own_target(folder, tail, journal, placed)
        journal.will_make_folders(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.resolve().is_relative_to(folder.resolve()):  # a symlink made meanwhile
            return None, f"its path below session-N/ ({tail!r}) leads out of this database's artifacts folder"
        if target.exists() and found.resolve() == target.resolve():
            return None, "the file is its own copy target"
        journal.will_write(target)
        copying = target
        shutil.copyfile(found, target)  # to that name exactly, never into a folder of that name
        shutil.copystat(found, target)
    except (OSError, ValueError) as exc:  # unreadable, full disk, odd path text
        if copying is not None and not copying.is_dir():
            copying.unlink(missing_ok=True)  # a partial copy (full disk) that no row names
        return None, f"cannot copy: {exc}"
    row["path"] = str(target)
    row["missing"] = 0
    return target, ""


def format_merge(result: MergeResult) -> str:
    """The merge result as a few lines of text for the terminal."""
    from .views import printable

    lines = [f"Merged {result.source}: {len(result.imported)} imported, "
             f"{len(result.unchanged)} already here, {len(result.conflicts)} in conflict"
             + (f", {len(result.skipped_open)} still open there (not imported)" if result.skipped_open else "")]
    for s in result.imported:
        lines.append(f"  imported  {s['id']}  {s['host'] or '-'} #{s['number']} -> #{s['local_number']}  {s['name']}")
    for s in result.conflicts:
        why = s.get("reason") or f"differs from session #{s['local_number']} here; neither was changed"
        lines.append(f"  CONFLICT  {s['id']}  {s['host'] or '-'} #{s['number']}  {s['name']}: {why}")
        shown = s.get("differences") or []
        for d in shown[:SHOWN_DIFFERENCES]:
            lines.append(f"    {printable(d['field'])}: here {d['here']}, there {d['there']}")
        more = s.get("differences_total", len(shown)) - min(len(shown), SHOWN_DIFFERENCES)
        if more > 0:
            lines.append(f"    ... and {more} more difference{'s' if more > 1 else ''} (--json lists "
                         f"up to {MAX_DIFFERENCES})")
    for s in result.skipped_open:
        lines.append(f"  open      {s['id']}  {s['host'] or '-'} #{s['number']}  {s['name']}: merge again once it has ended")
    if result.imported:
        lines.append(f"  artifacts: {result.artifacts_copied} copied, {result.artifacts_missing} "
                     "recorded as missing")
        for m in result.missing_artifacts:
            lines.append(f"    missing  {m['path']}: {m['reason']}")
    if result.left_out:
        lines.append(f"  left out (not known to this version): {', '.join(result.left_out)}")
    return "\n".join(lines)
