"""``sessionkit compare``: per config and implementation, verdicts from raw samples."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sessionkit.attention import AttentionConfig
from sessionkit.bench import compare as cmp
from sessionkit.bench import step as bench_step
from sessionkit.bench.passes import ResultStore
from sessionkit.bench.timing import ImplRun
from sessionkit.cli import cli
from sessionkit.errors import SessionkitError, UsageError
from sessionkit.sessions import end_session, start_session

BIG = AttentionConfig(4, 16, 4096, 4096, 128, "bf16", True)
SMALL = AttentionConfig(1, 8, 512, 512, 64, "fp16", False)


def _samples(center, n=40):
    return [center * (1 + 0.002 * ((i * 7) % 11 - 5)) for i in range(n)]


def _bench(db, name, timings, status=None):
    """A session with one bench step; timings = {(config, impl): center ms}."""
    import os
    import socket
    import uuid

    from sessionkit.timefmt import now_iso

    for open_one in db.query("SELECT * FROM sessions WHERE status = 'open'"):
        end_session(db, dict(open_one), outcome="done")
    session = start_session(db, name, objective="compare test")
    step_id = str(uuid.uuid4())
    db["steps"].insert({"id": step_id, "session_id": session["id"], "seq": 1, "name": "bench",
                        "started_at": now_iso(), "host": socket.gethostname(),
                        "pid": os.getpid(), "status": "passed"})
    status = status or {}
    for config in {c for c, _ in timings}:
        runs = []
        for (c, impl), center in timings.items():
            if c != config:
                continue
            st = status.get((c, impl), "ok")
            runs.append(ImplRun(impl, status=st, samples=_samples(center) if st == "ok" else [],
                                throttled=[False] * (40 if st == "ok" else 0)))
        rows = bench_step.result_rows(config, runs, ceiling=None)
        ResultStore(db, step_id).save(config, rows, runs)
    return session


@pytest.fixture
def two(db):
    a = _bench(db, "before", {(BIG, "ours"): 1.0, (BIG, "sdpa"): 0.8, (SMALL, "ours"): 0.02,
                              (SMALL, "sdpa"): 0.03, (SMALL, "sdpa_flash"): 0.05})
    b = _bench(db, "after", {(BIG, "ours"): 1.2, (BIG, "sdpa"): 0.801, (SMALL, "ours"): 0.015,
                             (SMALL, "sdpa"): 0.03, (SMALL, "sdpa_flash"): 0.05},
               status={(SMALL, "sdpa_flash"): "wrong"})
    return a, b


def test_defaults_are_the_last_two_benchmarked_sessions(db, two):
    a, b = two
    result = cmp.compare_sessions(db)
    assert result["a"]["number"] == a["number"] and result["b"]["number"] == b["number"]
    verdicts = [(r["config"], r["impl"], r["verdict"]) for r in result["rows"]]
    # regressions first: broken, then slower; then faster; then same
    assert verdicts[0] == (SMALL.label, "sdpa_flash", "BROKEN")
    assert verdicts[1] == (BIG.label, "ours", "SLOWER")
    assert verdicts[2] == (SMALL.label, "ours", "FASTER")
    assert {v for _, _, v in verdicts[3:]} == {"SAME"}
    assert result["regressions"] == 2 and result["improvements"] == 1
    slower = result["rows"][1]
    assert slower["ratio"] == pytest.approx(1.2, rel=1e-3) and slower["p_value"] < 1e-6


def test_defaults_put_the_session_started_first_as_a(db, two):
    """A session brought in by merge is numbered as it arrives: here the last-numbered session
    started before the other one. It is A, the earlier, in the default and the one-argument
    comparison (A was the lower number, so the table read every change backwards)."""
    a, b = two
    db.execute("UPDATE sessions SET started_at = ? WHERE id = ?", ["2020-01-01T00:00:00+00:00", b["id"]])
    db.conn.commit()
    result = cmp.compare_sessions(db)
    assert (result["a"]["number"], result["b"]["number"]) == (b["number"], a["number"])
    assert next(r for r in result["rows"] if r["impl"] == "ours" and r["config"] == BIG.label)[
        "ratio"] == pytest.approx(1 / 1.2, rel=1e-3)
    one = cmp.compare_sessions(db, str(a["number"]))
    assert (one["a"]["number"], one["b"]["number"]) == (b["number"], a["number"])
    explicit = cmp.compare_sessions(db, str(a["number"]), str(b["number"]))  # as given
    assert (explicit["a"]["number"], explicit["b"]["number"]) == (a["number"], b["number"])


def test_min_effect_turns_small_changes_into_same(db, two):
    result = cmp.compare_sessions(db, min_effect=0.5)
    assert [r["verdict"] for r in result["rows"]].count("SAME") == 4
    assert result["regressions"] == 1  # BROKEN does not depend on the effect size


def test_explicit_sessions_and_one_argument(db, two):
    a, b = two
    c = _bench(db, "third", {(BIG, "ours"): 1.0})
    result = cmp.compare_sessions(db, str(a["number"]), "after")
    assert (result["a"]["name"], result["b"]["name"]) == ("before", "after")
    one = cmp.compare_sessions(db, str(a["number"]))
    assert one["b"]["number"] == c["number"]
    assert len(one["only_in_a"]) == 4


def test_errors(db):
    with pytest.raises(SessionkitError, match="need two sessions with bench results"):
        cmp.compare_sessions(db)
    s = _bench(db, "only", {(BIG, "ours"): 1.0})
    with pytest.raises(UsageError, match="two different sessions"):
        cmp.compare_sessions(db, str(s["number"]), str(s["number"]))
    with pytest.raises(UsageError, match="min-effect"):
        cmp.compare_sessions(db, min_effect=2)


def test_cli_table_json_and_fail_on_regression(db, two):
    runner = CliRunner()
    result = runner.invoke(cli, ["compare"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "BROKEN" in lines[2] and "SLOWER" in lines[3]
    assert "2 regression(s)" in result.output
    as_json = runner.invoke(cli, ["compare", "--json"])
    data = json.loads(as_json.output)
    assert data["regressions"] == 2 and len(data["rows"]) == 5
    failing = runner.invoke(cli, ["compare", "--fail-on-regression"])
    assert failing.exit_code == 1
    assert "Error: 2 regression(s)" in failing.output
    fine = runner.invoke(cli, ["compare", "--fail-on-regression", "--min-effect", "0.5"])
    assert fine.exit_code == 1  # the broken one remains
    bad = runner.invoke(cli, ["compare", "nope"])
    assert bad.exit_code != 0 and "Error:" in bad.output and "Traceback" not in bad.output


def test_clock_note_shows_when_the_power_state_moved(db, two):
    a, b = two
    for session, mhz in ((a, 1830.0), (b, 1980.0)):
        db.execute("UPDATE bench_results SET sm_clock_mhz = ? WHERE impl = 'ours' AND step_id IN "
                   "(SELECT id FROM steps WHERE session_id = ?)", [mhz, session["id"]])
    db.execute("UPDATE bench_results SET sm_clock_mhz = 1980 WHERE impl = 'sdpa'")
    result = cmp.compare_sessions(db)
    by = {(r["config"], r["impl"]): r for r in result["rows"]}
    assert by[(BIG.label, "ours")]["clock_note"] == "SM clock 1830 -> 1980 MHz"
    assert by[(BIG.label, "sdpa")]["clock_note"] == ""
    text = cmp.format_comparison(result)
    assert "SLOWER  (SM clock 1830 -> 1980 MHz)" in text
    assert "2 row(s) ran at SM clocks 2 % or more apart" in text
    assert cmp.clock_note(1900, 1930) == "" and cmp.clock_note(None, 1980) == ""


def _add_bench_step(db, session, seq, timings, *, graph=False):
    """Another bench step in ``session``; ``graph`` records it as a ``bench --graph`` step."""
    import os
    import socket
    import uuid

    from sessionkit.timefmt import now_iso

    step_id = str(uuid.uuid4())
    db["steps"].insert({"id": step_id, "session_id": session["id"], "seq": seq, "name": "bench",
                        "started_at": now_iso(), "host": socket.gethostname(),
                        "pid": os.getpid(), "status": "passed",
                        "options": json.dumps({"grid": None, "graph": graph})})
    for config in {c for c, _ in timings}:
        runs = [ImplRun(impl, status="ok", samples=_samples(center), throttled=[False] * 40)
                for (c, impl), center in timings.items() if c == config]
        ResultStore(db, step_id).save(config, bench_step.result_rows(config, runs, ceiling=None),
                                      runs)
    return step_id


def test_every_bench_step_of_a_session_counts_the_latest_winning(db, two):
    """A session that benched the whole grid, then one config again, compares on every config;
    the re-measured one with its latest numbers."""
    a, b = two
    _add_bench_step(db, b, 2, {(SMALL, "ours"): 0.03, (SMALL, "sdpa"): 0.03})
    result = cmp.compare_sessions(db, a["number"], b["number"])
    by = {(r["config"], r["impl"]): r for r in result["rows"]}
    assert (BIG.label, "ours") in by and by[(BIG.label, "ours")]["verdict"] == "SLOWER"
    assert by[(SMALL.label, "ours")]["verdict"] == "SLOWER"  # 0.02 -> 0.03 ms, the second step
    assert len(result["b"]["step_ids"]) == 2 and result["b"]["step_id"] == result["b"]["step_ids"][-1]


def test_graph_timings_are_compared_only_with_graph_timings(db, two):
    a, b = two
    _add_bench_step(db, b, 2, {(BIG, "ours"): 0.1}, graph=True)  # much faster: graph replays
    eager = cmp.compare_sessions(db, a["number"], b["number"])
    big = next(r for r in eager["rows"] if r["config"] == BIG.label and r["impl"] == "ours")
    assert big["verdict"] == "SLOWER" and not eager["graph"]
    with pytest.raises(SessionkitError, match="no CUDA-graph bench results"):
        cmp.compare_sessions(db, a["number"], b["number"], graph=True)
    _add_bench_step(db, a, 2, {(BIG, "ours"): 0.2}, graph=True)
    graphed = cmp.compare_sessions(db, a["number"], b["number"], graph=True)
    assert [(r["config"], r["impl"], r["verdict"]) for r in graphed["rows"]] == [
        (BIG.label, "ours", "FASTER")]
    result = CliRunner().invoke(cli, ["compare", str(a["number"]), str(b["number"]), "--graph",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["graph"] is True


def test_a_session_with_graph_timings_only_says_how_to_compare_them(db):
    a = _bench(db, "eager", {(BIG, "ours"): 1.0})
    end_session(db, a, outcome="done")
    b = start_session(db, "graphs", objective="graph only")
    _add_bench_step(db, b, 1, {(BIG, "ours"): 0.5}, graph=True)
    with pytest.raises(SessionkitError, match="CUDA-graph timings only.*--graph"):
        cmp.compare_sessions(db, a["number"], b["number"])


def test_a_graph_comparison_without_graph_timings_names_the_bench_that_makes_them(db, two):
    """`compare --graph` against a session with eager timings only points to comparing without
    --graph; against one with no timings at all, to `step bench --graph` (a plain `step bench`
    would make no CUDA-graph timings)."""
    a, b = two
    with pytest.raises(SessionkitError, match=r"eager timings only: compare them with "
                                              r"'sessionkit compare A B'"):
        cmp.compare_sessions(db, a["number"], b["number"], graph=True)
    end_session(db, b, outcome="done")
    empty = start_session(db, "nothing", objective="no bench")
    with pytest.raises(SessionkitError, match=r"run 'sessionkit step bench --graph' in it"):
        cmp.compare_sessions(db, empty["number"], a["number"], graph=True)
    with pytest.raises(SessionkitError, match=r"run 'sessionkit step bench' in it"):
        cmp.compare_sessions(db, a["number"], empty["number"])
