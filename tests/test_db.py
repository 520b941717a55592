"""The store: exact schema from blank (every table, view, index and trigger), connection settings, location rules and DB errors."""

from __future__ import annotations

import os
import sqlite3

import pytest

from sessionkit.db import applied_migrations, find_db, open_db, resolve_db_path
from sessionkit.errors import DatabaseError, NoDatabaseError
from sessionkit.schema import migration_names

# Every table a new database has, with its columns in order.
SCHEMA_COLUMNS = {
    "sessions": ["id", "number", "name", "objective", "status", "outcome", "started_at", "ended_at",
                 "budget_s", "gpu_rate_usd_per_h", "ai_rate_usd_per_h", "plan", "step_budgets", "host",
                 "cwd", "git_commit", "origin_number", "imported_from", "imported_at"],
    "steps": ["id", "session_id", "seq", "name", "kind", "command", "options", "status", "started_at",
              "ended_at", "duration_s", "budget_s", "exit_code", "message", "summary", "output_tail",
              "host", "pid", "pid_started", "heartbeat_at", "pid_ns"],
    "metrics": ["id", "step_id", "key", "value", "unit", "subject"],
    "artifacts": ["id", "step_id", "path", "kind", "sha256", "size_bytes", "created_at", "missing",
                  "origin_path"],
    "env_snapshots": ["id", "session_id", "step_id", "taken_at", "host", "python_version",
                      "torch_version", "torch_cuda", "nvcc_version", "driver_version", "gpu_name",
                      "gpu_cc", "git_commit", "data"],
    "telemetry_samples": ["id", "step_id", "gpu_index", "t_unix_s", "power_w", "energy_mj",
                          "sm_clock_mhz", "mem_clock_mhz", "temp_c", "gpu_util_pct", "mem_used_mib",
                          "throttle_reasons", "throttled"],
    "patterns_applied": ["id", "session_id", "pattern_id", "note", "applied_at"],
    "correctness_results": ["id", "step_id", "idx", "dtype", "batch_size", "num_heads", "seq_len_q",
                            "seq_len_k", "head_dim", "causal", "layout", "seed", "max_err", "bound",
                            "lse_err", "passed", "worst_index", "worst_out", "worst_ref", "failure",
                            "sdpa_err", "scale", "lse_worst_index", "num_heads_k", "causal_alignment"],
    "bench_results": ["id", "step_id", "impl", "dtype", "batch_size", "num_heads", "seq_len_q",
                      "seq_len_k", "head_dim", "causal", "latency_ms", "iqr_ms", "samples", "tflops",
                      "pct_peak", "memory_mb", "throttled_samples", "speedup_vs_sdpa", "speedup_vs_best",
                      "status", "note", "launches_per_sample", "max_abs_err", "stop_reason", "passes",
                      "pass_spread_pct", "sm_clock_mhz", "num_heads_k", "causal_alignment"],
    "bench_samples": ["id", "result_id", "idx", "latency_ms", "throttled", "pass", "sm_clock_mhz",
                      "clock_reasons"],
    "_step_rollups": ["step_id", "session_id", "seq", "name", "status", "bench_configs", "bench_best",
                      "bench_geomean", "correctness_configs", "correctness_passed",
                      "correctness_worst_ratio"],
    "_session_rollups": ["session_id", "steps", "passed", "failed", "interrupted", "bench_step_id",
                         "bench_configs", "bench_best", "bench_geomean", "correctness_status",
                         "correctness_configs", "correctness_passed", "correctness_worst_ratio"],
    "_step_rollups_dirty": ["step_id"],
    "_step_rollups_mark": ["id", "steps_rowid"],
    "_sqlite_migrations": ["id", "migration_set", "name", "applied_at"],  # sqlite-utils' own
    "sqlite_stat1": ["tbl", "idx", "stat"],  # SQLite's own: the planner statistics of m011
}
SCHEMA_VIEWS = {"step_overview", "metric_overview"}
SCHEMA_INDEXES = {
    "idx__sqlite_migrations_migration_set_name", "idx_artifacts_step", "idx_bench_results_ours",
    "idx_bench_results_step", "idx_bench_samples_result", "idx_correctness_bounds",
    "idx_correctness_step", "idx_env_session", "idx_metrics_step", "idx_patterns_session",
    "idx_sessions_host", "idx_sessions_number", "idx_sessions_open", "idx_step_rollups_session", "idx_steps_name_status",
    "idx_steps_session", "idx_steps_session_status", "idx_steps_status", "idx_telemetry_step",
}
SCHEMA_TRIGGERS = {f"{table}_rollup_{event}" for table in ("bench_results", "correctness_results")
                   for event in ("insert", "update", "delete")} | {"steps_rollup_update",
                                                                   "steps_rollup_delete"}


def test_migrate_from_blank_gives_exact_schema(tmp_path):
    db = open_db(tmp_path / "new.db", create=True)
    assert set(db.table_names()) == set(SCHEMA_COLUMNS)
    for table, columns in SCHEMA_COLUMNS.items():
        assert [c.name for c in db[table].columns] == columns, table
    assert set(db.view_names()) == SCHEMA_VIEWS

    def names(kind):
        return {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'", [kind])}

    assert names("index") == SCHEMA_INDEXES
    assert names("trigger") == SCHEMA_TRIGGERS
    assert applied_migrations(db) == migration_names()
    # foreign keys are declared, so Datasette can link rows
    assert {fk.other_table for fk in db["steps"].foreign_keys} == {"sessions"}
    assert {fk.other_table for fk in db["metrics"].foreign_keys} == {"steps"}
    assert {fk.other_table for fk in db["bench_samples"].foreign_keys} == {"bench_results"}
    assert {fk.other_table for fk in db["correctness_results"].foreign_keys} == {"steps"}


def test_migrations_are_named_ordered_and_unique():
    names = migration_names()
    assert names[0] == "m001_core"
    assert len(names) == len(set(names))
    numbers = [int(name[1:4]) for name in names]
    assert numbers == sorted(set(numbers))  # applied in the order of their numbers
    assert 2 not in numbers  # m002 never existed; the gap is documented in sessionkit.schema


def test_every_migration_function_is_registered():
    """A migration written without ``@migration`` would never be applied."""
    import inspect
    import re

    from sessionkit import schema

    defined = [name for name, fn in inspect.getmembers(schema, inspect.isfunction)
               if re.fullmatch(r"m\d{3}_\w+", name) and fn.__module__ == schema.__name__]
    assert sorted(defined) == sorted(migration_names())
    assert schema.MIGRATIONS == [getattr(schema, name) for name in migration_names()]


def test_connection_settings(tmp_path):
    db = open_db(tmp_path / "s.db", create=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    with pytest.raises(sqlite3.IntegrityError):
        db["metrics"].insert({"step_id": "no-such-step", "key": "k", "value": 1})


def test_reopen_is_idempotent(tmp_path):
    path = tmp_path / "s.db"
    open_db(path, create=True)["sessions"].insert(
        {"id": "a", "number": 1, "name": "n", "started_at": "2026-01-01T00:00:00+00:00"})
    again = open_db(path)
    assert again["sessions"].count == 1
    assert applied_migrations(again) == migration_names()


def test_location_explicit_then_env_then_upward(tmp_path, monkeypatch):
    monkeypatch.delenv("SESSIONKIT_DB")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_db(start=nested) is None
    found = tmp_path / ".sessionkit" / "sessions.db"
    found.parent.mkdir()
    open_db(found, create=True)
    assert find_db(start=nested) == found
    monkeypatch.setenv("SESSIONKIT_DB", str(tmp_path / "env.db"))
    assert find_db(start=nested) == tmp_path / "env.db"
    assert find_db("x.db", start=nested).name == "x.db"


def test_create_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SESSIONKIT_DB")
    with pytest.raises(NoDatabaseError, match="sessionkit start"):
        resolve_db_path(start=tmp_path)
    assert resolve_db_path(create=True, start=tmp_path) == tmp_path / ".sessionkit" / "sessions.db"


def test_not_sqlite(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("this is not a database, just some notes\n" * 50)
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        open_db(bad)


def test_missing_db(tmp_path):
    with pytest.raises(NoDatabaseError, match="no database at"):
        open_db(tmp_path / "missing.db")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DatabaseError, match="is a folder"):
        open_db(tmp_path)


def test_location_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="cannot create"):
        open_db(blocker / "sub" / "s.db", create=True)


def test_read_only_filesystem():
    # /proc accepts no new files, even for root
    with pytest.raises(DatabaseError, match="cannot open database|read-only"):
        open_db("/proc/sessionkit-test.db", create=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_db(tmp_path):
    path = tmp_path / "ro.db"
    open_db(path, create=True)
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DatabaseError):
            open_db(path)["sessions"].insert({"id": "x"})
    finally:
        tmp_path.chmod(0o755)


def test_the_schema_sql_is_what_the_migrations_have_always_made(tmp_path):
    """SQLite keeps each object's SQL text: every migration must go on producing it exactly, down to
    the types, constraints and spacing (tests/snapshots/schema.sql; a new migration adds to it)."""
    from fixtures_db import assert_snapshot

    db = open_db(tmp_path / "new.db", create=True)
    text = "".join(f"-- {kind} {name}\n{sql};\n\n" for kind, name, sql in db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"))
    assert_snapshot("schema.sql", text)


def test_planner_statistics_are_written_once_and_keep_what_analyze_found(tmp_path):
    from sessionkit.schema import PLANNER_STATISTICS

    path = tmp_path / "s.db"
    db = open_db(path, create=True)
    rows = {(t, i): s for t, i, s in db.execute("SELECT tbl, idx, stat FROM sqlite_stat1")}
    assert rows == PLANNER_STATISTICS
    db.conn.close()
    # a database from before m011 whose steps table had been analysed (ANALYZE) keeps those
    # figures when it is migrated; the other tables get the fixed ones
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm011_planner_statistics'")
    conn.execute("DROP INDEX idx_sessions_open")
    conn.execute("DELETE FROM sqlite_stat1")
    conn.execute("INSERT INTO sqlite_stat1 VALUES ('steps', 'idx_steps_session', '42 6 1')")
    conn.close()
    db = open_db(path)
    rows = {(t, i): s for t, i, s in db.execute("SELECT tbl, idx, stat FROM sqlite_stat1")}
    assert rows[("steps", "idx_steps_session")] == "42 6 1" and ("steps", None) not in rows
    assert rows[("sessions", "idx_sessions_number")] == "100000 1"
    assert applied_migrations(db)[-1] == "m011_planner_statistics"
