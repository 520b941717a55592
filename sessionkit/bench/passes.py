"""Measure a grid in several passes, each config visited once per pass.

Under a power cap a GPU's clocks wander by a few per cent over seconds to minutes, with the chip's
temperature and with the power drawn by whatever ran just before. A config measured in one window
of a second or two inherits whichever clock state that window happened to catch, and two runs of
the same grid then disagree by more than the noise inside each window suggests. Visiting every
config in several short windows spread over the whole run (the grid in order, then in reverse
order, ...) and taking the median over all of its samples averages over the run's clock states
instead of drawing one.

Each sample keeps its pass and the SM clock read after it, and each result row keeps the spread of
its per-pass medians, so drift is shown rather than hidden.

Every visit's samples are committed as they are taken: the first visit inserts the config's
``bench_results`` rows, later visits add their samples and update the rows. A run stopped after
any visit keeps everything measured until then.
"""

from __future__ import annotations

import time
from typing import Callable

from ..attention import AttentionConfig
from .stats import median
from .timing import ImplRun

STATUS_RANK = {"ok": 0, "unsupported": 1, "error": 2, "wrong": 3}
DRIFT_NOTE_PCT = 3.0  # per-pass medians further apart than this get a note on the row
MIN_VISIT_S = 0.3


def visit_order(n_configs: int, passes: int) -> list[tuple[int, int]]:
    """(pass, config index) in visiting order: even passes forward, odd passes backward."""
    order = []
    for p in range(passes):
        indices = range(n_configs) if p % 2 == 0 else range(n_configs - 1, -1, -1)
        order.extend((p, i) for i in indices)
    return order


def per_sample(values, n: int) -> list:
    """``values`` cut or padded with None to one entry per sample (runs built without NVML, or
    by hand, may carry fewer)."""
    return (list(values) + [None] * n)[:n]


def merge_run(merged: ImplRun | None, new: ImplRun, pass_no: int) -> ImplRun:
    """Fold one visit's run into the runs of earlier passes (``merged``, or None on the first).

    Samples, throttle flags and clocks are appended with their pass number. A failure in a later
    pass wins over an earlier success: a kernel that is wrong once is wrong, and its row then
    reports no speed."""
    n = len(new.samples)
    clocks, reasons = per_sample(new.clocks, n), per_sample(new.reasons, n)
    if merged is None:
        new.clocks, new.reasons = clocks, reasons
        new.passes = [pass_no] * n
        return new
    if STATUS_RANK.get(new.status, 2) > STATUS_RANK.get(merged.status, 2):
        merged.status = new.status
        merged.note = f"pass {pass_no + 1}: {new.note}" if new.note else f"pass {pass_no + 1}"
    merged.samples.extend(new.samples)
    merged.throttled.extend(new.throttled)
    merged.clocks.extend(clocks)
    merged.reasons.extend(reasons)
    merged.passes.extend([pass_no] * n)
    if new.stop_reason:
        merged.stop_reason = new.stop_reason
    errors = [e for e in (merged.max_abs_err, new.max_abs_err) if e is not None]
    merged.max_abs_err = max(errors) if errors else None
    if merged.memory_mb is None:
        merged.memory_mb = new.memory_mb
    return merged


def pass_medians(run: ImplRun) -> list[float]:
    """The median of each pass's samples, in pass order (passes without samples left out)."""
    by_pass: dict[int, list[float]] = {}
    passes = run.passes or [0] * len(run.samples)
    for p, s in zip(passes, run.samples):
        by_pass.setdefault(p, []).append(s)
    return [median(by_pass[p]) for p in sorted(by_pass)]


def pass_spread_pct(run: ImplRun) -> float | None:
    """(largest - smallest per-pass median) / overall median, in %; None with fewer than 2."""
    medians = pass_medians(run)
    if len(medians) < 2 or not run.samples:
        return None
    overall = median(run.samples)
    return 100.0 * (max(medians) - min(medians)) / overall if overall > 0 else None


def median_clock(run: ImplRun) -> float | None:
    clocks = [c for c in run.clocks if c is not None]
    return median(clocks) if clocks else None


class ResultStore:
    """Writes bench_results rows and their samples, visit by visit, one transaction each."""

    def __init__(self, db, step_id: str):
        self.db = db
        self.step_id = step_id
        self.ids: dict[tuple, int] = {}  # (config, impl) -> bench_results.id
        self.stored: dict[int, int] = {}  # bench_results.id -> samples already written

    def save(self, config: AttentionConfig, rows: list[dict], runs) -> None:
        by_name = {run.name: run for run in runs}
        db = self.db
        with db.conn:
            for row in rows:
                key = (config, row["impl"])
                result_id = self.ids.get(key)
                if result_id is None:
                    result_id = db["bench_results"].insert({"step_id": self.step_id, **row}).last_pk
                    self.ids[key] = result_id
                    self.stored[result_id] = 0
                else:
                    db["bench_results"].update(result_id, row)
                run = by_name[row["impl"]]
                start = self.stored[result_id]
                n = len(run.samples)
                passes = run.passes or [0] * n
                clocks, reasons = per_sample(run.clocks, n), per_sample(run.reasons, n)
                db["bench_samples"].insert_all(
                    {"result_id": result_id, "idx": i, "latency_ms": run.samples[i],
                     "throttled": int(run.throttled[i]), "pass": passes[i],
                     "sm_clock_mhz": clocks[i], "clock_reasons": reasons[i]}
                    for i in range(start, n))
                self.stored[result_id] = len(run.samples)


Visit = Callable[[AttentionConfig, dict, float, bool], list[ImplRun]]


def measure_grid(store: ResultStore, configs: list[AttentionConfig], visit: Visit, *, passes: int,
                 deadline: float, max_visit_s: float, rows_for, progress=None,
                 clock=time.monotonic) -> list[dict]:
    """Visit every config ``passes`` times and store as it goes; returns the final rows.

    ``visit(config, known, budget_s, first)`` measures one config for about ``budget_s`` and
    returns its ImplRuns; ``known`` maps implementation name to the merged run of earlier passes
    (empty on the first). ``rows_for(config, runs)`` turns merged runs into bench_results rows.
    Each visit gets an equal share of the time left, between MIN_VISIT_S and ``max_visit_s``.
    """
    merged: dict[int, dict[str, ImplRun]] = {}
    final: dict[int, list[dict]] = {}
    order = visit_order(len(configs), passes)
    for v, (p, i) in enumerate(order):
        config = configs[i]
        if progress is not None:
            label = config.label + (f" (pass {p + 1}/{passes})" if passes > 1 else "")
            progress.update(v + 1, len(order), label)
        left = len(order) - v
        budget = min(max_visit_s, max(MIN_VISIT_S, (deadline - clock()) / left))
        known = merged.get(i, {})
        runs = visit(config, known, budget, v == 0)
        merged[i] = {run.name: merge_run(known.get(run.name), run, p) for run in runs}
        for name, run in known.items():  # an implementation this visit did not return
            merged[i].setdefault(name, run)
        final[i] = rows_for(config, list(merged[i].values()))
        store.save(config, final[i], merged[i].values())
    return [row for i in range(len(configs)) if i in final for row in final[i]]
