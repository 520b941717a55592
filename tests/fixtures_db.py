"""A fixture database with fixed ids and timestamps, built through the real migrations.

Sessions:

1. ``baseline``: a full session (environment, build, correctness, bench with raw samples, telemetry),
   GPU rate set, AI rate not set; applied ``baseline-first``.
2. ``pipelined softmax``: a full session on a changed driver, with one failed correctness config, a
   bench that regressed on one config and improved on others, a profile, a command step, both rates;
   applied ``baseline-first`` and ``profile-first``.
3. ``preempted``: preflight passed, the build was interrupted by SIGTERM; abandoned; applied
   ``keep-gpu-warm``.
4. ``empty``: open, nothing run.

``NOW`` is the fixed "current time" to pass to the report functions.
"""

from __future__ import annotations

import json

from sessionkit.db import open_db

NOW = "2026-01-07T12:00:00+00:00"
HOST = "h100-box"


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def stid(session: int, seq: int) -> str:
    return f"00000000-0000-4000-9000-{session:06d}{seq:06d}"


def _session(db, n, name, objective, status, started, ended, outcome, *, gpu_rate=None,
             ai_rate=None, budget_s=7200.0, commit=None):
    db["sessions"].insert({
        "id": sid(n), "number": n, "name": name, "objective": objective, "status": status,
        "outcome": outcome, "started_at": started, "ended_at": ended, "budget_s": budget_s,
        "gpu_rate_usd_per_h": gpu_rate, "ai_rate_usd_per_h": ai_rate,
        "plan": json.dumps(["preflight", "build", "correctness", "bench"]),
        "step_budgets": json.dumps({"preflight": 30, "build": 120, "correctness": 180, "bench": 300}),
        "host": HOST, "cwd": "/home/dev/fa", "git_commit": commit,
    })


def _step(db, session, seq, name, status, started, ended, duration, budget, *, message=None,
          summary=None, exit_code=None, kind="builtin", command=None):
    db["steps"].insert({
        "id": stid(session, seq), "session_id": sid(session), "seq": seq, "name": name, "kind": kind,
        "command": json.dumps(command) if command else None, "options": "{}", "status": status,
        "started_at": started, "ended_at": ended, "duration_s": duration, "budget_s": budget,
        "exit_code": exit_code, "message": message, "summary": json.dumps(summary or {}),
        "host": HOST, "pid": 4242, "heartbeat_at": ended or started,
    })
    return stid(session, seq)


def _metric(db, step_id, key, value, unit=None, subject=None):
    db["metrics"].insert({"step_id": step_id, "key": key, "value": value, "unit": unit,
                          "subject": subject})


def _env(n, driver, commit):
    return {
        "host": HOST,
        "python": {"version": "3.12.3", "executable": "/usr/bin/python3"},
        "torch": {"version": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True},
        "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "cc": "9.0", "memory_mib": 81559,
                  "uuid": "GPU-5f3c1d2e-0000-4000-8000-00000000beef"}],
        "driver": driver,
        "toolchain": {"nvcc": "/usr/local/cuda-13.0/bin/nvcc", "nvcc_version": "13.0",
                      "nvcc_on_path": True, "cuda_home": "/usr/local/cuda-13.0",
                      "host_compiler": "gcc 13.3.0", "ninja": "/usr/bin/ninja",
                      "arch_flags": ["-gencode=arch=compute_90a,code=sm_90a"], "arch": "sm_90a"},
        "env": {"CUDA_VISIBLE_DEVICES": "0"},
        "git": {"commit": commit, "dirty": False},
    }


def _snapshot(db, n, step_id, taken_at, driver, commit):
    data = _env(n, driver, commit)
    db["env_snapshots"].insert({
        "session_id": sid(n), "step_id": step_id, "taken_at": taken_at, "host": HOST,
        "python_version": "3.12.3", "torch_version": "2.11.0+cu130", "torch_cuda": "13.0",
        "nvcc_version": "13.0", "driver_version": driver, "gpu_name": "NVIDIA H100 80GB HBM3",
        "gpu_cc": "9.0", "git_commit": commit, "data": json.dumps(data),
    })


KERNELS = ("flash_fwd_bf16_hdim128_causal", "flash_fwd_bf16_hdim128_noncausal")


def _build_metrics(db, step_id, build_time, regs, spills):
    _metric(db, step_id, "build_time_s", build_time, "s")
    for kernel, r, sp in zip(KERNELS, regs, spills):
        _metric(db, step_id, "registers", r, "count", kernel)
        _metric(db, step_id, "smem_bytes", 196608, "bytes", kernel)
        _metric(db, step_id, "spill_store_bytes", sp, "bytes", kernel)
        _metric(db, step_id, "spill_load_bytes", sp, "bytes", kernel)


CORRECTNESS_CONFIGS = [  # (dtype, B, H, S, D, causal)
    ("bf16", 2, 16, 1024, 128, 0),
    ("bf16", 2, 16, 1024, 128, 1),
    ("fp16", 1, 8, 4096, 128, 0),
    ("fp16", 1, 8, 4096, 128, 1),
]


def _correctness(db, step_id, errors, failures=None):
    failures = failures or {}
    for idx, ((dtype, b, h, s, d, causal), err) in enumerate(zip(CORRECTNESS_CONFIGS, errors)):
        bound = 0.02 if dtype == "bf16" else 0.004
        db["correctness_results"].insert({
            "step_id": step_id, "idx": idx, "dtype": dtype, "batch_size": b, "num_heads": h,
            "seq_len_q": s, "seq_len_k": s, "head_dim": d, "causal": causal, "layout": "bhsd",
            "seed": 1234, "max_err": err, "bound": bound, "lse_err": err / 10,
            "passed": 0 if idx in failures else 1, "worst_index": f"0,{idx},{17 * (idx + 1)},{idx * 3}",
            "worst_out": 0.5 + err, "worst_ref": 0.5, "failure": failures.get(idx),
        })


BENCH_SEQS = (1024, 4096)


def _bench(db, step_id, ours_ms, sdpa_ms, flash_ms, *, throttled=(0, 0, 0, 0), jitter=0.002):
    """Two causal settings x two sequence lengths; ours, sdpa and sdpa_flash rows with samples."""
    i = 0
    for causal in (0, 1):
        for s in BENCH_SEQS:
            flops = 4 * 4 * 16 * s * s * 128 * (0.5 if causal else 1.0)
            for impl, ms in (("ours", ours_ms[i]), ("sdpa", sdpa_ms[i]), ("sdpa_flash", flash_ms[i])):
                tflops = flops / (ms * 1e-3) / 1e12
                row = {
                    "step_id": step_id, "impl": impl, "dtype": "bf16", "batch_size": 4,
                    "num_heads": 16, "seq_len_q": s, "seq_len_k": s, "head_dim": 128,
                    "causal": causal, "latency_ms": ms, "iqr_ms": ms * 0.01, "samples": 9,
                    "tflops": tflops, "pct_peak": tflops / 762.0 * 100, "memory_mb": 64.0 * s / 1024,
                    "throttled_samples": throttled[i] if impl == "ours" else 0,
                    "speedup_vs_sdpa": sdpa_ms[i] / ms if impl != "sdpa" else 1.0,
                    "speedup_vs_best": min(sdpa_ms[i], flash_ms[i]) / ms, "status": "ok",
                    "note": None, "sm_clock_mhz": 1980.0 - 15 * i if impl == "ours" else 1980.0,
                }
                rid = db["bench_results"].insert(row).last_pk
                db["bench_samples"].insert_all(
                    {"result_id": rid, "idx": k, "latency_ms": ms * (1 + jitter * ((k * 7) % 9 - 4)),
                     "throttled": 1 if impl == "ours" and k < throttled[i] else 0}
                    for k in range(9))
            i += 1


def _telemetry(db, step_id, t0, n, power, clock, temp, throttled_from=None):
    rows = []
    for k in range(n):
        rows.append({"step_id": step_id, "gpu_index": 0, "t_unix_s": t0 + k * 0.5,
                     "power_w": power + (k % 5) * 10, "energy_mj": 1000.0 * k * power / 2,
                     "sm_clock_mhz": clock - (90 if throttled_from is not None and k >= throttled_from else 0),
                     "mem_clock_mhz": 2619, "temp_c": temp + k * 0.1, "gpu_util_pct": 99,
                     "mem_used_mib": 2048, "throttle_reasons": 4 if throttled_from is not None and k >= throttled_from else 0,
                     "throttled": 1 if throttled_from is not None and k >= throttled_from else 0})
    db["telemetry_samples"].insert_all(rows)


def _telemetry_summary(db, step_id, mean, peak, energy, temp, clk_min, clk_max, share, samples):
    for key, value, unit in (("power_mean_w", mean, "W"), ("power_max_w", peak, "W"),
                             ("energy_j", energy, "J"), ("temp_max_c", temp, "C"),
                             ("sm_clock_min_mhz", clk_min, "MHz"), ("sm_clock_max_mhz", clk_max, "MHz"),
                             ("throttled_share", share, "fraction"), ("samples", samples, "count")):
        _metric(db, step_id, key, value, unit, "telemetry")


_TEMPLATE: dict[str, str] = {}


def _build(path):
    db = open_db(path, create=True)
    with db.conn:
        _session_1(db)
        _session_2(db)
        _session_3(db)
        _session_4(db)
    return db


def build_fixture_db(path) -> object:
    """Create the fixture database at ``path`` and return it (opened through ``open_db``).

    It is built once per test process into a template file and copied from there.
    """
    import shutil
    import tempfile

    if "path" not in _TEMPLATE:
        import atexit

        folder = tempfile.mkdtemp(prefix="sessionkit-fixture-")
        atexit.register(shutil.rmtree, folder, True)
        template = f"{folder}/fixture.db"
        db = _build(template)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.conn.close()
        _TEMPLATE["path"] = template
    shutil.copyfile(_TEMPLATE["path"], path)
    return open_db(path)


def _session_1(db):
    _session(db, 1, "baseline", "Measure the FlashAttention forward kernel against SDPA before changing it",
             "passed", "2026-01-05T09:00:00+00:00", "2026-01-05T09:20:00+00:00",
             "Baseline recorded: our kernel trails SDPA on every configuration.", gpu_rate=3.0,
             commit="1111111aaaaaaa")
    pre = _step(db, 1, 1, "preflight", "passed", "2026-01-05T09:00:10+00:00",
                "2026-01-05T09:00:22+00:00", 12.0, 30.0, message="environment ready")
    _snapshot(db, 1, pre, "2026-01-05T09:00:21+00:00", "580.82.07", "1111111aaaaaaa")
    b = _step(db, 1, 2, "build", "passed", "2026-01-05T09:01:00+00:00", "2026-01-05T09:02:35+00:00",
              95.0, 120.0, message="built 2 kernels",
              summary={"nvcc_version": "13.0", "flags": ["-O3", "--use_fast_math"], "cached": False,
                       "key": "a1b2c3d4", "library": "/cache/a1b2c3d4/flash_fwd.so", "arch": "sm_90a"})
    _build_metrics(db, b, 93.5, (168, 154), (0, 0))
    c = _step(db, 1, 3, "correctness", "passed", "2026-01-05T09:03:00+00:00",
              "2026-01-05T09:05:20+00:00", 140.0, 180.0, message="4 of 4 configs within bounds",
              summary={"seed": 1234, "configs": 4, "passed": 4, "failed": 0, "worst_ratio": 0.45})
    _correctness(db, c, (0.009, 0.006, 0.0011, 0.0009))
    bn = _step(db, 1, 4, "bench", "passed", "2026-01-05T09:06:00+00:00", "2026-01-05T09:10:10+00:00",
               250.0, 300.0, message="4 configs",
               summary={"grid": "quick", "configs": 4, "passes": 3, "cooldown": 1.0})
    _bench(db, bn, ours_ms=(0.50, 6.00, 0.30, 3.20), sdpa_ms=(0.40, 5.00, 0.25, 2.80),
           flash_ms=(0.60, 9.00, 0.35, 5.00))
    _metric(db, bn, "matmul_bf16_tflops", 762.0, "TFLOP/s", "ceiling")
    _metric(db, bn, "pass_spread_median_pct", 2.4, "%")
    _telemetry(db, bn, 1767603960.0, 20, 600.0, 1980, 55.0)
    _telemetry_summary(db, bn, 620.0, 640.0, 155000.0, 56.9, 1980, 1980, 0.0, 20)
    _telemetry_summary(db, b, 90.0, 120.0, 8550.0, 41.0, 345, 1980, 0.0, 950)
    db["patterns_applied"].insert({"session_id": sid(1), "pattern_id": "baseline-first",
                                   "note": "SDPA and ours before any edit",
                                   "applied_at": "2026-01-05T09:00:05+00:00"})


def _session_2(db):
    _session(db, 2, "pipelined softmax", "Overlap the softmax of one tile with the next tile's MMAs",
             "failed", "2026-01-06T14:00:00+00:00", "2026-01-06T15:10:00+00:00",
             "Faster on long sequences, but the fp16 causal config is wrong and short sequences got slower.",
             gpu_rate=3.0, ai_rate=6.0, commit="2222222bbbbbbb-dirty")
    checks = [{"name": "gpu", "status": "pass", "finding": "NVIDIA H100 80GB HBM3 (cc 9.0)", "fix": None},
              {"name": "clocks", "status": "warn", "finding": "SM clock 1755 MHz at idle, below 1980 MHz",
               "fix": "wait for other work on the GPU to finish"},
              {"name": "nvcc", "status": "pass", "finding": "nvcc 13.0", "fix": None}]
    pre = _step(db, 2, 1, "preflight", "passed", "2026-01-06T14:00:05+00:00",
                "2026-01-06T14:00:16+00:00", 11.0, 30.0, message="environment ready",
                summary={"checks": checks, "passed": 2, "warned": 1, "failed": 0})
    _snapshot(db, 2, pre, "2026-01-06T14:00:15+00:00", "580.95.05", "2222222bbbbbbb")
    b = _step(db, 2, 2, "build", "passed", "2026-01-06T14:01:00+00:00", "2026-01-06T14:03:10+00:00",
              130.0, 120.0, message="built 2 kernels",
              summary={"nvcc_version": "13.0", "flags": ["-O3", "--use_fast_math", "-lineinfo"],
                       "cached": False, "key": "e5f6a7b8", "library": "/cache/e5f6a7b8/flash_fwd.so",
                       "arch": "sm_90a"})
    _build_metrics(db, b, 128.25, (232, 255), (0, 48))
    c = _step(db, 2, 3, "correctness", "failed", "2026-01-06T14:04:00+00:00",
              "2026-01-06T14:06:30+00:00", 150.0, 180.0, exit_code=1,
              message="1 of 4 configs out of bounds (fp16 causal)",
              summary={"seed": 1234, "configs": 4, "passed": 3, "failed": 1, "worst_ratio": 3.1})
    _correctness(db, c, (0.008, 0.007, 0.0012, 0.0124),
                 failures={3: "max error 1.24e-02 > bound 4.00e-03 | rows past the diagonal"})
    bn = _step(db, 2, 4, "bench", "passed", "2026-01-06T14:07:00+00:00", "2026-01-06T14:12:40+00:00",
               340.0, 300.0, message="4 configs; 1 regression",
               summary={"grid": "quick", "configs": 4})
    _bench(db, bn, ours_ms=(0.60, 4.20, 0.29, 2.40), sdpa_ms=(0.40, 5.00, 0.25, 2.80),
           flash_ms=(0.60, 9.00, 0.35, 5.00), throttled=(0, 3, 0, 1))
    _metric(db, bn, "matmul_bf16_tflops", 758.5, "TFLOP/s", "ceiling")
    _metric(db, bn, "pass_spread_median_pct", 0.6, "%")
    _telemetry(db, bn, 1767708420.0, 30, 650.0, 1980, 60.0, throttled_from=24)
    _telemetry_summary(db, bn, 672.0, 700.0, 228480.0, 62.9, 1890, 1980, 0.2, 30)
    p = _step(db, 2, 5, "profile", "passed", "2026-01-06T14:13:00+00:00", "2026-01-06T14:15:00+00:00",
              120.0, 300.0, message="latency bound",
              summary={"verdict": "latency bound: loads not hidden", "config": "bf16 B4 H16 S1024 D128",
                       "kernel": "flash_fwd_bf16_hdim128_noncausal",
                       "stalls": [["long_scoreboard", 41.5], ["barrier", 18.25], ["math_pipe_throttle", 9.0]],
                       "suggestions": [{"text": "Add a pipeline stage for K/V loads", "pattern": "profile-decision-tree"},
                                       {"text": "Reduce registers: 255 per thread spills", "pattern": None}]})
    for key, value, unit in (("sm_throughput_pct", 48.2, "%"), ("dram_throughput_pct", 21.7, "%"),
                             ("tensor_pipe_pct", 37.9, "%"), ("achieved_occupancy_pct", 12.4, "%"),
                             ("registers_per_thread", 255, "count"), ("duration_ms", 0.59, "ms")):
        _metric(db, p, key, value, unit)
    _step(db, 2, 6, "run", "passed", "2026-01-06T14:20:00+00:00", "2026-01-06T14:20:03+00:00", 3.0,
          None, kind="command", command=["python", "tools/check_sass.py"], message="exit 0")
    for pid, note, at in (("baseline-first", None, "2026-01-06T14:00:02+00:00"),
                          ("profile-first", "profiled the S1024 config first", "2026-01-06T14:12:50+00:00"),
                          ("measure-below-power-cap", "bench with --cooldown 1",
                           "2026-01-06T14:06:55+00:00")):
        db["patterns_applied"].insert({"session_id": sid(2), "pattern_id": pid, "note": note,
                                       "applied_at": at})


def _session_3(db):
    _session(db, 3, "preempted", "Retry the pipelined softmax with fewer registers", "abandoned",
             "2026-01-07T08:00:00+00:00", "2026-01-07T08:30:00+00:00",
             "The spot machine was taken away during the build.", gpu_rate=1.5,
             commit="3333333ccccccc")
    pre = _step(db, 3, 1, "preflight", "passed", "2026-01-07T08:00:05+00:00",
                "2026-01-07T08:00:17+00:00", 12.0, 30.0, message="environment ready")
    _snapshot(db, 3, pre, "2026-01-07T08:00:16+00:00", "580.95.05", "3333333ccccccc")
    _step(db, 3, 2, "build", "interrupted", "2026-01-07T08:01:00+00:00", "2026-01-07T08:02:10+00:00",
          70.0, 120.0, exit_code=143, message="interrupted by SIGTERM")
    db["patterns_applied"].insert({"session_id": sid(3), "pattern_id": "keep-gpu-warm",
                                   "note": "kept the machine between build and bench",
                                   "applied_at": "2026-01-07T08:00:30+00:00"})


def _session_4(db):
    _session(db, 4, "empty", "Nothing run yet", "open", "2026-01-07T11:00:00+00:00", None, None,
             budget_s=None)


# --------------------------------------------------------------------------------------------
# Snapshots

SNAPSHOT_DIR = __import__("pathlib").Path(__file__).parent / "snapshots"
UPDATE_ENV = "SESSIONKIT_UPDATE_SNAPSHOTS"


def assert_snapshot(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/snapshots/<name>``; ``SESSIONKIT_UPDATE_SNAPSHOTS=1`` rewrites it."""
    import difflib
    import os

    path = SNAPSHOT_DIR / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(f"no snapshot {path}; create it with {UPDATE_ENV}=1 and review it")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"snapshots/{name}", "rendered"))
        raise AssertionError(f"{name} drifted from its snapshot ({UPDATE_ENV}=1 rewrites it):\n{diff}")
