"""Tables of the bench step: one row per (implementation, config) and every raw timing sample."""

from __future__ import annotations

IMPLS = ("ours", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math")
RESULT_STATUSES = ("ok", "wrong", "unsupported", "error")


def m004_bench(db) -> None:
    db.execute(
        """
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


def m007_bench_variants(db) -> None:
    """Grouped-query configs keep their key/value head count, causal ones their alignment."""
    db.execute("ALTER TABLE bench_results ADD COLUMN num_heads_k INTEGER")
    db.execute("ALTER TABLE bench_results ADD COLUMN causal_alignment TEXT")
