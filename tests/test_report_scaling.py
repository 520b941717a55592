"""A session's report and ``compare`` read the sessions they name, not every session: the SQLite
work they do stays the same as the database grows (it took 5.7 s at 100,000 sessions, most of it in
queries that read every bench step; ``benchmarks/history_speed.py`` measures the time)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from history_speed import generate  # noqa: E402 - the benchmark's own database generator

from sessionkit.bench.compare import compare_sessions  # noqa: E402
from sessionkit.db import open_db  # noqa: E402
from sessionkit.report import session_report  # noqa: E402


def _vm_steps(path: Path, fn) -> int:
    """SQLite virtual machine instructions that ``fn(db)`` runs on a fresh connection, in tens
    (SQLite calls the progress handler every ten instructions of a statement), so that machine speed
    does not enter."""
    db = open_db(path)
    ticks = [0]

    def tick():
        ticks[0] += 1
        return 0

    db.conn.set_progress_handler(tick, 10)
    try:
        fn(db)
    finally:
        db.conn.set_progress_handler(None, 10)
        db.conn.close()
    return ticks[0]


@pytest.mark.slow
def test_report_and_compare_work_does_not_grow_with_sessions(tmp_path):
    work = {}
    for sessions in (200, 1000):
        path = tmp_path / f"{sessions}.db"
        generate(path, sessions, 4, 1)  # preflight, build, correctness, bench: each session benched
        work[sessions] = (
            _vm_steps(path, lambda db: session_report(db, "last", plots=False)),
            _vm_steps(path, lambda db: compare_sessions(db)),
            _vm_steps(path, lambda db: compare_sessions(db, str(sessions - 1), str(sessions))),
        )
    small, large = work[200], work[1000]
    for what, a, b in zip(("report", "compare", "compare A B"), small, large):
        assert b <= a * 1.2, f"{what}: {a}0 SQLite instructions at 200 sessions, {b}0 at 1,000"
