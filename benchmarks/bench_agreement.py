"""Check the bench step's timing method on a GPU.

    python benchmarks/bench_agreement.py agree  [--grid quick]
        SDPA default timed by sessionkit and by triton.testing.do_bench (median mode, three runs
        to show its own spread); configs of 0.2 ms and more must agree within 5 %. Our timer runs
        without rests (--cooldown 0), as do_bench does; see sessionkit/bench/agreement.py.

    python benchmarks/bench_agreement.py repeat [--grid quick] [--db PATH] [--csv PATH]
        Two back-to-back 'bench' steps in one session; per config and implementation, the
        difference of the medians (bar: <= 3 % each at >= 0.2 ms, <= 1.5 % median over configs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def agree(args) -> int:
    from sessionkit.bench.agreement import agreement_rows, format_rows
    from sessionkit.bench.grids import load_grid

    rows = agreement_rows(load_grid(args.grid), repeats=args.repeats, cooldown=args.cooldown,
                          progress=lambda i, n, label: print(f"  {i}/{n} {label}", flush=True))
    print(format_rows(rows, threshold_ms=args.threshold_ms, tolerance_pct=args.tolerance))
    bad = [r for r in rows if r["do_bench_ms"] >= args.threshold_ms
           and abs(r["diff_pct"]) > args.tolerance]
    return 1 if bad else 0


def repeat(args) -> int:
    from sessionkit.attention import AttentionConfig
    from sessionkit.db import open_db
    from sessionkit.runner import run_step
    from sessionkit.sessions import start_session
    from sessionkit.steps.bench import BenchStep

    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "sessions.db"
    db = open_db(path, create=True)
    session = start_session(db, "repeat", objective="back-to-back bench reproducibility",
                            force=True)
    options = {"grid": args.grid, "time_limit_s": args.time_limit, "passes": args.passes,
               "cooldown": args.cooldown}
    steps = [run_step(db, session, BenchStep(), dict(options, csv_path=args.csv)),
             run_step(db, session, BenchStep(), options)]
    a, b = ({(AttentionConfig.from_row(r), r["impl"]): r
             for r in db.query("SELECT * FROM bench_results WHERE step_id = ?", [s["id"]])}
            for s in steps)
    print(f"database: {path}")
    print(f"{'config':<40} {'impl':<15} {'run 1 ms':>9} {'run 2 ms':>9} {'diff %':>7} "
          f"{'MHz 1':>6} {'MHz 2':>6} {'pass spread % 1/2':>18}")
    gated = []
    for key, ra in a.items():
        rb = b.get(key)
        if not rb or ra["status"] != "ok" or rb["status"] != "ok":
            continue
        diff = 100.0 * (rb["latency_ms"] - ra["latency_ms"]) / ra["latency_ms"]
        config, impl = key
        label = config.label
        mark = "" if ra["latency_ms"] >= args.threshold_ms else "  (< 0.2 ms)"
        spreads = "/".join("-" if r.get("pass_spread_pct") is None else f"{r['pass_spread_pct']:.1f}"
                           for r in (ra, rb))
        print(f"{label:<40} {impl:<15} {ra['latency_ms']:>9.4f} {rb['latency_ms']:>9.4f} "
              f"{diff:>+7.2f} {_mhz(ra):>6} {_mhz(rb):>6} {spreads:>18}{mark}")
        if ra["latency_ms"] >= args.threshold_ms:
            gated.append(abs(diff))
    if not gated:
        print("no config of 0.2 ms or more")
        return 1
    worst, mid = max(gated), statistics.median(gated)
    over = sum(d > 3.0 for d in gated)
    print(f"(impl, config) pairs >= {args.threshold_ms} ms: {len(gated)}; worst |diff| "
          f"{worst:.2f} %, median |diff| {mid:.2f} %, over 3 %: {over}")
    print(f"step times: {steps[0]['duration_s']:.1f} s and {steps[1]['duration_s']:.1f} s")
    return 0 if worst <= 3.0 and mid <= 1.5 else 1


def _mhz(row) -> str:
    return "-" if row.get("sm_clock_mhz") is None else f"{row['sm_clock_mhz']:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("agree")
    p.add_argument("--grid", default="quick")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cooldown", type=float, default=0.0,
                   help="rests of our timer (0: none, the regime do_bench runs in)")
    p.add_argument("--threshold-ms", type=float, default=0.2)
    p.add_argument("--tolerance", type=float, default=5.0)
    p.set_defaults(fn=agree)
    p = sub.add_parser("repeat")
    p.add_argument("--grid", default="quick")
    p.add_argument("--db")
    p.add_argument("--time-limit", default="150s")
    p.add_argument("--csv", help="CSV of the first run")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--cooldown", type=float, default=1.0)
    p.add_argument("--threshold-ms", type=float, default=0.2)
    p.set_defaults(fn=repeat)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"needs a CUDA GPU (torch {torch.__version__} sees none)", file=sys.stderr)
        return 2
    if args.fn is agree:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            print("needs triton (its testing.do_bench is the other timer): pip install triton",
                  file=sys.stderr)
            return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
