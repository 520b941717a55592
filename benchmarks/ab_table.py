"""Print the A/B of one session's bench steps as text: for each config, ours / SDPA (TFLOP/s) per
bench step, each step headed by the nvcc flags of the build it timed, and each step's geomean.

    python benchmarks/ab_table.py DB [SESSION]

Reads the database only (sessionkit's own reader): used by ``gpu_check.sh ab`` so that the figures
also reach a terminal or a log when the report's files do not come back.
"""

from __future__ import annotations

import math
import sys


def main(argv: list[str]) -> int:
    from sessionkit.errors import SessionkitError

    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        return _table(argv[0], argv[1] if len(argv) > 1 else "last")
    except SessionkitError as exc:  # a missing, foreign or damaged database, an unknown session
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _table(db_path: str, session_ref: str) -> int:
    from sessionkit.db import open_db
    from sessionkit.errors import SessionkitError
    from sessionkit.sessions import get_session, session_steps

    db = open_db(db_path, read_only=True)
    session = get_session(db, session_ref)
    steps = [s for s in session_steps(db, session["id"]) if s["name"] == "bench"]
    if not steps:
        raise SessionkitError(f"session {session['number']} has no bench step")
    columns, table = [], {}
    for step in steps:
        summary = step.get("summary") if isinstance(step.get("summary"), dict) else {}
        columns.append((step["id"], summary.get("nvcc_flags") or "plain"))
        for row in db.query("SELECT impl, dtype, head_dim, causal, batch_size, num_heads, "
                            "seq_len_q, seq_len_k, tflops FROM bench_results WHERE step_id = ?",
                            [step["id"]]):
            key = (row["dtype"], row["head_dim"], row["causal"], row["batch_size"],
                   row["num_heads"], row["seq_len_q"], row["seq_len_k"])
            table.setdefault(key, {}).setdefault(step["id"], {})[row["impl"]] = row["tflops"]
    print("config | " + " | ".join(flags for _, flags in columns))
    ratios = {sid: [] for sid, _ in columns}
    for key in sorted(table):
        dtype, d, causal, b, h, sq, sk = key
        cells = []
        for sid, _ in columns:
            got = table[key].get(sid, {})
            ours, sdpa = got.get("ours"), got.get("sdpa")
            if ours and sdpa:
                ratios[sid].append(ours / sdpa)
                cells.append(f"{ours:.0f}/{sdpa:.0f}={ours / sdpa:.3f}")
            else:
                cells.append("-")
        mask = "causal" if causal else "full"
        print(f"{dtype} D{d} {mask} B{b} H{h} S{sq}x{sk} | " + " | ".join(cells))
    print("geomean | " + " | ".join(
        f"{math.exp(sum(map(math.log, r)) / len(r)):.3f}" if r else "-" for r in ratios.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
