"""``sessionkit history``: the table of all sessions, the trend, and its constant number of queries."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from click.testing import CliRunner
from fixtures_db import NOW, assert_snapshot, build_fixture_db, sid
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.db import open_db
from sessionkit.report import history_report
from sessionkit.report.history import history_data, trend


@pytest.fixture
def fdb(tmp_path):
    return build_fixture_db(tmp_path / "fixture.db")


def test_history_snapshot(fdb):
    assert_snapshot("history.md", history_report(fdb, now=NOW).text)


def test_history_rows_come_from_the_tables(fdb):
    rows = {r["number"]: r for r in history_data(fdb, now=NOW)["sessions"]}
    assert (rows[1]["passed"], rows[1]["failed"]) == (4, 0)
    assert (rows[2]["passed"], rows[2]["failed"], rows[2]["interrupted"]) == (5, 1, 0)
    assert rows[3]["interrupted"] == 1
    assert rows[1]["correctness"] == {"status": "passed", "configs": 4, "passed": 4,
                                      "worst_ratio": pytest.approx(0.45)}
    assert rows[2]["correctness"]["status"] == "failed" and rows[2]["correctness"]["passed"] == 3
    assert rows[3]["correctness"] is None
    assert rows[2]["best_speedup"] == pytest.approx(5.0 / 4.2)
    assert rows[1]["cost_usd"] == pytest.approx(1.0) and rows[4]["cost_usd"] is None
    assert rows[4]["open"] and rows[4]["duration_s"] == pytest.approx(3600)


def test_history_changes_with_rows(fdb):
    before = history_report(fdb, now=NOW).text
    with fdb.conn:
        fdb.execute("UPDATE bench_results SET speedup_vs_sdpa = 3.21 WHERE impl = 'ours' AND step_id IN "
                    "(SELECT id FROM steps WHERE session_id = ?) AND seq_len_q = 1024 AND causal = 0", [sid(1)])
        fdb.execute("UPDATE sessions SET outcome = 'Rewritten outcome' WHERE id = ?", [sid(3)])
    after = history_report(fdb, now=NOW).text
    assert "3.21x" not in before and "| 3.21x |" in after
    assert "Rewritten outcome" in after


def test_latest_bench_step_of_a_session_counts(fdb):
    """A second bench step in session 1 replaces the first in the history's speedups."""
    with fdb.conn:
        step = str(uuid.uuid4())
        fdb["steps"].insert({"id": step, "session_id": sid(1), "seq": 9, "name": "bench", "status": "passed",
                             "started_at": "2026-01-05T09:15:00+00:00", "duration_s": 10.0,
                             "host": "h", "pid": 1})
        fdb["bench_results"].insert({"step_id": step, "impl": "ours", "dtype": "bf16", "batch_size": 1,
                                     "num_heads": 1, "seq_len_q": 64, "seq_len_k": 64, "head_dim": 64,
                                     "causal": 0, "latency_ms": 1.0, "speedup_vs_sdpa": 1.5, "status": "ok"})
    row = history_data(fdb, now=NOW)["sessions"][0]
    assert (row["best_speedup"], row["geomean_speedup"], row["bench_configs"]) == (1.5, 1.5, 1)


def test_empty_history(tmp_path):
    db = open_db(tmp_path / "empty.db", create=True)
    text = history_report(db, now=NOW).text
    assert text.splitlines()[-1] == "No sessions yet. Start one with: `sessionkit start -m/--objective TEXT`."


def _grow(db, extra: int) -> None:
    """Add ``extra`` ended sessions with a few steps each."""
    start = db.execute("SELECT MAX(number) FROM sessions").fetchone()[0] + 1
    with db.conn:
        for n in range(start, start + extra):
            s_id = str(uuid.uuid4())
            db["sessions"].insert({"id": s_id, "number": n, "name": f"s{n}", "objective": "o",
                                   "status": "passed", "started_at": "2026-02-01T00:00:00+00:00",
                                   "ended_at": "2026-02-01T01:00:00+00:00"})
            for seq, name in enumerate(("preflight", "build", "correctness"), 1):
                db["steps"].insert({"id": str(uuid.uuid4()), "session_id": s_id, "seq": seq, "name": name,
                                    "status": "passed", "started_at": "2026-02-01T00:00:00+00:00",
                                    "duration_s": 5.0, "host": "h", "pid": 1})


def _count_queries(db, fn) -> int:
    statements = []
    db.conn.set_trace_callback(statements.append)
    try:
        fn()
    finally:
        db.conn.set_trace_callback(None)
    return len(statements)


def test_history_query_count_does_not_grow_with_sessions(fdb):
    # the first call rolls up every step; after 40 more sessions, the next rolls up those
    small = _count_queries(fdb, lambda: history_data(fdb, now=NOW))
    _grow(fdb, 40)
    large = _count_queries(fdb, lambda: history_data(fdb, now=NOW))
    assert large == small <= 30
    # with nothing new, the rollups are only checked
    steady = _count_queries(fdb, lambda: history_data(fdb, now=NOW))
    assert len(history_data(fdb, now=NOW)["sessions"]) == 44
    assert steady <= 6


def test_trend_compares_last_five_with_five_before(fdb):
    _grow(fdb, 12)
    t = history_data(fdb, now=NOW)["trend"]
    assert t["window"] == 5
    # Sessions 1-3 and 5-16 are ended; 4 is open and left out.
    assert t["recent"] == [12, 13, 14, 15, 16] and t["before"] == [7, 8, 9, 10, 11]
    duration = next(f for f in t["figures"] if f["key"] == "duration_s")
    assert duration["recent"] == duration["before"] == 3600 and duration["direction"] == "same"


def test_trend_window_shrinks_and_skips_open_sessions(fdb):
    t = history_data(fdb, now=NOW)["trend"]
    assert (t["window"], t["recent"], t["before"]) == (1, [3], [2])
    figures = {f["key"]: f for f in t["figures"]}
    # 30 min against 70, but one session a side is no evidence of a change
    assert (figures["duration_s"]["direction"], figures["duration_s"]["note"]) == (
        "untested", "too few sessions for a test")
    assert figures["geomean_speedup"]["recent"] is None
    assert figures["geomean_speedup"]["direction"] is None


def _row(number, geo, dur, open_=False):
    return {"number": number, "open": open_, "geomean_speedup": geo, "best_speedup": geo,
            "duration_s": dur, "cost_usd": None, "passed": 1, "steps": 2, "correctness": None}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0.1, 10)), st.floats(1, 1e5), st.booleans()),
                max_size=25))
def test_trend_groups_are_disjoint_and_ordered(items):
    rows = [_row(i + 1, g, d, o) for i, (g, d, o) in enumerate(items)]
    t = trend(rows)
    ended = [r["number"] for r in rows if not r["open"]]
    if len(ended) < 2:
        assert t is None
        return
    k = min(5, len(ended) // 2)
    assert t["recent"] == ended[-k:] and t["before"] == ended[-2 * k:-k]
    for f in t["figures"]:
        assert f["direction"] in (None, "untested", "same", "better", "worse")


def test_cli_history_text_and_json(tmp_path):
    build_fixture_db(os.environ["SESSIONKIT_DB"])
    from sessionkit.cli import cli

    runner = CliRunner()
    text = runner.invoke(cli, ["history"], catch_exceptions=False)
    assert text.exit_code == 0 and text.output.startswith("# Session history")
    data = json.loads(runner.invoke(cli, ["history", "--json"], catch_exceptions=False).output)
    assert [s["number"] for s in data["sessions"]] == [1, 2, 3, 4]
    out = tmp_path / "h.md"
    written = runner.invoke(cli, ["history", "-o", str(out)], catch_exceptions=False)
    assert written.output.strip() == f"Wrote {out}" and out.read_text().startswith("# Session history")


def _trend_rows(durations, correctness=None):
    rows = []
    for i, d in enumerate(durations):
        row = _row(i + 1, None, d)
        row["correctness"] = {"status": correctness[i]} if correctness else None
        rows.append(row)
    return rows


def test_trend_needs_a_significant_change_to_call_it_better_or_worse():
    clear = trend(_trend_rows([100, 101, 102, 103, 104, 50, 51, 52, 53, 54]))
    duration = next(f for f in clear["figures"] if f["key"] == "duration_s")
    assert duration["direction"] == "better" and duration["note"].startswith("p=")
    noisy = trend(_trend_rows([100, 60, 102, 55, 104, 50, 101, 52, 103, 54]))
    duration = next(f for f in noisy["figures"] if f["key"] == "duration_s")
    assert duration["direction"] == "same" and duration["note"].startswith("not significant")
    tiny = trend(_trend_rows([100, 101, 102, 103, 104, 99, 100, 101, 102, 103]))
    duration = next(f for f in tiny["figures"] if f["key"] == "duration_s")
    assert duration["direction"] == "same"


def test_a_skipped_correctness_step_is_not_a_run():
    rows = _trend_rows([60, 60], correctness=["passed", "skipped"])
    figures = {f["key"]: f for f in trend(rows)["figures"]}
    corr = figures["correctness_passed_share"]
    assert corr["recent"] is None and corr["before"] == 1.0 and corr["direction"] is None


def test_history_says_dash_where_there_is_no_data(fdb):
    from sessionkit.report import history_report

    text = history_report(fdb, now=NOW).text
    assert "not comparable" not in text
    assert "| geomean speedup vs SDPA (median) | - | 0.95x | - |" in text
