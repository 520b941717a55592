"""Every step instance is in the report, in order; bench steps side by side; old summaries render.

The two bench steps (plain, then --graph) and the two profile steps (ours, then SDPA) run through
the real steps and the runner, on the stand-ins of tests/step_standins.py, so the rows, summaries
and metrics are what the steps write.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from step_standins import GRAPH_SPEEDUP, fake_bench_gpu, fake_ncu

from sessionkit.report import session_report
from sessionkit.report.data import config_label, report_data
from sessionkit.runner import run_step
from sessionkit.steps import REGISTRY, get_step
from sessionkit.steps.bench import BenchStep
from sessionkit.steps.profile import ProfileStep

CONFIGS = ("1,8,512,512,64,fp16,0", "2,8,1024,1024,128,bf16,1")
PROFILE_CONFIG = "4,16,4096,4096,128,bf16,0"


def section(data: dict, name: str) -> dict:
    return next(s for s in data["sections"] if s["name"] == name)


@pytest.fixture
def two_of_each(db, session, monkeypatch, tmp_path):
    """A session that ran bench, bench --graph, profile (ours), profile (sdpa), in that order."""
    fake_bench_gpu(monkeypatch)
    fake_ncu(tmp_path, monkeypatch)
    bench = {"configs": CONFIGS, "preheat_s": "0", "passes": "1"}
    rows = [run_step(db, session, BenchStep(), bench),
            run_step(db, session, BenchStep(), {**bench, "graph": True}),
            run_step(db, session, ProfileStep(), {"kernel": "ours", "config": PROFILE_CONFIG}),
            run_step(db, session, ProfileStep(), {"kernel": "sdpa", "config": PROFILE_CONFIG})]
    assert [r["status"] for r in rows] == ["passed"] * 4, [r["message"] for r in rows]
    return session


def ours_tflops(db, step_id: str) -> dict[str, float]:
    return {config_label(dict(r)): r["tflops"] for r in db.query(
        "SELECT * FROM bench_results WHERE step_id = ? AND impl = 'ours' ORDER BY id", [step_id])}


def test_every_bench_and_profile_step_is_shown_in_order(db, two_of_each):
    data = report_data(db, two_of_each["number"])
    benches, profiles = section(data, "bench")["instances"], section(data, "profile")["instances"]
    assert [(b["seq"], b["summary"].graph) for b in benches] == [(1, False), (2, True)]
    assert [(p["seq"], p["summary"].kernel) for p in profiles] == [(3, "ours"), (4, "sdpa")]
    assert data["bench"]["seq"] == 2  # the last bench: the one MLflow logs

    text = session_report(db, two_of_each["number"]).text
    headings = ["### Step 1: grid custom\n", "### Step 2: grid custom, CUDA-graph replays\n",
                f"### Step 3: kernel `ours`, {PROFILE_CONFIG}\n",
                f"### Step 4: kernel `sdpa`, {PROFILE_CONFIG}\n"]
    at = [text.index(h) for h in headings]
    assert at == sorted(at)
    assert text.index("## Benchmark") < at[0] < at[1] < text.index("## Profile") < at[2] < at[3]
    # each profile instance has its verdict and its own metrics table
    profile_part = text[at[2]:text.index("\n## ", at[3])]
    assert profile_part.count("**Verdict:**") == 2 and profile_part.count("| metric | value |") == 2
    # each bench instance has its own results table
    bench_part = text[at[0]:at[2]]
    assert bench_part.count("| config | ours (ms) | SDPA (ms) |") == 2


def test_bench_steps_side_by_side_from_the_database(db, two_of_each):
    steps = {r["seq"]: r["id"] for r in db.query("SELECT seq, id FROM steps WHERE name = 'bench'")}
    first, second = ours_tflops(db, steps[1]), ours_tflops(db, steps[2])
    assert list(first) == list(second) and len(first) == 2
    ratios = [second[label] / first[label] for label in first]
    assert all(r == pytest.approx(GRAPH_SPEEDUP, rel=0.05) for r in ratios)  # the stand-in's graphs

    sbs = section(report_data(db, two_of_each["number"]), "bench")["side_by_side"]
    assert sbs["impl"] == "ours" and [s["seq"] for s in sbs["steps"]] == [1, 2]
    assert [(r["label"], r["tflops"]) for r in sbs["rows"]] == \
        [(label, [first[label], second[label]]) for label in first]
    assert [r["ratios"][0] for r in sbs["rows"]] == pytest.approx(ratios)
    assert sbs["geomeans"][0] == pytest.approx((ratios[0] * ratios[1]) ** 0.5)

    text = session_report(db, two_of_each["number"]).text
    assert "| config | step 1 TFLOP/s | step 2 (graph) TFLOP/s | step 2 / step 1 |" in text
    for label, ratio in zip(first, ratios):
        assert f"| {label} | {first[label]:,.1f} | {second[label]:,.1f} | {ratio:.3f}x |" in text
    assert f"| geometric mean | | | {(ratios[0] * ratios[1]) ** 0.5:.3f}x |" in text

    # change a row, the table changes: the figures are read, not kept
    with db.conn:
        db.execute("UPDATE bench_results SET tflops = tflops * 2 WHERE step_id = ? AND impl = 'ours' "
                   "AND seq_len_q = 512", [steps[2]])
    label = next(iter(first))
    after = session_report(db, two_of_each["number"]).text
    assert f"| {label} | {first[label]:,.1f} | {2 * second[label]:,.1f} | {2 * ratios[0]:.3f}x |" in after


def test_each_bench_step_gets_its_own_plots(db, two_of_each, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the 'plots' extra)")
    out = tmp_path / "out" / "r.md"
    report = session_report(db, two_of_each["number"], out=out)
    names = sorted(p.name for p in report.images)
    assert [n for n in names if "tflops" in n] == [
        "r-step1-tflops-bf16-d128-causal.png", "r-step1-tflops-fp16-d64-full.png",
        "r-step2-tflops-bf16-d128-causal.png", "r-step2-tflops-fp16-d64-full.png"]
    assert "![Step 2: TFLOP/s vs sequence length: bf16, D128, causal]" in out.read_text()


# --------------------------------------------------------------------------------------------
# Summaries written by older sessionkit releases (keys missing, unknown keys, not an object)


def test_every_summary_type_reads_an_old_summary():
    for name in REGISTRY:
        summary_type = get_step(name).summary_type
        if summary_type is None:
            continue
        empty = summary_type()
        for stored in ({}, "", "[1, 2]", "not json", None, {"a_key_from_elsewhere": 1}):
            assert summary_type.from_json(stored) == empty, (name, stored)
        full = summary_type.from_json(json.dumps(empty.to_json()))
        assert full == empty and set(empty.to_json()) == set(summary_type.units())


OLD_SUMMARIES = [  # (step name, status, summary as an older sessionkit stored it)
    ("preflight", "passed", {}),
    ("build", "failed", {"log": "/cache/build.log"}),
    ("correctness", "passed", {"seed": 7}),
    ("bench", "passed", {"grid": "quick", "configs": 1, "removed_long_ago": True}),
    ("bench", "passed", []),
    ("profile", "failed", {"kernel": "ours", "config": "1,8,128,128,64,fp16,0"}),
    ("profile", "passed", {"verdict": "memory-bound"}),
]


def test_a_session_of_old_summaries_renders(db, session, make_context):
    for name, status, summary in OLD_SUMMARIES:
        context = make_context(name=name)
        if name == "bench":  # a result row of the same shape as then
            context.db["bench_results"].insert({
                "step_id": context.step_id, "impl": "ours", "dtype": "fp16", "batch_size": 1,
                "num_heads": 8, "seq_len_q": 1024, "seq_len_k": 1024, "head_dim": 64, "causal": 0,
                "latency_ms": 0.2, "tflops": 10.7, "status": "ok", "speedup_vs_sdpa": 1.1})
        with db.conn:
            db.execute("UPDATE steps SET status = ?, summary = ?, ended_at = started_at, "
                       "duration_s = 1 WHERE id = ?", [status, json.dumps(summary), context.step_id])
    text = session_report(db, session["number"]).text
    assert "None" not in text and "{{" not in text
    assert "### Step 4: grid quick\n" in text and "### Step 5\n" in text  # the second bench
    assert "1 configuration (grid quick); our kernel against SDPA" in text
    assert "Latencies are medians. SM clock" in text  # no passes, no cooldown stored then
    assert "The build step (step 2) **failed**" in text
    assert "The profile step (step 6) failed without a verdict." in text
    assert "**Verdict:** memory-bound\n" in text
    side = re.search(r"\| config \| step 4 TFLOP/s \| step 5 TFLOP/s \| step 5 / step 4 \|", text)
    assert side is not None and "| fp16 B1 H8 S1024 D64 full | 10.7 | 10.7 | 1.000x |" in text


# Values of the wrong type in a stored summary: a release that stored a field differently, or a
# merged database from elsewhere.
ODD_VALUES = [5, "text", [1], {"a": 1}, True, float("nan"), [[1, 2, 3]], ["ab"], [None], -1e308]


def test_a_summary_value_of_the_wrong_type_reads_as_the_default():
    from sessionkit.steps.bench import BenchSummary
    from sessionkit.steps.preflight import PreflightSummary
    from sessionkit.steps.profile import ProfileSummary

    bench = BenchSummary.from_json({"cooldown": "1", "passes": True, "graph": "yes", "grid": 5,
                                    "impls": ["ours", 1], "elapsed_s": 3, "preheat": [1]})
    assert (bench.cooldown, bench.passes, bench.graph, bench.grid, bench.preheat) == (None,) * 5
    assert bench.impls == ["ours"] and bench.elapsed_s == 3  # an int where a float is declared
    checks = PreflightSummary.from_json({"checks": [1, {"name": "gpu"}, "x"], "failed": "2"})
    assert checks.checks == [{"name": "gpu"}] and checks.failed is None
    assert ProfileSummary.from_json({"stalls": 5, "suggestions": 3}) == ProfileSummary()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([n for n in REGISTRY if get_step(n).summary_type is not None]),
       data=st.data())
def test_any_stored_summary_reads_as_values_of_the_declared_types(name, data):
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    declared = {  # the annotations the built-in summaries use, and what each admits
        "str | None": lambda v: isinstance(v, str),
        "int | None": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float | None": number, "bool | None": lambda v: isinstance(v, bool),
        "dict | None": lambda v: isinstance(v, dict), "list | None": lambda v: isinstance(v, list),
        "list[str] | None": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "list[dict] | None": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
    }
    summary_type = get_step(name).summary_type
    fields = list(summary_type.units())
    stored = data.draw(st.one_of(
        JSON_VALUES, st.dictionaries(st.sampled_from(fields), JSON_VALUES, max_size=len(fields))))
    summary = summary_type.from_json(json.dumps(stored))
    annotations = {}
    for cls in reversed(summary_type.__mro__):
        annotations.update(getattr(cls, "__annotations__", {}))
    for field in fields:
        value = getattr(summary, field)
        assert value is None or declared[annotations[field]](value), (field, value)


def test_summaries_of_the_wrong_types_render(db, session, make_context):
    names = [name for name in REGISTRY if get_step(name).summary_type is not None]
    for value in ODD_VALUES:
        for name in names:
            context = make_context(name=name)
            if name == "bench":
                context.db["bench_results"].insert({
                    "step_id": context.step_id, "impl": "ours", "dtype": "fp16", "batch_size": 1,
                    "num_heads": 8, "seq_len_q": 1024, "seq_len_k": 1024, "head_dim": 64,
                    "causal": 0, "latency_ms": 0.2, "tflops": 10.7, "status": "ok",
                    "speedup_vs_sdpa": 1.1})
            stored = {field: value for field in get_step(name).summary_type.units()}
            with db.conn:
                db.execute("UPDATE steps SET status = 'passed', summary = ?, ended_at = started_at,"
                           " duration_s = 1 WHERE id = ?", [json.dumps(stored), context.step_id])
    data = report_data(db, session["number"])
    for name in ("preflight", "build", "correctness", "bench", "profile"):
        assert len(section(data, name)["instances"]) == len(ODD_VALUES), name
    text = session_report(db, session["number"]).text
    assert text.count("| config | ours (ms) | SDPA (ms) |") == len(ODD_VALUES)


def test_a_step_still_running_is_shown_with_what_it_recorded_so_far(db, session, make_context):
    """A report taken while bench and correctness run (from another terminal) showed 'No bench
    step in this session.' and hid the results already stored."""
    bench = make_context(name="bench")
    bench.db["bench_results"].insert({
        "step_id": bench.step_id, "impl": "ours", "dtype": "fp16", "batch_size": 1, "num_heads": 8,
        "seq_len_q": 1024, "seq_len_k": 1024, "head_dim": 64, "causal": 0, "latency_ms": 0.2,
        "tflops": 10.7, "status": "ok", "speedup_vs_sdpa": 1.1})
    make_context(name="correctness")  # running, nothing recorded yet
    assert [r["status"] for r in db.query("SELECT status FROM steps ORDER BY seq")] == \
        ["running", "running"]
    data = report_data(db, session["number"])
    assert [i["status"] for i in section(data, "bench")["instances"]] == ["running"]
    assert data["bench"] is None  # the finished bench that MLflow logs and compare reads: none yet
    text = session_report(db, session["number"]).text
    assert "No bench step in this session." not in text
    assert "No correctness step in this session." not in text
    assert "The bench step (step 1) is still running: what it recorded so far." in text
    assert "| fp16 B1 H8 S1024 D64 full | 0.200 |" in text
    assert "The correctness step (step 2) is still running, so far without recording any " \
        "configuration." in text
    assert "Nothing to compare yet: the bench step is still running." in text


def test_bench_steps_name_the_build_they_timed(db, two_of_each, monkeypatch):
    """An A/B session (one bench step per -D switch): each bench step records its kernel build
    and experiment flags, and the report says which step timed which build."""
    from sessionkit.kernels import build

    class Loaded:
        key = "abc123"

    monkeypatch.setattr(build, "loaded", lambda: Loaded())
    monkeypatch.setenv("SESSIONKIT_NVCC_FLAGS", "-DSK_SM90_PINGPONG=0")
    row = run_step(db, two_of_each, BenchStep(), {"configs": CONFIGS, "preheat_s": "0",
                                                  "passes": "1"})
    assert row["status"] == "passed", row["message"]
    summary = row["summary"] if isinstance(row["summary"], dict) else json.loads(row["summary"])
    assert summary["build_key"] == "abc123" and summary["nvcc_flags"] == "-DSK_SM90_PINGPONG=0"
    text = session_report(db, two_of_each["number"]).text
    assert f"### Step {row['seq']}: grid custom, kernels built with `-DSK_SM90_PINGPONG=0`\n" in text
    assert f"step {row['seq']} `-DSK_SM90_PINGPONG=0` TFLOP/s |" in text
    assert "### Step 1: grid custom\n" in text  # the plain build's step says nothing more
