"""The one place that finds, opens and migrates the database.

Location, in order: an explicit path (``--db``), ``$SESSIONKIT_DB``, then ``.sessionkit/sessions.db``
found by searching upward from the working directory, the way git finds ``.git``.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DatabaseError, NewerDatabaseError, NoDatabaseError
from .schema import MIGRATIONS  # every migration, in order (append only: see sessionkit.schema)

DB_DIRNAME = ".sessionkit"
DB_FILENAME = "sessions.db"
BUSY_TIMEOUT_MS = 30_000
SQLITE_MAX_INT = 2**63 - 1  # the largest INTEGER SQLite stores


# File systems whose locking or shared memory cannot carry SQLite's WAL (it needs one host).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "lustre", "gpfs", "beegfs", "glusterfs",
    "fuse.glusterfs", "ceph", "fuse.ceph", "cephfs", "fuse.sshfs", "9p", "afs", "ocfs2", "gfs2",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "panfs", "fuse.lizardfs", "pvfs2", "orangefs",
    "fuse.rclone", "davfs", "fuse.davfs2", "virtiofs", "quobyte", "fuse.weka", "wekafs",
})
PROC_MOUNTS = "/proc/mounts"


def find_db(explicit: str | os.PathLike | None = None, *, start: Path | None = None) -> Path | None:
    """The database path to use, or None when nothing names one and none exists upward."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SESSIONKIT_DB")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DB_DIRNAME / DB_FILENAME
        if candidate.is_file():
            return candidate
    return None


def artifacts_root(db_path: str | os.PathLike) -> Path:
    """The folder that holds the step files (logs, CSVs, reports) of the database at ``db_path``.

    ``artifacts/`` beside a database named ``sessions.db`` (the default name, so existing layouts keep
    their files) and ``artifacts-<file stem>/`` beside any other (``hostA.db`` -> ``artifacts-hostA/``),
    so that databases sharing a folder never write into each other's step folders.
    """
    path = Path(db_path).resolve()
    if path.name == DB_FILENAME:
        return path.parent / "artifacts"
    return path.parent / f"artifacts-{path.stem or path.name}"


def not_a_folder_of_its_own(path: Path) -> str | None:
    """What stands at ``path``, in words, when something does that is no folder of its own: ``"a
    symbolic link (to TARGET)"`` (wherever it points: files put through it land there), ``"a
    file"`` or ``"not a folder"`` (a FIFO, a device); None when nothing is there or a folder is.
    A session's ``artifacts/session-N`` must be nothing or a folder (steps and merge refuse the
    rest)."""
    if path.is_symlink():
        return f"a symbolic link (to {os.readlink(path)})"
    if os.path.lexists(path) and not path.is_dir():
        return "a file" if path.is_file() else "not a folder"
    return None


def make_own_folder(base: str | os.PathLike, *, before=None) -> Path:
    """Create a folder that nobody else has written into and return it: ``base``, or
    ``<base>.2``, ``<base>.3``, ... when a file, folder or link of that name is already there
    (made with ``mkdir``, which fails when the name exists, so that two processes never get the
    same one). ``base``'s parent must exist. ``before(path)``, when given, is called with each
    name just before it is tried (a merge writes it down in its journal).

    A step folder already there belongs to no step of this database (see
    :func:`sessionkit.runner.make_step_folder`): its files are somebody else's, and writing into it
    would overwrite them.

    Raises:
        OSError: the folder cannot be created (permissions, full disk, 999 names taken...).
    """
    base = Path(base)
    for attempt in range(1, 1000):
        folder = base if attempt == 1 else base.with_name(f"{base.name}.{attempt}")
        if os.path.lexists(folder):
            continue
        if before is not None:
            before(folder)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "999 folders of that name are already there", str(base))


def reports_root(db_path: str | os.PathLike) -> Path:
    """The folder ``sessionkit run`` writes its reports to, for the database at ``db_path``:
    ``reports/`` beside ``sessions.db``, ``reports-<file stem>/`` beside any other name (as
    :func:`artifacts_root`), so that two databases in one folder keep their own reports."""
    path = Path(db_path).resolve()
    if path.name == DB_FILENAME:
        return path.parent / "reports"
    return path.parent / f"reports-{path.stem or path.name}"


def resolve_db_path(explicit=None, *, create: bool = False, start: Path | None = None) -> Path:
    """Like :func:`find_db`, but with ``create`` falls back to ``./.sessionkit/sessions.db``."""
    path = find_db(explicit, start=start)
    if path is None:
        if not create:
            raise NoDatabaseError(
                "no sessionkit database here or in any parent folder; "
                "run 'sessionkit start' to create one, or pass --db PATH"
            )
        path = (start or Path.cwd()) / DB_DIRNAME / DB_FILENAME
    return path


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def database_file_exists(path: str | os.PathLike) -> bool:
    """Whether a database file is at ``path`` (a regular file, or a symbolic link to one); False
    when nothing is there, a dangling link included.

    Raises :class:`~sessionkit.errors.DatabaseError` (one line) when ``path`` is something SQLite
    cannot keep a database in: a folder, a FIFO, a device (``/dev/null``) or a socket. Checked
    before SQLite opens it, which would otherwise fail with a misleading "disk I/O error".
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file on the way
        return False
    except OSError as exc:
        raise DatabaseError(f"cannot use database path {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return True
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    raise DatabaseError(f"database path {path} is not a regular file (it is {kind}); "
                        "give the path of a database file")


def empty_file_message(path: str | os.PathLike) -> str:
    """The words for a database path that holds an empty file: no sessionkit data (the reading
    commands and ``merge`` say it alike)."""
    return f"no sessionkit data at {path} (the file is empty)"


def _applied_names(conn) -> set[str] | None:
    """The names of the migrations applied to this database; None for a new, empty database."""
    try:
        return {row[0] for row in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'sessionkit'")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # no migrations table yet: a new database
            return None
        raise


def _refuse_foreign(conn, path) -> None:
    """Raise :class:`DatabaseError` when ``path`` is a SQLite database of something else: tables
    and no sessionkit migration. Checked before anything is written (the journal mode included),
    so that a command given the wrong file never changes it.

    Both reads see one snapshot (one read transaction): read apart, another process's first
    migration committing between them made a new database look like another program's."""
    if conn.in_transaction:
        raise ValueError("_refuse_foreign needs a connection outside any transaction")
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts here
        if _applied_names(conn):
            return
        others = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite^_%' ESCAPE '^' AND name != '_sqlite_migrations' "
            "ORDER BY name LIMIT 4")]
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise DatabaseError(f"{path} is not a sessionkit database (it holds other tables: "
                            f"{shown}); give another path")


def _pending(conn, path) -> bool:
    """True when some migration has not been applied.

    Raises :class:`NewerDatabaseError` when the database holds migrations this release does not know.
    """
    done = _applied_names(conn)
    if done is None:
        return True
    known = {fn.__name__ for fn in MIGRATIONS}
    unknown = sorted(done - known)
    if unknown:
        try:
            from importlib.metadata import version
            mine = version("sessionkit")
        except Exception:  # noqa: BLE001 - a source checkout without metadata
            mine = "unknown"
        raise NewerDatabaseError(
            f"this database was written by a newer sessionkit ({path} has migration "
            f"{unknown[-1]!r}, which sessionkit {mine} does not know); upgrade sessionkit to use it")
    return any(fn.__name__ not in done for fn in MIGRATIONS)


def filesystem_type(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (``ext4``, ``nfs4``...), from ``/proc/mounts``.

    ``mounts`` is the text of a mounts table in the same format (tests); None where none is readable.
    """
    if mounts is None:
        try:
            with open(PROC_MOUNTS, encoding="utf-8", errors="replace") as fh:
                mounts = fh.read()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, best_type = -1, None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        # Spaces and other characters in mount points are written as octal escapes (\040).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, best_type = len(point), parts[2]
    return best_type


def is_network_filesystem(fstype: str | None) -> bool:
    if not fstype:
        return False
    return fstype.lower() in NETWORK_FILESYSTEMS or fstype.lower().startswith(("nfs", "cifs", "smb"))


def _with_busy_retry(fn, deadline: float):
    """Run ``fn`` again while SQLite says "locked" or "busy" without calling its busy handler (as
    a journal-mode switch does), until ``deadline`` (``time.monotonic()``)."""
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# How long a finishing step waits for another writer (a merge copying large artifacts, say) to
# let go of the database, beyond the busy timeout of each statement, before it gives up.
RECORD_PATIENCE_S = 3600.0


def is_locked_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


def patiently(db, write, *, what: str, patience_s: float | None = None, notice=None):
    """Run ``write()`` (a write that may be repeated: it must not half-apply) until it gets past
    another writer's lock, for up to ``patience_s`` (default :data:`RECORD_PATIENCE_S`), so that
    what a finished step recorded is not lost because a long transaction elsewhere (a merge)
    outlasted the busy timeout. Before each try it waits for the write lock itself (BEGIN
    IMMEDIATE, released at once). ``notice(text)`` is called once when it has to wait."""
    deadline = time.monotonic() + (RECORD_PATIENCE_S if patience_s is None else patience_s)
    told = False
    while True:
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            db.conn.execute("ROLLBACK")
            return write()
        except sqlite3.OperationalError as exc:
            if not is_locked_error(exc) or time.monotonic() >= deadline:
                raise
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            if not told and notice is not None:
                notice(f"the database is locked by another writer; waiting to record {what}")
                told = True
            time.sleep(0.2)


def _migrate(conn, db, path) -> None:
    """Apply pending migrations in one write transaction, checked again once the lock is held, so
    that processes opening one database at once never apply a migration twice."""
    if not _pending(conn, path):
        return
    conn.execute("BEGIN IMMEDIATE")  # waits on the busy handler for other writers
    try:
        if _pending(conn, path):
            _migration_set().apply(db)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migration_set():
    from sqlite_utils.migrations import Migrations

    migrations = Migrations("sessionkit")
    for fn in MIGRATIONS:
        migrations(name=fn.__name__)(fn)
    return migrations


def _import_sqlite_utils():
    """Import sqlite_utils without letting it pull in numpy (~60 ms of CLI start-up).

    sqlite_utils only uses numpy to accept numpy scalars in inserts; sessionkit converts values to
    plain Python first. When numpy is already loaded (torch is), nothing changes.
    """
    import sys

    if "sqlite_utils" in sys.modules or "numpy" in sys.modules:
        import sqlite_utils
        return sqlite_utils
    sys.modules["numpy"] = None  # makes "import numpy" raise ImportError inside sqlite_utils
    try:
        import sqlite_utils
    finally:
        del sys.modules["numpy"]
    return sqlite_utils


def open_db(explicit=None, *, create: bool = False, start: Path | None = None,
            read_only: bool = False):
    """Open (and create, with ``create``) the database, migrate it, and return it.

    A busy timeout and foreign keys are set on every connection. A new database is switched to WAL,
    except on a network file system (NFS, CIFS, Lustre...), where WAL's shared memory does not work
    across hosts: there the journal mode the user chose is kept, and ``db.notices`` says so once, when
    the database is made. With ``read_only`` a database that cannot be written (a read-only file, an
    archive) is opened for reading, without migrating; ``db.read_only`` tells which it got.

    Raises :class:`~sessionkit.errors.NoDatabaseError` when no file, or an empty one, is at the
    path and ``create`` is not set (an empty file is left empty: only ``create`` makes it a
    database), :class:`~sessionkit.errors.DatabaseError` (one line) for anything unusable (a path
    that is not a regular file among them: see :func:`database_file_exists`), and
    :class:`~sessionkit.errors.NewerDatabaseError` for a database written by a newer release.
    """
    sqlite_utils = _import_sqlite_utils()

    path = resolve_db_path(explicit, create=create, start=start)
    if "\x00" in str(path):
        raise DatabaseError(f"bad database path {str(path)!r}: it contains a NUL character")
    from .atomic import protect

    protect(path)  # no report or export of this process may be written over it
    exists = database_file_exists(path)
    is_new = not exists or path.stat().st_size == 0
    if not exists:
        if not create:
            raise NoDatabaseError(f"no database at {path}; run 'sessionkit start' to create one")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create {path.parent}: {exc.strerror}") from None
    elif is_new and not create:
        # An empty file holds no sessions, as a missing one: only a command that creates the
        # database (start, run, merge) may turn it into one.
        raise NoDatabaseError(f"{empty_file_message(path)}; "
                              "run 'sessionkit start' to create a database there")
    elif not os.access(path, os.R_OK):
        raise DatabaseError(f"cannot read database {path}: permission denied")
    if read_only and not is_new and not (os.access(path, os.W_OK)
                                         and os.access(path.parent, os.W_OK | os.X_OK)):
        return _open_read_only(sqlite_utils, path)
    notices: list[str] = []
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not is_new:
            _refuse_foreign(conn, path)
        fstype = filesystem_type(path)
        mode = _with_busy_retry(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0], deadline)
        if is_network_filesystem(fstype):
            if is_new:
                notices.append(
                    f"Notice: {path} is on a network file system ({fstype}); SQLite's WAL needs "
                    f"shared memory on one host, so the journal mode stays {mode}")
        elif mode.lower() != "wal":
            # Switching needs the only lock on the file and SQLite does not wait for it: retry.
            _with_busy_retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), deadline)
        conn.execute("PRAGMA synchronous = NORMAL")
        # sqlite-utils plugins are for its own CLI; loading them costs start-up time here.
        db = sqlite_utils.Database(conn, execute_plugins=False)
        _migrate(conn, db, path)
        # Fail now, with a clear message, if the file cannot be written (read-only file or folder).
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if read_only and not is_new and ("readonly" in text or "read-only" in text
                                         or _no_space(exc, text)):
            # Reading needs no space: a full disk (SQLITE_FULL, or the I/O error of a -wal or -shm
            # file that cannot grow) still allows the read-only open.
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it may never have opened
                pass
            return _open_read_only(sqlite_utils, path)
        _raise_for(path, text)
    db.path = path
    db.read_only = False
    db.notices = notices
    return db


def _no_space(exc: sqlite3.DatabaseError, text: str) -> bool:
    """Whether SQLite failed for want of space: SQLITE_FULL, or a disk I/O error (how a -wal or
    -shm file that cannot be extended on a full disk shows)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (13, 10):  # SQLITE_FULL, SQLITE_IOERR
        return True
    return "disk is full" in text or "disk I/O" in text


def _raise_for(path: Path, text: str):
    if "not a database" in text or "file is encrypted" in text:
        raise DatabaseError(f"{path} is not a SQLite database") from None
    if "readonly" in text or "read-only" in text:
        raise DatabaseError(f"database {path} is read-only; pass a writable --db PATH") from None
    if "unable to open" in text:
        raise DatabaseError(f"cannot open database {path}: check the folder exists and is writable") from None
    if "disk is full" in text or "disk I/O" in text:
        raise DatabaseError(f"database {path}: no space left on device ({text})") from None
    raise DatabaseError(f"database {path}: {text}") from None


def _open_read_only(sqlite_utils, path: Path):
    """A connection that only reads: for archived databases and read-only files or folders.

    A WAL database in a folder that cannot be written has no ``-shm`` file to share; then it is
    opened as immutable (nothing else may be writing it, which holds for an archive), unless a
    ``-wal`` beside it holds frames, which immutable would ignore (a copy taken with its ``-wal``
    but not its ``-shm``): then a private copy of the two, in a temporary folder removed with the
    connection, is read instead.
    """
    from urllib.parse import quote

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    last = ""
    private = None
    try:
        for extra in ("", "&immutable=1"):
            if extra and _wal_has_frames(path):
                private = _private_copy_dir(path)
                uri, extra = f"file:{quote(str(private / path.resolve().name))}?mode=ro", ""
            try:
                conn = sqlite3.connect(uri + extra, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                _refuse_foreign(conn, path)
                if _pending(conn, path):
                    conn.close()
                    raise DatabaseError(f"database {path} is read-only and made by an older "
                                        "sessionkit; copy it to a writable place to migrate it")
                conn.execute("SELECT COUNT(*) FROM sessions").fetchone()
                break
            except sqlite3.DatabaseError as exc:
                last = str(exc)
        else:
            _raise_for(path, last)
    except BaseException:
        if private is not None:
            import shutil

            shutil.rmtree(private, ignore_errors=True)
        raise
    db = sqlite_utils.Database(conn, execute_plugins=False)
    if private is not None:
        import shutil
        import weakref

        weakref.finalize(db, shutil.rmtree, private, ignore_errors=True)  # at exit at the latest
    db.path = path
    db.read_only = True
    db.notices = []
    return db


def applied_migrations(db) -> list[str]:
    return [m.name for m in _migration_set().applied(db)]


WAL_COMPANIONS = ("-wal", "-shm")


@contextmanager
def read_as_found(path: str | os.PathLike, *, retries: int = 3) -> Iterator[Path]:
    """Give the path through which to read the database at ``path`` (an SQLite file of any
    origin: another host's, an archive) so that its folder holds afterwards exactly the files it
    held before.

    A reader of a WAL database makes its ``-wal`` and ``-shm`` files when they are missing, and a
    read-only connection never removes them. So:

    - neither is there (a database closed cleanly, the usual copy from another host): ``path``
      itself; on leaving, a read-write connection that reads nothing is opened and closed, which
      makes SQLite remove the two files the way it does when its last connection closes (with
      nothing in the WAL, the database file is not written). Should another process have the
      database open by then, SQLite leaves them to it;
    - both are there (the database is in use, or its writer died): ``path``, whose files are
      used as they are;
    - only one is there (a copy of the database with its ``-wal`` but not its ``-shm``, say):
      removing what a reader adds would take a checkpoint, which writes the database; a private
      copy of the database and its ``-wal`` in a temporary folder is read instead (taken again,
      up to ``retries`` times, should the files change while they are copied).

    Raises :class:`~sessionkit.errors.DatabaseError` when no stable copy could be taken.
    """
    path = Path(os.path.realpath(path))  # SQLite names the two files after the real file
    companions = [Path(f"{path}{suffix}") for suffix in WAL_COMPANIONS]
    found = [c.exists() for c in companions]
    if all(found):
        yield path
        return
    if not any(found):
        try:
            yield path
        finally:
            if any(c.exists() for c in companions):
                _close_as_last_reader(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sessionkit-read-") as tmp:
        yield _copy_to_read(path, Path(tmp), retries=retries)


def _copy_to_read(path: Path, folder: Path, *, retries: int = 3) -> Path:
    """Copy the database at ``path`` (a real path) and its ``-wal``, if any, into ``folder``, taken
    again (up to ``retries`` times) should they change while they are copied; return the copy's
    path. Raises :class:`~sessionkit.errors.DatabaseError` when no stable copy could be taken."""
    import shutil

    companions = [Path(f"{path}{suffix}") for suffix in WAL_COMPANIONS]

    def state():
        found = []
        for p in (path, *companions):
            try:
                st = os.stat(p)
                found.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                found.append(None)
        return found

    copy = folder / path.name
    for _ in range(retries):
        before = state()
        shutil.copyfile(path, copy)
        if companions[0].exists():
            shutil.copyfile(companions[0], f"{copy}-wal")
        if state() == before:
            return copy
    raise DatabaseError(f"{path} kept changing while it was copied to be read; "
                        "try again once nothing writes it")


def _wal_has_frames(path: Path) -> bool:
    """Whether a ``-wal`` file beside ``path`` holds more than its header (frames that a reader
    must see)."""
    try:
        return os.stat(f"{os.path.realpath(path)}-wal").st_size > 32  # the WAL header is 32 bytes
    except OSError:
        return False


def _private_copy_dir(path: Path) -> Path:
    """A new temporary folder holding a copy of the database at ``path`` and its ``-wal``
    (:func:`_copy_to_read`), to be read where the database's own folder cannot hold a ``-shm``.
    The caller removes it."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sessionkit-read-"))
    try:
        _copy_to_read(Path(os.path.realpath(path)), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _close_as_last_reader(path: Path) -> None:
    """Open ``path`` read-write, read its schema and close it: as the last connection, SQLite then
    removes the ``-wal`` and ``-shm`` files (a WAL with no frames writes nothing to the database).
    Does nothing where it cannot (a read-only file, another process holding the database)."""
    try:
        conn = sqlite3.connect(str(path), timeout=1.0, isolation_level=None)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        pass
