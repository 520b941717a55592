"""The database schema: every migration, in the order it is applied.

A migration is a function ``fn(db)`` taking a :class:`sqlite_utils.Database`; :func:`migration`
appends it to :data:`MIGRATIONS` and its function name is the name recorded in the database's
``_sqlite_migrations`` table (migration set ``sessionkit``). :mod:`sessionkit.db` applies the ones a
database lacks, in list order, under one write lock.

Append only: never edit, rename, reorder or remove a migration that has shipped, since databases
record the names they have applied; add a new ``mNNN_what`` function at the end of this file.

Numbering: there is no ``m002``. No migration of that name was ever registered (the correctness
table, the second one written, was numbered ``m003``). The gap stays: renumbering would rename
``m003``..``m010``, and a database that recorded the old names would then apply them a second time.

Units are in the column names (``_s``, ``_w``, ``_mhz``, ``_usd_per_h``...). Timestamps are ISO 8601
text in UTC. Ids are UUIDs so that databases from several GPU hosts can be merged.
"""

from __future__ import annotations

from typing import Callable

Migration = Callable[[object], None]

#: Every migration, in the order it is applied. Append only (see the module docstring).
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (a decorator); its ``__name__`` is its recorded name."""
    MIGRATIONS.append(fn)
    return fn


def migration_names() -> list[str]:
    """The names of every migration, in the order they are applied."""
    return [fn.__name__ for fn in MIGRATIONS]


@migration
def m001_core(db) -> None:
    db.execute(
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            number INTEGER NOT NULL,
            name TEXT NOT NULL,
            objective TEXT,
            status TEXT NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'passed', 'failed', 'abandoned')),
            outcome TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            budget_s REAL,
            gpu_rate_usd_per_h REAL,
            ai_rate_usd_per_h REAL,
            plan TEXT NOT NULL DEFAULT '[]',
            step_budgets TEXT NOT NULL DEFAULT '{}',
            host TEXT,
            cwd TEXT,
            git_commit TEXT
        )"""
    )
    db.execute("CREATE UNIQUE INDEX idx_sessions_number ON sessions(number)")
    db.execute(
        """
        CREATE TABLE steps (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'builtin' CHECK (kind IN ('builtin', 'command', 'hook')),
            command TEXT,
            options TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'passed', 'failed', 'interrupted', 'skipped')),
            started_at TEXT NOT NULL,
            ended_at TEXT,
            duration_s REAL,
            budget_s REAL,
            exit_code INTEGER,
            message TEXT,
            summary TEXT NOT NULL DEFAULT '{}',
            output_tail TEXT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_started REAL,
            heartbeat_at TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_steps_session ON steps(session_id, seq)")
    db.execute("CREATE INDEX idx_steps_name_status ON steps(name, status)")
    db.execute("CREATE INDEX idx_steps_status ON steps(status)")
    db.execute(
        """
        CREATE TABLE metrics (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            key TEXT NOT NULL,
            value REAL,
            unit TEXT,
            subject TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_metrics_step ON metrics(step_id, key)")
    db.execute(
        """
        CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            sha256 TEXT,
            size_bytes INTEGER,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX idx_artifacts_step ON artifacts(step_id)")
    db.execute(
        """
        CREATE TABLE env_snapshots (
            id INTEGER PRIMARY KEY,
            session_id TEXT REFERENCES sessions(id),
            step_id TEXT REFERENCES steps(id),
            taken_at TEXT NOT NULL,
            host TEXT,
            python_version TEXT,
            torch_version TEXT,
            torch_cuda TEXT,
            nvcc_version TEXT,
            driver_version TEXT,
            gpu_name TEXT,
            gpu_cc TEXT,
            git_commit TEXT,
            data TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX idx_env_session ON env_snapshots(session_id)")
    db.execute(
        """
        CREATE TABLE telemetry_samples (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            gpu_index INTEGER NOT NULL DEFAULT 0,
            t_unix_s REAL NOT NULL,
            power_w REAL,
            energy_mj REAL,
            sm_clock_mhz REAL,
            mem_clock_mhz REAL,
            temp_c REAL,
            gpu_util_pct REAL,
            mem_used_mib REAL,
            throttle_reasons INTEGER,
            throttled INTEGER
        )"""
    )
    db.execute("CREATE INDEX idx_telemetry_step ON telemetry_samples(step_id, t_unix_s)")
    db.execute(
        """
        CREATE TABLE patterns_applied (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            pattern_id TEXT NOT NULL,
            note TEXT,
            applied_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX idx_patterns_session ON patterns_applied(session_id)")
    db.execute(
        """
        CREATE VIEW step_overview AS
        SELECT s.number AS session_number, s.name AS session_name, st.seq, st.name AS step,
               st.status, st.started_at, st.duration_s, st.budget_s, st.exit_code, st.message,
               st.id AS step_id, s.id AS session_id
        FROM steps st JOIN sessions s ON s.id = st.session_id
        ORDER BY s.number, st.seq"""
    )
    db.execute(
        """
        CREATE VIEW metric_overview AS
        SELECT s.number AS session_number, st.name AS step, st.seq, m.key, m.subject, m.value,
               m.unit, st.status AS step_status, m.step_id
        FROM metrics m JOIN steps st ON st.id = m.step_id JOIN sessions s ON s.id = st.session_id"""
    )


def _config_result_table(table: str, key_column: str) -> str:
    """The start of a ``CREATE TABLE`` of per-step result rows, one per attention config: the row
    and step ids, ``key_column`` and the config's columns up to ``head_dim``; the caller adds the
    rest and the closing parenthesis.

    SQLite stores this text in ``sqlite_master``: m003 and m004 have produced it since they
    shipped, so it must stay exactly as it is (``tests/test_db.py`` compares the whole schema's SQL).
    """
    return f"""
        CREATE TABLE {table} (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            {key_column},
            dtype TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            num_heads INTEGER NOT NULL,
            seq_len_q INTEGER NOT NULL,
            seq_len_k INTEGER NOT NULL,
            head_dim INTEGER NOT NULL,
"""


@migration
def m003_correctness(db) -> None:
    """The correctness step: one row per checked config, with its error against the fp32 reference."""
    db.execute(
        _config_result_table("correctness_results", "idx INTEGER NOT NULL") +
        """            causal INTEGER NOT NULL CHECK (causal IN (0, 1)),
            layout TEXT NOT NULL CHECK (layout IN ('bhsd', 'bshd')),
            seed INTEGER NOT NULL,
            max_err REAL,
            bound REAL,
            lse_err REAL,
            passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
            worst_index TEXT,
            worst_out REAL,
            worst_ref REAL,
            failure TEXT,
            sdpa_err REAL,
            scale REAL,
            lse_worst_index TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_correctness_step ON correctness_results(step_id, idx)")


@migration
def m004_bench(db) -> None:
    """The bench step: one row per (implementation, config) and every raw timing sample."""
    db.execute(
        _config_result_table("bench_results", "impl TEXT NOT NULL") +
        """            causal INTEGER NOT NULL,
            latency_ms REAL,
            iqr_ms REAL,
            samples INTEGER,
            tflops REAL,
            pct_peak REAL,
            memory_mb REAL,
            throttled_samples INTEGER,
            speedup_vs_sdpa REAL,
            speedup_vs_best REAL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'wrong', 'unsupported', 'error')),
            note TEXT,
            launches_per_sample INTEGER,
            max_abs_err REAL,
            stop_reason TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_bench_results_step ON bench_results(step_id)")
    db.execute(
        """
        CREATE TABLE bench_samples (
            id INTEGER PRIMARY KEY,
            result_id INTEGER NOT NULL REFERENCES bench_results(id),
            idx INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            throttled INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX idx_bench_samples_result ON bench_samples(result_id)")


@migration
def m005_bench_passes(db) -> None:
    """Grids are measured in passes: each sample keeps its pass, the SM clock read after it and
    NVML's clock-event reasons around it; each result keeps its pass count, the spread of its
    per-pass medians and its median clock."""
    db.execute("ALTER TABLE bench_samples ADD COLUMN pass INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE bench_samples ADD COLUMN sm_clock_mhz REAL")
    db.execute("ALTER TABLE bench_samples ADD COLUMN clock_reasons INTEGER")
    db.execute("ALTER TABLE bench_results ADD COLUMN passes INTEGER")
    db.execute("ALTER TABLE bench_results ADD COLUMN pass_spread_pct REAL")
    db.execute("ALTER TABLE bench_results ADD COLUMN sm_clock_mhz REAL")


@migration
def m006_correctness_variants(db) -> None:
    """Grouped-query configs keep their key/value head count, causal ones their alignment."""
    db.execute("ALTER TABLE correctness_results ADD COLUMN num_heads_k INTEGER")
    db.execute("ALTER TABLE correctness_results ADD COLUMN causal_alignment TEXT")


@migration
def m007_bench_variants(db) -> None:
    """Grouped-query configs keep their key/value head count, causal ones their alignment."""
    db.execute("ALTER TABLE bench_results ADD COLUMN num_heads_k INTEGER")
    db.execute("ALTER TABLE bench_results ADD COLUMN causal_alignment TEXT")


@migration
def m008_steps_pid_namespace(db) -> None:
    """The pid namespace of a step's process (``/proc/self/ns/pid``), so that liveness checks by
    pid happen only where that pid means the same process."""
    db.execute("ALTER TABLE steps ADD COLUMN pid_ns TEXT")


@migration
def m009_provenance(db) -> None:
    """Merged databases: where an imported session came from, and artifacts whose file did not come
    with it; indexes for the aggregate queries that read every session."""
    db.execute("ALTER TABLE sessions ADD COLUMN origin_number INTEGER")
    db.execute("ALTER TABLE sessions ADD COLUMN imported_from TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN imported_at TEXT")
    db.execute("ALTER TABLE artifacts ADD COLUMN missing INTEGER NOT NULL DEFAULT 0 "
               "CHECK (missing IN (0, 1))")
    db.execute("ALTER TABLE artifacts ADD COLUMN origin_path TEXT")
    db.execute("CREATE INDEX idx_sessions_host ON sessions(host, started_at)")


@migration
def m010_step_rollups(db) -> None:
    """History and the pattern evidence read every session. ``_step_rollups`` keeps, per step, the
    figures they need from its result rows (bench speedups, correctness counts) and
    ``_session_rollups`` per session its step counts and last bench and correctness figures, so that
    reading all sessions costs one row per session instead of every result row. Derived data,
    filled and refreshed by :mod:`sessionkit.report.rollups`, never merged or exported. Covering indexes
    serve the per-step aggregates and the step counts (``benchmarks/history_speed.py``)."""
    db.execute("CREATE INDEX idx_steps_session_status ON steps(session_id, status, duration_s)")
    db.execute("CREATE INDEX idx_bench_results_ours ON bench_results(step_id, impl, status, speedup_vs_sdpa) "
               "WHERE impl = 'ours' AND status = 'ok' AND speedup_vs_sdpa IS NOT NULL")
    db.execute("CREATE INDEX idx_correctness_bounds ON correctness_results(step_id, passed, max_err, bound)")
    db.execute(
        """
        CREATE TABLE _step_rollups (
            step_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            bench_configs INTEGER NOT NULL DEFAULT 0,
            bench_best REAL,
            bench_geomean REAL,
            correctness_configs INTEGER NOT NULL DEFAULT 0,
            correctness_passed INTEGER NOT NULL DEFAULT 0,
            correctness_worst_ratio REAL
        )"""
    )
    db.execute("CREATE INDEX idx_step_rollups_session ON _step_rollups(session_id, seq)")
    # per session: its step counts and its last bench and last finished correctness step
    db.execute(
        """
        CREATE TABLE _session_rollups (
            session_id TEXT PRIMARY KEY,
            steps INTEGER NOT NULL DEFAULT 0,
            passed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            interrupted INTEGER NOT NULL DEFAULT 0,
            bench_step_id TEXT,
            bench_configs INTEGER,
            bench_best REAL,
            bench_geomean REAL,
            correctness_status TEXT,
            correctness_configs INTEGER,
            correctness_passed INTEGER,
            correctness_worst_ratio REAL
        )"""
    )
    # steps whose result rows or identity changed since they were rolled up
    db.execute("CREATE TABLE _step_rollups_dirty (step_id TEXT PRIMARY KEY)")
    for table in ("bench_results", "correctness_results"):
        for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("NEW", "OLD")), ("DELETE", ("OLD",))):
            body = " ".join(f"INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES ({r}.step_id);"
                            for r in rows)
            db.execute(f"CREATE TRIGGER {table}_rollup_{event.lower()} AFTER {event} ON {table} "
                       f"BEGIN {body} END")
    db.execute("CREATE TRIGGER steps_rollup_update AFTER UPDATE OF session_id, seq, name, status ON steps "
               "BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.id); END")
    db.execute("CREATE TRIGGER steps_rollup_delete AFTER DELETE ON steps "
               "BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.id); END")
    # the largest steps.rowid already rolled up; later rows (new or merged steps) are rolled up next
    db.execute("CREATE TABLE _step_rollups_mark (id INTEGER PRIMARY KEY CHECK (id = 1), "
               "steps_rowid INTEGER NOT NULL)")
    db.execute("INSERT INTO _step_rollups_mark (id, steps_rowid) VALUES (1, 0)")


#: Row counts SQLite's query planner assumes for ``sessions``, ``steps`` and ``metrics`` and their
#: indexes (``sqlite_stat1`` rows: total rows, then rows per distinct value of each leading column),
#: written by :func:`m011_planner_statistics`. The shape of a database that has grown: many sessions,
#: ten or so steps each, a handful of step names and statuses shared by very many steps, ten or so
#: metrics per step.
PLANNER_STATISTICS = {
    ("sessions", None): "100000",
    ("sessions", "sqlite_autoindex_sessions_1"): "100000 1",
    ("sessions", "idx_sessions_number"): "100000 1",
    ("sessions", "idx_sessions_host"): "100000 10000 1",
    ("sessions", "idx_sessions_open"): "1 1",
    ("steps", None): "1000000",
    ("steps", "sqlite_autoindex_steps_1"): "1000000 1",
    ("steps", "idx_steps_session"): "1000000 10 1",
    ("steps", "idx_steps_name_status"): "1000000 100000 50000",
    ("steps", "idx_steps_status"): "1000000 250000",
    ("steps", "idx_steps_session_status"): "1000000 10 4 1",
    ("metrics", None): "10000000",
    ("metrics", "idx_metrics_step"): "10000000 10 1",
}


@migration
def m011_planner_statistics(db) -> None:
    """Statistics for SQLite's query planner on ``sessions``, ``steps`` and ``metrics``
    (:data:`PLANNER_STATISTICS`, in ``sqlite_stat1``), the tables the cross-session queries of
    reports and pattern evidence join, and an index of the open sessions.

    Without statistics the planner takes ``steps.name = 'bench'`` to match about ten rows, so to
    find the previous session that benchmarked it read every bench step of the database and sorted
    them (0.8 s of ``sessionkit report`` at 100,000 sessions) instead of walking sessions newest
    first through ``idx_sessions_number`` (under a millisecond). Fixed figures rather than
    ``ANALYZE``, whose counts taken on a young database would mislead the planner once it grows
    (SQLite's "fixed results of ANALYZE"). Statistics a database already has (from ``ANALYZE``) are
    kept; ``ANALYZE`` later replaces these.
    """
    # the open sessions, which nearly every command looks up, without reading every session
    db.execute("CREATE INDEX idx_sessions_open ON sessions(number) WHERE status = 'open'")
    db.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1, analysing nothing
    have = {row[0] for row in db.execute("SELECT DISTINCT tbl FROM sqlite_stat1")}
    db.conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)",
                        [(table, index, stat) for (table, index), stat in PLANNER_STATISTICS.items()
                         if table not in have])
    db.execute("ANALYZE sqlite_schema")  # loads them into this connection's planner
