"""``sessionkit merge`` against damaged sources: they are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.merge import merge_database
try:
    from sessionkit.merge import _copy_target
except ImportError:
    _copy_target = None
from test_merge import host_b


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
    assert open_db(target).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
