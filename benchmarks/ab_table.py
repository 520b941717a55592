"""Print the A/B of one session's bench steps as text: for each config, ours / SDPA (TFLOP/s) per
bench step, each step headed by the nvcc flags of the build it timed, and each step's geomean.
With ``--clocks``, each cell also gives the SM clock (MHz, the median read after our kernel's
samples) and how many of our samples ran throttled (NVML clock-event reasons): a gain that does not
show where every sample ran throttled may be the power cap's, not the code's.

    python benchmarks/ab_table.py DB [SESSION] [--clocks]

Reads the database only (sessionkit's own reader): used by ``gpu_check.sh ab`` so that the figures
also reach a terminal or a log when the report's files do not come back.
"""

from __future__ import annotations

import argparse
import math
import sys


def main(argv: list[str]) -> int:
    from sessionkit.errors import SessionkitError

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    parser.add_argument("db", metavar="DB", help="the sessionkit database of the A/B run")
    parser.add_argument("session", metavar="SESSION", nargs="?", default="last",
                        help="session number, id or 'last' (default: last)")
    parser.add_argument("--clocks", action="store_true",
                        help="add our kernel's SM clock (MHz) and throttled samples to each cell")
    args = parser.parse_args(argv)
    try:
        return _print_table(args.db, args.session, clocks=args.clocks)
    except SessionkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _print_table(path: str, which: str, *, clocks: bool = False) -> int:
    from sessionkit.db import open_db
    from sessionkit.errors import SessionkitError
    from sessionkit.sessions import get_session, session_steps

    db = open_db(path, read_only=True)
    session = get_session(db, which)
    steps = [s for s in session_steps(db, session["id"]) if s["name"] == "bench"]
    if not steps:
        raise SessionkitError(f"session {session['number']} has no bench step")
    columns, table = [], {}
    for step in steps:
        summary = step.get("summary") if isinstance(step.get("summary"), dict) else {}
        columns.append((step["id"], summary.get("nvcc_flags") or "plain"))
        for row in db.query("SELECT impl, dtype, head_dim, causal, batch_size, num_heads, "
                            "seq_len_q, seq_len_k, tflops, sm_clock_mhz, throttled_samples, samples "
                            "FROM bench_results WHERE step_id = ?", [step["id"]]):
            key = (row["dtype"], row["head_dim"], row["causal"], row["batch_size"],
                   row["num_heads"], row["seq_len_q"], row["seq_len_k"])
            table.setdefault(key, {}).setdefault(step["id"], {})[row["impl"]] = row
    print("config | " + " | ".join(flags for _, flags in columns))
    ratios = {sid: [] for sid, _ in columns}
    for key in sorted(table):
        dtype, d, causal, b, h, sq, sk = key
        cells = []
        for sid, _ in columns:
            got = table[key].get(sid, {})
            ours_row = got.get("ours") or {}
            ours, sdpa = ours_row.get("tflops"), (got.get("sdpa") or {}).get("tflops")
            if ours and sdpa:
                ratios[sid].append(ours / sdpa)
                cell = f"{ours:.0f}/{sdpa:.0f}={ours / sdpa:.3f}"
                if clocks:
                    clock = ours_row.get("sm_clock_mhz")
                    cell += (f" @{clock:.0f}MHz" if clock else " @?MHz") + (
                        f" thr {ours_row.get('throttled_samples') or 0}/{ours_row.get('samples') or 0}")
                cells.append(cell)
            else:
                cells.append("-")
        mask = "causal" if causal else "full"
        print(f"{dtype} D{d} {mask} B{b} H{h} S{sq}x{sk} | " + " | ".join(cells))
    print("geomean | " + " | ".join(
        f"{math.exp(sum(map(math.log, r)) / len(r)):.3f}" if r else "-" for r in ratios.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
