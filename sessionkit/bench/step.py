"""The bench step's parts: option parsing, result rows and speedups, the CSV, the text table and
the sampling rule of one config. The step itself (``sessionkit step bench``, which times our
attention kernel against SDPA and its backends) is :mod:`sessionkit.steps.bench`.

Every implementation runs on the same inputs in the same run, interleaved. Each config is visited
in several passes spread over the run (:mod:`~sessionkit.bench.passes`), and by default the GPU
rests as long as it works between batches of samples (``--cooldown 1``): under sustained load an
H100 sits at its power cap, where the clock it holds for a given config differs by up to 8 % from
one run to the next; below the cap it stays at full boost and medians repeat within 1-2 %.

Results and every raw sample go to ``bench_results`` / ``bench_samples``; the bf16 matmul ceiling
is measured once per session (metric ``matmul_bf16_tflops``, subject ``ceiling``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..attention import IMPLS, REGISTRY, SDPA_IMPLS, AttentionConfig, implementation, tflops
from ..errors import UsageError
from .stats import StopRule

DEFAULT_TIME_LIMIT_S = 150.0
DEFAULT_PREHEAT_S = 45.0
DEFAULT_PASSES = 3
MAX_PASSES = 20
DEFAULT_COOLDOWN = 1.0
MAX_COOLDOWN = 10.0
MAX_CONFIG_S = 6.0  # per config, all passes together
CSV_COLUMNS = ["implementation", "dtype", "batch_size", "num_heads", "seq_len_q", "seq_len_k",
               "head_dim", "causal", "num_heads_k", "causal_alignment", "latency_ms", "iqr_ms", "samples", "tflops", "pct_peak",
               "memory_mb", "throttled_samples", "speedup_vs_sdpa", "speedup_vs_best", "passes",
               "pass_spread_pct", "sm_clock_mhz", "status", "note"]


def parse_impls(values) -> list[str] | None:
    """``--impl`` values (repeatable, comma separated) -> implementation names; None = all."""
    names = []
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip().lower()
            if part:
                names.append(implementation(part).name)
    return list(dict.fromkeys(names)) or None


def parse_preheat(value) -> float:
    """``--preheat``: a duration, or 0 (in any unit: ``0ms``, ``0.0s``) or off to skip; default when
    not given."""
    import re

    from ..timefmt import parse_duration

    if value is None or str(value).strip() == "":
        return DEFAULT_PREHEAT_S
    text = str(value).strip().lower()
    if text in ("0", "off", "no", "none") or re.fullmatch(
            r"(?:0+(?:\.0+)?\s*(?:ms|min|s|m|h|d)\s*)+", text):
        return 0.0
    return parse_duration(value)


def session_ceiling(db, session_id: str) -> float | None:
    """The matmul ceiling already measured in this session, if any."""
    row = db.execute(
        "SELECT m.value FROM metrics m JOIN steps s ON s.id = m.step_id "
        "WHERE s.session_id = ? AND m.key = 'matmul_bf16_tflops' AND m.subject = 'ceiling' "
        "AND m.value IS NOT NULL ORDER BY s.seq DESC, m.id DESC LIMIT 1", [session_id]).fetchone()
    return row[0] if row else None


def result_rows(config: AttentionConfig, runs, *, ceiling: float | None) -> list[dict]:
    """bench_results rows (without step_id) for one config, speedups filled in."""
    from .passes import DRIFT_NOTE_PCT, median_clock, pass_spread_pct
    from .timing import summarize_samples

    rows = []
    for run in runs:
        passes = len(set(run.passes)) if run.passes else (1 if run.samples else 0)
        row = {"impl": run.name, **config.as_row(), "latency_ms": None, "iqr_ms": None,
               "samples": len(run.samples), "tflops": None, "pct_peak": None,
               "memory_mb": run.memory_mb, "throttled_samples": sum(run.throttled),
               "speedup_vs_sdpa": None, "speedup_vs_best": None, "status": run.status,
               "note": run.note or None, "launches_per_sample": run.launches,
               "max_abs_err": run.max_abs_err, "stop_reason": run.stop_reason or None,
               "passes": passes, "pass_spread_pct": None, "sm_clock_mhz": median_clock(run)}
        if run.status == "ok" and run.samples:
            stats = summarize_samples(run.samples, run.throttled, run.reasons)
            row["latency_ms"], row["iqr_ms"] = stats["latency_ms"], stats["iqr_ms"]
            row["tflops"] = tflops(config.flops, stats["latency_ms"])
            if ceiling and row["tflops"] is not None:
                row["pct_peak"] = 100.0 * row["tflops"] / ceiling
            notes = [row["note"]]
            if stats["used_slowed"]:
                notes.append("slowed down (heat or hardware) most of the time: median of all")
            elif stats["left_out"]:
                notes.append(f"{stats['left_out']} samples under a heat or hardware slowdown "
                             "left out")
            spread = pass_spread_pct(run)
            row["pass_spread_pct"] = spread
            if spread is not None and spread > DRIFT_NOTE_PCT:
                notes.append(f"per-pass medians differ by {spread:.1f} %")
            row["note"] = "; ".join(filter(None, notes)) or None
        rows.append(row)
    fill_speedups(rows)
    return rows


def fill_speedups(rows: list[dict]) -> None:
    """speedup_vs_sdpa = SDPA default latency / this one; speedup_vs_best uses the fastest SDPA
    implementation that ran (default or a backend)."""
    by_impl = {r["impl"]: r for r in rows if r["status"] == "ok" and r["latency_ms"]}
    sdpa = by_impl.get("sdpa")
    sdpa_lat = [r["latency_ms"] for name, r in by_impl.items() if name in SDPA_IMPLS]
    best = min(sdpa_lat) if sdpa_lat else None
    for row in rows:
        if row["status"] != "ok" or not row["latency_ms"]:
            continue
        if sdpa:
            row["speedup_vs_sdpa"] = sdpa["latency_ms"] / row["latency_ms"]
        if best:
            row["speedup_vs_best"] = best / row["latency_ms"]


def csv_row(row: dict) -> dict:
    out = {col: row.get(col) for col in CSV_COLUMNS}
    out["implementation"] = row["impl"]
    return out


def check_csv_target(path: str | Path) -> None:
    """Refuse, before anything is timed, a CSV path that write_csv could not write or must not
    write: what every ``-o`` output refuses (:func:`sessionkit.atomic.check_output`: the session
    database or one of its files, a dangling symbolic link, a path below one, links in a loop),
    then a place under a file or in a folder this user cannot write (the nearest folder that
    exists). A folder given as the path is refused earlier, by the option's parser
    (steps.typed.file_path). Raises :class:`~sessionkit.errors.SessionkitError` (one line; a
    :class:`~sessionkit.errors.UsageError` for the last two)."""
    from ..atomic import check_output

    check_output(path)
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write one line per (implementation, config) to ``path`` (its folders made), whole or not at
    all, as every ``-o`` output is written (:func:`sessionkit.atomic.write_atomic`): a full disk or
    Ctrl-C keeps the file that was there. Raises :class:`~sessionkit.errors.UsageError` (one line)
    when it cannot be written, and for a path :func:`check_csv_target` refuses."""
    import io

    from ..atomic import write_atomic
    from ..errors import SessionkitError

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(csv_row(row))
    try:
        return write_atomic(path, text.getvalue(), make_parents=True)
    except SessionkitError as exc:
        raise UsageError(str(exc)) from None


def step_rows(db, step_id: str) -> list[dict]:
    return [dict(r) for r in db.query(
        "SELECT * FROM bench_results WHERE step_id = ? ORDER BY id", [step_id])]


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok" and row["tflops"] is not None:
        return f"{row['tflops']:.0f}"
    return {"wrong": "WRONG", "unsupported": "n/a", "error": "err"}.get(row["status"], "-")


def results_table(rows: list[dict]) -> str:
    """Compact text table: TFLOP/s per implementation for each config, ours' speedup last."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    configs: dict[AttentionConfig, dict] = {}
    for r in rows:
        configs.setdefault(AttentionConfig.from_row(r), {})[r["impl"]] = r
    width = max([len("config (TFLOP/s)")] + [len(c.label) for c in configs])
    head = f"{'config (TFLOP/s)':<{width}} " + " ".join(f"{REGISTRY[i].short:>6}" for i in impls)
    if "ours" in impls:
        head += "  ours/sdpa"
    lines = [head]
    for config, by in configs.items():
        line = f"{config.label:<{width}} " + " ".join(f"{_cell(by.get(i)):>6}" for i in impls)
        ours = by.get("ours")
        if "ours" in impls:
            ratio = ours.get("speedup_vs_sdpa") if ours else None
            line += f"  {ratio:9.2f}x" if ratio else f"  {'-':>10}"
        lines.append(line)
    return "\n".join(lines)


def noise_metrics(rows: list[dict]) -> dict[str, tuple[float | None, str]]:
    """How steady the GPU was over a run, from its result rows: the median per-pass spread, the
    share of samples at a throttle reason and the median SM clock, over the rows that timed."""
    from .stats import median

    ok = [r for r in rows if r["status"] == "ok" and r["samples"]]
    spreads = [r["pass_spread_pct"] for r in ok if r.get("pass_spread_pct") is not None]
    clocks = [r["sm_clock_mhz"] for r in ok if r.get("sm_clock_mhz")]
    samples = sum(r["samples"] for r in ok)
    throttled = sum(r["throttled_samples"] or 0 for r in ok)
    return {
        "pass_spread_median_pct": (median(spreads) if spreads else None, "%"),
        "throttled_sample_share": (throttled / samples if samples else None, "fraction"),
        "sm_clock_median_mhz": (median(clocks) if clocks else None, "MHz"),
    }


def stop_rule(budget_s: float, passes: int = 1) -> StopRule:
    """The sampling rule of one visit to a config given its time budget; the minimum sample
    count (30 per config) is shared by the passes."""
    passes = max(1, passes)
    return StopRule(target_rel=0.002, min_samples=max(10, -(-30 // passes)),
                    max_samples=max(100, 5000 // passes), time_limit_s=budget_s * 0.8,
                    min_time_s=min(1.0, budget_s * 0.4))


def bench_config(timer, torch, config: AttentionConfig, impls, rule: StopRule, *, deadline: float,
                 first: bool, known=None):
    """Time ``impls`` on one config: their ImplRuns with the raw samples.

    ``first`` warms the GPU longer (the first config of a run); a later pass over the config
    (``known``: its runs so far) warms briefly, as the GPU is already loaded, and reuses what
    they learned."""
    from . import timing

    guess_ms = config.flops / 300e12 * 1e3
    set_bytes = config.input_bytes
    count = timing.input_sets_for(set_bytes, timing.launches_for(guess_ms))
    sets = timing.make_input_sets(torch, config, timer.device, count)
    if first:
        warm, cap = 0.5, 2.0
    elif known:
        warm, cap = 0.05, 0.2
    else:
        warm, cap = 0.1, 0.3
    try:
        return timer.measure(impls, sets, rule=rule, deadline=deadline, warmup_s=warm,
                             warmup_cap_s=cap, check=timing.make_check(torch, config),
                             memory_set_bytes=set_bytes, known=known)
    finally:
        del sets
