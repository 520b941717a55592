"""The one place that finds, opens and migrates the database.

Location, in order: an explicit path (``--db``), ``$SESSIONKIT_DB``, then ``.sessionkit/sessions.db``
found by searching upward from the working directory, the way git finds ``.git``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import DatabaseError, NoDatabaseError

DB_DIRNAME = ".sessionkit"
DB_FILENAME = "sessions.db"
BUSY_TIMEOUT_MS = 30_000
SQLITE_MAX_INT = 2**63 - 1  # the largest INTEGER SQLite stores

# Ordered (name, "module:function"). Append only; never reorder, rename or edit a shipped entry.
MIGRATIONS: list[tuple[str, str]] = [
    ("m001_core", "sessionkit.schema:m001_core"),
    ("m003_correctness", "sessionkit.kernels.correctness:m003_correctness"),
    ("m004_bench", "sessionkit.bench.schema:m004_bench"),
    ("m005_bench_passes", "sessionkit.bench.schema:m005_bench_passes"),
    ("m006_provenance", "sessionkit.schema:m006_provenance"),
    ("m007_step_rollups", "sessionkit.schema:m007_step_rollups"),
]


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


def _pending(conn) -> bool:
    """True when some migration has not been applied (checked without importing any of them)."""
    try:
        done = {row[0] for row in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'sessionkit'")}
    except sqlite3.OperationalError:  # no migrations table yet: a new database
        return True
    return any(name not in done for name, _ in MIGRATIONS)


def _migration_set():
    import importlib

    from sqlite_utils.migrations import Migrations

    migrations = Migrations("sessionkit")
    for name, target in MIGRATIONS:
        module, func = target.split(":")
        fn = getattr(importlib.import_module(module), func)
        migrations(name=name)(fn)
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


def open_db(explicit=None, *, create: bool = False, start: Path | None = None):
    """Open (and create, with ``create``) the database, migrate it, and return it.

    WAL mode, a busy timeout and foreign keys are set on every connection.
    """
    sqlite_utils = _import_sqlite_utils()

    path = resolve_db_path(explicit, create=create, start=start)
    if "\x00" in str(path):
        raise DatabaseError(f"bad database path {str(path)!r}: it contains a NUL character")
    if path.exists() and path.is_dir():
        raise DatabaseError(f"database path {path} is a folder, not a file")
    if not path.exists():
        if not create:
            raise NoDatabaseError(f"no database at {path}; run 'sessionkit start' to create one")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create {path.parent}: {exc.strerror}") from None
    elif not os.access(path, os.R_OK):
        raise DatabaseError(f"cannot read database {path}: permission denied")
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode")  # read-only DBs stay in their mode
        conn.execute("PRAGMA synchronous = NORMAL")
        # sqlite-utils plugins are for its own CLI; loading them costs start-up time here.
        db = sqlite_utils.Database(conn, execute_plugins=False)
        if _pending(conn):
            _migration_set().apply(db)
        # Fail now, with a clear message, if the file cannot be written (read-only file or folder).
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text or "file is encrypted" in text:
            raise DatabaseError(f"{path} is not a SQLite database") from None
        if "readonly" in text or "read-only" in text:
            raise DatabaseError(f"database {path} is read-only; pass a writable --db PATH") from None
        if "unable to open" in text:
            raise DatabaseError(f"cannot open database {path}: check the folder exists and is writable") from None
        raise DatabaseError(f"database {path}: {text}") from None
    db.path = path
    return db


def applied_migrations(db) -> list[str]:
    return [m.name for m in _migration_set().applied(db)]
