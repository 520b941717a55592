-- index idx__sqlite_migrations_migration_set_name
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");

-- index idx_artifacts_step
CREATE INDEX idx_artifacts_step ON artifacts(step_id);

-- index idx_bench_results_ours
CREATE INDEX idx_bench_results_ours ON bench_results(step_id, impl, status, speedup_vs_sdpa) WHERE impl = 'ours' AND status = 'ok' AND speedup_vs_sdpa IS NOT NULL;

-- index idx_bench_results_step
CREATE INDEX idx_bench_results_step ON bench_results(step_id);

-- index idx_bench_samples_result
CREATE INDEX idx_bench_samples_result ON bench_samples(result_id);

-- index idx_correctness_bounds
CREATE INDEX idx_correctness_bounds ON correctness_results(step_id, passed, max_err, bound);

-- index idx_correctness_step
CREATE INDEX idx_correctness_step ON correctness_results(step_id, idx);

-- index idx_env_session
CREATE INDEX idx_env_session ON env_snapshots(session_id);

-- index idx_metrics_step
CREATE INDEX idx_metrics_step ON metrics(step_id, key);

-- index idx_patterns_session
CREATE INDEX idx_patterns_session ON patterns_applied(session_id);

-- index idx_sessions_host
CREATE INDEX idx_sessions_host ON sessions(host, started_at);

-- index idx_sessions_number
CREATE UNIQUE INDEX idx_sessions_number ON sessions(number);

-- index idx_sessions_open
CREATE INDEX idx_sessions_open ON sessions(number) WHERE status = 'open';

-- index idx_step_rollups_session
CREATE INDEX idx_step_rollups_session ON _step_rollups(session_id, seq);

-- index idx_steps_name_status
CREATE INDEX idx_steps_name_status ON steps(name, status);

-- index idx_steps_session
CREATE INDEX idx_steps_session ON steps(session_id, seq);

-- index idx_steps_session_status
CREATE INDEX idx_steps_session_status ON steps(session_id, status, duration_s);

-- index idx_steps_status
CREATE INDEX idx_steps_status ON steps(status);

-- index idx_telemetry_step
CREATE INDEX idx_telemetry_step ON telemetry_samples(step_id, t_unix_s);

-- table _session_rollups
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
        );

-- table _sqlite_migrations
CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);

-- table _step_rollups
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
        );

-- table _step_rollups_dirty
CREATE TABLE _step_rollups_dirty (step_id TEXT PRIMARY KEY);

-- table _step_rollups_mark
CREATE TABLE _step_rollups_mark (id INTEGER PRIMARY KEY CHECK (id = 1), steps_rowid INTEGER NOT NULL);

-- table artifacts
CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            sha256 TEXT,
            size_bytes INTEGER,
            created_at TEXT NOT NULL
        , missing INTEGER NOT NULL DEFAULT 0 CHECK (missing IN (0, 1)), origin_path TEXT);

-- table bench_results
CREATE TABLE bench_results (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            impl TEXT NOT NULL,
            dtype TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            num_heads INTEGER NOT NULL,
            seq_len_q INTEGER NOT NULL,
            seq_len_k INTEGER NOT NULL,
            head_dim INTEGER NOT NULL,
            causal INTEGER NOT NULL,
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
        , passes INTEGER, pass_spread_pct REAL, sm_clock_mhz REAL, num_heads_k INTEGER, causal_alignment TEXT);

-- table bench_samples
CREATE TABLE bench_samples (
            id INTEGER PRIMARY KEY,
            result_id INTEGER NOT NULL REFERENCES bench_results(id),
            idx INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            throttled INTEGER NOT NULL DEFAULT 0
        , pass INTEGER NOT NULL DEFAULT 0, sm_clock_mhz REAL, clock_reasons INTEGER);

-- table correctness_results
CREATE TABLE correctness_results (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            idx INTEGER NOT NULL,
            dtype TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            num_heads INTEGER NOT NULL,
            seq_len_q INTEGER NOT NULL,
            seq_len_k INTEGER NOT NULL,
            head_dim INTEGER NOT NULL,
            causal INTEGER NOT NULL CHECK (causal IN (0, 1)),
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
        , num_heads_k INTEGER, causal_alignment TEXT);

-- table env_snapshots
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
        );

-- table metrics
CREATE TABLE metrics (
            id INTEGER PRIMARY KEY,
            step_id TEXT NOT NULL REFERENCES steps(id),
            key TEXT NOT NULL,
            value REAL,
            unit TEXT,
            subject TEXT
        );

-- table patterns_applied
CREATE TABLE patterns_applied (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            pattern_id TEXT NOT NULL,
            note TEXT,
            applied_at TEXT NOT NULL
        );

-- table sessions
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
        , origin_number INTEGER, imported_from TEXT, imported_at TEXT);

-- table sqlite_stat1
CREATE TABLE sqlite_stat1(tbl,idx,stat);

-- table steps
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
        , pid_ns TEXT);

-- table telemetry_samples
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
        );

-- trigger bench_results_rollup_delete
CREATE TRIGGER bench_results_rollup_delete AFTER DELETE ON bench_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.step_id); END;

-- trigger bench_results_rollup_insert
CREATE TRIGGER bench_results_rollup_insert AFTER INSERT ON bench_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.step_id); END;

-- trigger bench_results_rollup_update
CREATE TRIGGER bench_results_rollup_update AFTER UPDATE ON bench_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.step_id); INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.step_id); END;

-- trigger correctness_results_rollup_delete
CREATE TRIGGER correctness_results_rollup_delete AFTER DELETE ON correctness_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.step_id); END;

-- trigger correctness_results_rollup_insert
CREATE TRIGGER correctness_results_rollup_insert AFTER INSERT ON correctness_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.step_id); END;

-- trigger correctness_results_rollup_update
CREATE TRIGGER correctness_results_rollup_update AFTER UPDATE ON correctness_results BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.step_id); INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.step_id); END;

-- trigger steps_rollup_delete
CREATE TRIGGER steps_rollup_delete AFTER DELETE ON steps BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (OLD.id); END;

-- trigger steps_rollup_update
CREATE TRIGGER steps_rollup_update AFTER UPDATE OF session_id, seq, name, status ON steps BEGIN INSERT OR IGNORE INTO _step_rollups_dirty (step_id) VALUES (NEW.id); END;

-- view metric_overview
CREATE VIEW metric_overview AS
        SELECT s.number AS session_number, st.name AS step, st.seq, m.key, m.subject, m.value,
               m.unit, st.status AS step_status, m.step_id
        FROM metrics m JOIN steps st ON st.id = m.step_id JOIN sessions s ON s.id = st.session_id;

-- view step_overview
CREATE VIEW step_overview AS
        SELECT s.number AS session_number, s.name AS session_name, st.seq, st.name AS step,
               st.status, st.started_at, st.duration_s, st.budget_s, st.exit_code, st.message,
               st.id AS step_id, s.id AS session_id
        FROM steps st JOIN sessions s ON s.id = st.session_id
        ORDER BY s.number, st.seq;

