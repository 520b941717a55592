"""How long ``sessionkit history`` and ``report`` take on a large database, and how it grows.

Generates a database of N sessions x S steps x M metrics per step (default 1,000 x 10 x 100, i.e.
a million metric rows), with correctness and bench results on the matching steps, then times
``history_report`` (data and rendering) several times and prints the figures: the first run (which
rolls up every step, once) apart from the later ones. It also times ``session_report`` of the last
session, and with ``--telemetry-hours H`` measures what H hours of NVML samples of one GPU at the
default 100 ms interval add to the database.

    python benchmarks/history_speed.py                    # default size, temporary database
    python benchmarks/history_speed.py --sessions 5000 --check 1.0
    python benchmarks/history_speed.py --sessions 100000 --steps 5 --metrics 10 --check 2.0
    python benchmarks/history_speed.py --sessions 100 --telemetry-hours 1

``--check SECONDS`` exits with status 1 when the median of the later runs exceeds SECONDS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEP_NAMES = ["preflight", "build", "correctness", "bench", "profile"]
BENCH_CONFIGS = [(s, c) for s in (512, 1024, 2048, 4096, 8192, 16384) for c in (0, 1)]


def generate(path: Path, sessions: int, steps: int, metrics: int) -> dict:
    from sessionkit.db import open_db

    db = open_db(path, create=True)
    conn = db.conn
    counts = {"sessions": 0, "steps": 0, "metrics": 0, "bench_results": 0, "correctness_results": 0}
    conn.execute("BEGIN")
    for n in range(1, sessions + 1):
        sid = str(uuid.uuid4())
        day, hour = divmod(n, 24)
        started = f"2025-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{hour:02d}:00:00+00:00"
        ended = f"2025-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{hour:02d}:{10 + n % 50:02d}:00+00:00"
        conn.execute(
            "INSERT INTO sessions (id, number, name, objective, status, outcome, started_at, ended_at,"
            " gpu_rate_usd_per_h, ai_rate_usd_per_h, host) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [sid, n, f"session {n}", "speed up the forward kernel", "passed" if n % 7 else "failed",
             f"outcome of session {n}", started, ended, 2.49, 6.0 if n % 3 else None, "gen-host"])
        counts["sessions"] += 1
        step_rows, metric_rows = [], []
        for seq in range(1, steps + 1):
            step_id = str(uuid.uuid4())
            name = STEP_NAMES[(seq - 1) % len(STEP_NAMES)]
            status = "failed" if (n + seq) % 11 == 0 else "passed"
            conn.execute(
                "INSERT INTO steps (id, session_id, seq, name, status, started_at, ended_at, duration_s,"
                " budget_s, host, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [step_id, sid, seq, name, status, started, ended, 10.0 + seq, 60.0, "gen-host", 1])
            step_rows.append(step_id)
            metric_rows += [[step_id, f"m{k}", float(k * seq), "x", None] for k in range(metrics)]
            if name == "correctness":
                conn.executemany(
                    "INSERT INTO correctness_results (step_id, idx, dtype, batch_size, num_heads,"
                    " seq_len_q, seq_len_k, head_dim, causal, layout, seed, max_err, bound, passed)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [[step_id, i, "bf16", 2, 16, s, s, 128, c, "bhsd", 0, 0.001 * (1 + i), 0.02, 1]
                     for i, (s, c) in enumerate(BENCH_CONFIGS)])
                counts["correctness_results"] += len(BENCH_CONFIGS)
            if name == "bench":
                rows = []
                for s, c in BENCH_CONFIGS:
                    for impl, ms in (("ours", 1.0 + (n % 13) / 10), ("sdpa", 1.2)):
                        rows.append([step_id, impl, "bf16", 4, 16, s, s, 128, c, ms, 0.01, 9,
                                     300.0, 40.0, 1.2 / ms, "ok"])
                conn.executemany(
                    "INSERT INTO bench_results (step_id, impl, dtype, batch_size, num_heads, seq_len_q,"
                    " seq_len_k, head_dim, causal, latency_ms, iqr_ms, samples, tflops, pct_peak,"
                    " speedup_vs_sdpa, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                counts["bench_results"] += len(rows)
        conn.executemany("INSERT INTO metrics (step_id, key, value, unit, subject) VALUES (?,?,?,?,?)",
                         metric_rows)
        counts["steps"] += len(step_rows)
        counts["metrics"] += len(metric_rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return counts


def add_telemetry(path: Path, hours: float, interval_s: float = 0.1) -> dict:
    """Add ``hours`` of one GPU's samples at ``interval_s`` to the last step; returns rows and MB added."""
    import sqlite3

    conn = sqlite3.connect(path)

    def used_bytes() -> int:  # pages in use: free pages left by earlier deletes do not count
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    before = used_bytes()
    step_id = conn.execute("SELECT id FROM steps ORDER BY rowid DESC LIMIT 1").fetchone()[0]
    n = int(hours * 3600 / interval_s)
    t0 = 1767603960.0
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO telemetry_samples (step_id, gpu_index, t_unix_s, power_w, energy_mj, sm_clock_mhz,"
        " mem_clock_mhz, temp_c, gpu_util_pct, mem_used_mib, throttle_reasons, throttled)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        ([step_id, 0, t0 + k * interval_s, 600.0 + k % 50, 1e6 + 60.0 * k, 1980.0 - k % 3, 2619.0,
          55.0 + (k % 100) / 10, 99.0, 2048.0, 0, 0] for k in range(n)))
    conn.execute("COMMIT")
    added = used_bytes() - before
    conn.close()
    return {"rows": n, "mb": added / 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--metrics", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="keep the generated database here (default: temporary)")
    parser.add_argument("--check", type=float, metavar="SECONDS",
                        help="exit 1 when the median time exceeds SECONDS")
    parser.add_argument("--telemetry-hours", type=float, default=0.0,
                        help="also add this many hours of one GPU's telemetry at 100 ms and report its size")
    args = parser.parse_args(argv)

    from sessionkit.db import open_db
    from sessionkit.report import history_report, session_report

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "history.db"
        if path.exists():
            sys.exit(f"{path} exists; give a new path")
        t0 = time.perf_counter()
        counts = generate(path, args.sessions, args.steps, args.metrics)
        gen_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        first, times = None, []
        lines = 0
        for i in range(args.repeat + 1):
            db = open_db(path)  # a fresh connection each time, as each CLI call has
            t0 = time.perf_counter()
            report = history_report(db)
            elapsed = time.perf_counter() - t0
            if i == 0:
                first = elapsed
            else:
                times.append(elapsed)
            lines = report.text.count("\n")
            db.conn.close()
        db = open_db(path)
        t0 = time.perf_counter()
        session_report(db, "last", out=Path(tmp) / "report.md", plots=False)
        report_s = time.perf_counter() - t0
        db.conn.close()
        telemetry = add_telemetry(path, args.telemetry_hours) if args.telemetry_hours else None

    print(f"database: {counts['sessions']:,} sessions, {counts['steps']:,} steps, "
          f"{counts['metrics']:,} metrics, {counts['bench_results']:,} bench rows, "
          f"{counts['correctness_results']:,} correctness rows; {size_mb:.0f} MB, generated in {gen_s:.1f} s")
    print(f"history ({lines:,} lines of Markdown): first run (rolls up every step once) {first:.3f} s; "
          f"then {args.repeat} runs: median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s, max {max(times):.3f} s")
    print(f"report of the last session: {report_s:.3f} s")
    if telemetry:
        print(f"telemetry: {args.telemetry_hours:g} h of one GPU at 100 ms = {telemetry['rows']:,} rows, "
              f"{telemetry['mb']:.1f} MB ({telemetry['mb'] / args.telemetry_hours:.1f} MB per GPU-hour)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.check is not None and statistics.median(times) > args.check:
        print(f"SLOWER than {args.check} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
