"""Measuring a grid in passes: visiting order, merging, per-pass spread, storage as it goes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionkit.attention import AttentionConfig
from sessionkit.bench import step as bench_step
from sessionkit.bench.passes import (ResultStore, measure_grid, merge_run, pass_medians,
                                     pass_spread_pct, visit_order)
from sessionkit.bench.timing import ImplRun

A = AttentionConfig(1, 8, 512, 512, 64, "fp16", False)
B = AttentionConfig(4, 16, 4096, 4096, 128, "bf16", True)
C = AttentionConfig(2, 16, 2048, 2048, 128, "bf16", False)


def _run(name, samples, *, status="ok", note="", clocks=None, err=None, reasons=None):
    return ImplRun(name, status=status, note=note, samples=list(samples),
                   throttled=[bool(r) for r in reasons] if reasons else [False] * len(samples),
                   reasons=list(reasons or []), clocks=list(clocks or []), launches=2,
                   memory_mb=10.0, max_abs_err=err, estimate_ms=1.0, stop_reason="time")


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Updates:
    def __init__(self):
        self.lines = []

    def update(self, done, total, label=""):
        self.lines.append((done, total, label))


def test_visit_order_alternates_direction():
    assert visit_order(3, 1) == [(0, 0), (0, 1), (0, 2)]
    assert visit_order(3, 3) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0),
                                 (2, 0), (2, 1), (2, 2)]
    assert visit_order(0, 3) == []


def test_merge_appends_samples_with_their_pass_and_clock():
    merged = merge_run(None, _run("ours", [1.0, 1.1], clocks=[1980.0]), 0)
    assert merged.passes == [0, 0] and merged.clocks == [1980.0, None]
    assert merged.reasons == [None, None]
    merged = merge_run(merged, _run("ours", [1.2, 1.3, 1.4], clocks=[1755.0] * 3, err=0.01), 1)
    assert merged.samples == [1.0, 1.1, 1.2, 1.3, 1.4]
    assert merged.passes == [0, 0, 1, 1, 1]
    assert merged.clocks == [1980.0, None, 1755.0, 1755.0, 1755.0]
    assert merged.max_abs_err == 0.01 and merged.status == "ok"


def test_a_later_failure_wins():
    merged = merge_run(None, _run("ours", [1.0] * 5, err=0.001), 0)
    merged = merge_run(merged, _run("ours", [], status="wrong", note="max abs error 0.9",
                                    err=0.9), 1)
    assert merged.status == "wrong" and merged.note == "pass 2: max abs error 0.9"
    assert merged.max_abs_err == 0.9
    rows = bench_step.result_rows(A, [merged, _run("sdpa", [2.0] * 5)], ceiling=None)
    assert rows[0]["latency_ms"] is None and rows[0]["speedup_vs_sdpa"] is None
    # an unsupported verdict does not override a wrong one
    merged = merge_run(merged, _run("ours", [], status="unsupported", note="x"), 2)
    assert merged.status == "wrong"


def test_pass_medians_and_spread():
    run = ImplRun("sdpa", samples=[1.0, 1.0, 1.0, 1.06, 1.06, 1.06, 1.03],
                  passes=[0, 0, 0, 1, 1, 1, 2])
    assert pass_medians(run) == [1.0, 1.06, 1.03]
    assert pass_spread_pct(run) == pytest.approx(100 * 0.06 / 1.03)
    assert pass_spread_pct(ImplRun("x", samples=[1.0, 2.0], passes=[0, 0])) is None
    assert pass_spread_pct(ImplRun("x")) is None


def test_result_rows_report_passes_spread_clock_and_drift_note():
    steady = ImplRun("sdpa", samples=[1.0, 1.01, 1.0, 1.01], throttled=[False] * 4,
                     passes=[0, 0, 1, 1], clocks=[1980.0, 1980.0, 1900.0, None])
    drifting = ImplRun("ours", samples=[1.0, 1.0, 1.1, 1.1], throttled=[False] * 4,
                       passes=[0, 0, 1, 1])
    by = {r["impl"]: r for r in bench_step.result_rows(B, [steady, drifting], ceiling=None)}
    assert by["sdpa"]["passes"] == 2 and by["sdpa"]["sm_clock_mhz"] == 1980.0
    assert by["sdpa"]["pass_spread_pct"] == pytest.approx(0.0) and by["sdpa"]["note"] is None
    assert by["ours"]["pass_spread_pct"] == pytest.approx(100 * 0.1 / 1.05)
    assert "per-pass medians differ by 9.5 %" in by["ours"]["note"]
    assert by["ours"]["sm_clock_mhz"] is None  # no clock without NVML


def _fake_visit(calls, *, values=None):
    """A visit that records its arguments and returns two implementations' runs."""

    def visit(config, known, budget, first):
        calls.append((config, {k: v.launches for k, v in known.items()}, budget, first))
        n = len(calls)
        base = (values or {}).get(config, 1.0)
        return [_run("ours", [base + 0.01 * n] * 3, clocks=[1900.0 + n] * 3, reasons=[4, 0, 4]),
                _run("sdpa", [2 * base] * 4)]

    return visit


def _rows_for(config, runs):
    return bench_step.result_rows(config, runs, ceiling=None)


def test_measure_grid_stores_every_visit_and_merges(db, make_context):
    ctx = make_context(name="bench")
    calls, clock, updates = [], FakeClock(), Updates()
    rows = measure_grid(ResultStore(db, ctx.step_id), [A, B], _fake_visit(calls), passes=3,
                        deadline=60.0, max_visit_s=2.0, rows_for=_rows_for, progress=updates,
                        clock=clock)
    # order: A B | B A | A B; the first visit of a config knows nothing, later ones know it
    assert [c[0] for c in calls] == [A, B, B, A, A, B]
    assert [bool(c[1]) for c in calls] == [False, False, True, True, True, True]
    assert calls[2][1] == {"ours": 2, "sdpa": 2}
    assert [c[3] for c in calls] == [True] + [False] * 5
    # 60 s over 6 visits is 10 s each, capped at 2 s per visit
    assert all(c[2] == 2.0 for c in calls)
    assert updates.lines[0] == (1, 6, A.label + " (pass 1/3)")
    assert updates.lines[3] == (4, 6, A.label + " (pass 2/3)")

    stored = bench_step.step_rows(db, ctx.step_id)
    assert len(stored) == len(rows) == 4
    assert [(r["impl"], r["seq_len_q"]) for r in stored] == [("ours", 512), ("sdpa", 512),
                                                             ("ours", 4096), ("sdpa", 4096)]
    for r in stored:
        assert r["passes"] == 3
        samples = list(db.query("SELECT idx, pass, latency_ms, sm_clock_mhz FROM bench_samples "
                                "WHERE result_id = ? ORDER BY idx", [r["id"]]))
        assert [s["idx"] for s in samples] == list(range(r["samples"]))
        assert [s["pass"] for s in samples] == sorted(s["pass"] for s in samples)
        assert {s["pass"] for s in samples} == {0, 1, 2}
    ours_a = [r for r in stored if r["impl"] == "ours" and r["seq_len_q"] == 512][0]
    # A was visited 1st, 4th and 5th: its samples are 1.01, 1.04 and 1.05, three each
    assert ours_a["samples"] == 9 and ours_a["latency_ms"] == pytest.approx(1.04)
    assert ours_a["pass_spread_pct"] == pytest.approx(100 * 0.04 / 1.04)
    assert ours_a["sm_clock_mhz"] == 1904.0
    assert ours_a["throttled_samples"] == 6  # at the power cap: counted, not left out
    reasons = [r for (r,) in db.execute("SELECT clock_reasons FROM bench_samples WHERE result_id = ?"
                                        " ORDER BY idx", [ours_a["id"]])]
    assert reasons == [4, 0, 4] * 3
    assert ours_a["speedup_vs_sdpa"] == pytest.approx(2.0 / 1.04)


def test_budget_is_the_time_left_shared_by_the_visits_left(db, make_context):
    ctx = make_context(name="bench")
    clock, calls = FakeClock(), []
    visit = _fake_visit(calls)

    def slow_visit(config, known, budget, first):
        clock.t += 8.0
        return visit(config, known, budget, first)

    measure_grid(ResultStore(db, ctx.step_id), [A, B, C], slow_visit, passes=2, deadline=30.0,
                 max_visit_s=10.0, rows_for=_rows_for, clock=clock)
    budgets = [c[2] for c in calls]
    # 30 s for 6 visits, then 22 s for 5, 14 s for 4, 6 s for 3; past the deadline, the floor
    assert budgets == pytest.approx([5.0, 4.4, 3.5, 2.0, 0.3, 0.3])


def test_interrupted_grid_keeps_what_was_measured(db, make_context):
    ctx = make_context(name="bench")
    calls = []
    visit = _fake_visit(calls)

    def visit_then_stop(config, known, budget, first):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return visit(config, known, budget, first)

    with pytest.raises(KeyboardInterrupt):
        measure_grid(ResultStore(db, ctx.step_id), [A, B], visit_then_stop, passes=2,
                     deadline=60.0, max_visit_s=2.0, rows_for=_rows_for, clock=FakeClock())
    stored = bench_step.step_rows(db, ctx.step_id)
    assert len(stored) == 4
    by = {(r["impl"], r["seq_len_q"]): r for r in stored}
    assert by[("ours", 4096)]["samples"] == 6 and by[("ours", 4096)]["passes"] == 2
    assert by[("ours", 512)]["samples"] == 3 and by[("ours", 512)]["passes"] == 1
    total = db.execute("SELECT COUNT(*) FROM bench_samples").fetchone()[0]
    assert total == sum(r["samples"] for r in stored)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(passes=st.integers(1, 4), n_configs=st.integers(1, 3),
       counts=st.lists(st.integers(0, 6), min_size=12, max_size=12))
def test_stored_samples_are_exactly_the_merged_ones(db, make_context, passes, n_configs, counts):
    ctx = make_context(name="bench")
    configs = [A, B, C][:n_configs]
    taken: dict[tuple, list[float]] = {}
    seen = iter(range(10_000))

    def visit(config, known, budget, first):
        k = next(seen)
        samples = [float(k) + j / 10 for j in range(counts[k % len(counts)])]
        taken.setdefault((config, "sdpa"), []).extend(samples)
        return [_run("sdpa", samples)]

    measure_grid(ResultStore(db, ctx.step_id), configs, visit, passes=passes, deadline=10.0,
                 max_visit_s=1.0, rows_for=_rows_for, clock=FakeClock())
    for r in bench_step.step_rows(db, ctx.step_id):
        config = AttentionConfig(r["batch_size"], r["num_heads"], r["seq_len_q"], r["seq_len_k"],
                             r["head_dim"], r["dtype"], bool(r["causal"]))
        got = [s[0] for s in db.execute("SELECT latency_ms FROM bench_samples WHERE result_id = ? "
                                        "ORDER BY idx", [r["id"]])]
        assert got == taken[(config, "sdpa")]
        assert r["samples"] == len(got)


def test_our_kernel_refusing_its_arguments_is_unsupported_and_other_errors_propagate():
    """Our op's argument checks (a ValueError for a head dim it has no kernel for, a TypeError for
    a dtype) mark ours unsupported on that config, like a backend's RuntimeError, and the bench
    goes on; the same exceptions from any other implementation are bugs and propagate."""
    import types

    from sessionkit.bench.timing import Impl, Timer

    def raising(exc):
        def launch(*_args):
            raise exc
        return launch

    fake_cuda = types.SimpleNamespace(synchronize=lambda *_a: None)
    timer = object.__new__(Timer)  # no GPU: nothing here reaches an event or the flush
    timer.torch, timer.device, timer.graph = types.SimpleNamespace(cuda=fake_cuda), None, False
    sdpa = Impl("sdpa", raising(RuntimeError("No available kernel. Aborting execution.")), True)
    for exc, words in ((ValueError("flash_attention: head_dim 80 is not supported; supported "
                                   "head dims are 64, 96, 128, 256"), "head_dim 80"),
                       (TypeError("flash_attention: q has dtype float32; supported dtypes are "
                                  "float16, bfloat16"), "dtype float32")):
        runs = {run.name: run for run in timer.measure([sdpa, Impl("ours", raising(exc))], [()],
                                                       rule=None, deadline=0.0)}
        assert runs["ours"].status == "unsupported" and words in runs["ours"].note
        assert runs["sdpa"].status == "unsupported" and not runs["ours"].samples
    for name in ("sdpa_flash", "sdpa"):
        bug = Impl(name, raising(TypeError("launcher() got an unexpected keyword argument")),
                   name == "sdpa")
        with pytest.raises(TypeError, match="unexpected keyword"):
            timer.measure([bug], [()], rule=None, deadline=0.0)
