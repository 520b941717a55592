"""Session reports: snapshots of the fixture DB, traceability of every figure, plots and the CLI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_db import NOW, assert_snapshot, build_fixture_db, sid, stid
from hypothesis import given
from hypothesis import strategies as st

from sessionkit.report import session_report
from sessionkit.report.data import config_label, report_data
from sessionkit.report.render import f_cell, f_delta


@pytest.fixture
def fdb(tmp_path):
    db = build_fixture_db(tmp_path / "fixture.db")
    yield db
    db.conn.close()


@pytest.fixture
def cli_db():
    """The fixture DB at $SESSIONKIT_DB, where the CLI looks."""
    db = build_fixture_db(os.environ["SESSIONKIT_DB"])
    yield db
    db.conn.close()


def invoke(*args):
    from sessionkit.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Snapshots


@pytest.mark.parametrize("number, name", [(1, "baseline"), (2, "full"), (3, "interrupted"),
                                          (4, "empty")])
def test_report_snapshot(fdb, number, name):
    assert_snapshot(f"report-{name}.md", session_report(fdb, number, now=NOW).text)


def test_report_sections_all_present_and_no_jinja_left(fdb):
    text = session_report(fdb, 4, now=NOW).text
    for heading in ("## Objective and outcome", "## Steps", "## Environment", "## Build",
                    "## Correctness", "## Benchmark", "## Telemetry", "## Cost",
                    "## Compared with the previous benchmark", "## Profile", "## Patterns applied",
                    "## Plots"):
        assert heading in text
    assert "{{" not in text and "{%" not in text and "None" not in text


def test_empty_sections_say_so_in_one_line(fdb):
    text = session_report(fdb, 4, now=NOW).text
    sections = text.split("\n## ")[2:]  # after the header and the objective
    for section in sections:
        heading, *body = [line for line in section.splitlines() if line.strip()]
        if heading in ("Cost",):
            continue  # the cost table always shows the rates, set or not
        assert len(body) == 1, (heading, body)
    assert "rate not set" in text and "$0.00" not in text


def test_interrupted_and_failed_steps_show_as_such(fdb):
    interrupted = session_report(fdb, 3, now=NOW).text
    assert "| 2 | build | 2m00s | 1m10s | **INTERRUPTED** (exit 143) | -50 s | interrupted by SIGTERM |" in interrupted
    failed = session_report(fdb, 2, now=NOW).text
    assert "**FAILED** (exit 1)" in failed
    assert "3 passed, **1 failed**" in failed


def test_comparison_lists_regressions_first(fdb):
    cmp = report_data(fdb, 2, now=NOW)["comparison"]
    assert cmp["previous"] == {"number": 1, "name": "baseline"}
    ours = [(r["config"], r["verdict"]) for r in cmp["rows"] if r["impl"] == "ours"]
    assert ours[0] == ("bf16 B4 H16 S1024 D128 full", "SLOWER")
    assert cmp["rows"][0]["impl"] == "ours" and cmp["rows"][0]["verdict"] == "SLOWER"
    assert (cmp["regressions"], cmp["improvements"]) == (1, 2)
    assert {r["verdict"] for r in cmp["rows"] if r["impl"] != "ours"} == {"SAME"}
    assert report_data(fdb, 1, now=NOW)["comparison"] == {"previous": None, "rows": []}
    text = session_report(fdb, 2, now=NOW).text
    assert "| bf16 B4 H16 S1024 D128 full | ours | 0.500 | 0.600 | 1.200 |" in text


def test_comparison_reports_a_broken_kernel(fdb):
    with fdb.conn:
        fdb.execute("UPDATE bench_results SET status = 'wrong', note = 'max error 0.5' WHERE step_id = ? "
                    "AND impl = 'ours' AND seq_len_q = 4096 AND causal = 1", [stid(2, 4)])
    cmp = report_data(fdb, 2, now=NOW)["comparison"]
    assert cmp["rows"][0]["verdict"] == "BROKEN" and cmp["regressions"] == 2
    assert "| **broken**: B is wrong: max error 0.5 |" in session_report(fdb, 2, now=NOW).text


def test_environment_changes_since_previous_session(fdb):
    env = report_data(fdb, 2, now=NOW)["environment"]
    changes = {c["key"]: (c["old"], c["new"]) for c in env["previous"]["changes"]}
    assert changes["driver"] == ("580.82.07", "580.95.05")
    assert report_data(fdb, 1, now=NOW)["environment"]["previous"] is None


def test_default_session_is_the_open_one_then_the_last(fdb):
    assert report_data(fdb, None, now=NOW)["session"]["number"] == 4
    with fdb.conn:
        fdb.execute("UPDATE sessions SET status = 'passed', ended_at = ?, outcome = 'done' WHERE number = 4",
                    [NOW])
        fdb.execute("UPDATE sessions SET number = 9 WHERE number = 2")
    assert report_data(fdb, None, now=NOW)["session"]["number"] == 9
    assert report_data(fdb, "last", now=NOW)["session"]["number"] == 9
    assert report_data(fdb, sid(1), now=NOW)["session"]["number"] == 1


# --------------------------------------------------------------------------------------------
# Every figure comes from a row: change the row, the report changes.

S2 = sid(2)
BENCH2, BUILD2, CORR2, PROFILE2 = stid(2, 4), stid(2, 2), stid(2, 3), stid(2, 5)

TRACE_CASES = [
    ("UPDATE bench_results SET latency_ms = 0.777 WHERE step_id = ? AND impl = 'ours' AND seq_len_q = 1024 "
     "AND causal = 0", [BENCH2], "| bf16 B4 H16 S1024 D128 full | 0.777 |"),
    ("UPDATE bench_results SET speedup_vs_sdpa = 2.5 WHERE step_id = ? AND impl = 'ours' AND seq_len_q = 4096 "
     "AND causal = 1", [BENCH2], "best: 2.50x"),
    ("UPDATE bench_results SET tflops = 432.1, pct_peak = 56.9 WHERE step_id = ? AND impl = 'ours' "
     "AND seq_len_q = 4096 AND causal = 1", [BENCH2], "| 432 | 56.9 |"),
    ("UPDATE bench_results SET throttled_samples = 7 WHERE step_id = ? AND impl = 'ours' AND seq_len_q = 4096 "
     "AND causal = 1", [BENCH2], "| 7 | ok |"),
    ("UPDATE bench_results SET sm_clock_mhz = 1755 WHERE step_id = ? AND impl = 'ours' AND seq_len_q = 4096 "
     "AND causal = 1", [BENCH2], "| 1,755 | 1 | ok |"),
    ("UPDATE steps SET summary = json_set(summary, '$.passes', 5, '$.cooldown', 0) WHERE id = ?", [BENCH2],
     "medians over 5 passes per config, at sustained full load"),
    ("UPDATE bench_results SET latency_ms = 0.123 WHERE step_id = ? AND impl = 'sdpa_flash' "
     "AND seq_len_q = 1024 AND causal = 1", [BENCH2], "| 0.123 |"),
    ("UPDATE metrics SET value = 199 WHERE step_id = ? AND key = 'registers' "
     "AND subject = 'flash_fwd_bf16_hdim128_causal'", [BUILD2], "| flash_fwd_bf16_hdim128_causal | 199 |"),
    ("UPDATE metrics SET value = 77.7 WHERE step_id = ? AND key = 'build_time_s'", [BUILD2],
     "Build time 77.7 s"),
    ("UPDATE steps SET summary = json_set(summary, '$.sources_sha256', 'abcdef0123456789ff', "
     "'$.sources_files', 59) WHERE id = ?", [BUILD2],
     "Kernel sources: SHA-256 `abcdef0123456789` over 59 files under `csrc/`"),
    ("UPDATE metrics SET value = 4096 WHERE step_id = ? AND key = 'spill_load_bytes' "
     "AND subject = 'flash_fwd_bf16_hdim128_noncausal'", [BUILD2], "| 48 | 4,096 |"),
    ("UPDATE metrics SET value = 701 WHERE step_id = ? AND key = 'matmul_bf16_tflops'", [BENCH2],
     "ceiling: 701 TFLOP/s"),
    ("UPDATE metrics SET value = 555 WHERE step_id = ? AND key = 'power_mean_w'", [BENCH2],
     "| 4 | bench | 555 | 700 |"),
    ("UPDATE metrics SET value = 0.35 WHERE step_id = ? AND key = 'throttled_share'", [BENCH2], "35.0 %"),
    ("UPDATE metrics SET value = 81.5 WHERE step_id = ? AND key = 'tensor_pipe_pct'", [PROFILE2],
     "| tensor_pipe_pct | 81.5 % |"),
    ("UPDATE correctness_results SET max_err = 0.0333 WHERE step_id = ? AND idx = 3", [CORR2],
     "Worst error 3.33e-02"),
    ("UPDATE correctness_results SET passed = 1, failure = NULL WHERE step_id = ? AND idx = 3", [CORR2],
     "4 passed."),
    ("UPDATE steps SET duration_s = 301 WHERE id = ?", [BENCH2], "| 5m01s | passed | +1.0 s |"),
    ("UPDATE steps SET budget_s = 600 WHERE id = ?", [BENCH2], "| 10m00s | 5m40s | passed | -4m20s |"),
    ("UPDATE sessions SET gpu_rate_usd_per_h = 12 WHERE id = ?", [S2], "| GPU | $14.00 ($12.00/h) |"),
    ("UPDATE sessions SET ai_rate_usd_per_h = NULL WHERE id = ?", [S2], "| AI | rate not set |"),
    ("UPDATE sessions SET git_commit = 'cafe123' WHERE id = ?", [S2], "`cafe123`"),
    ("UPDATE sessions SET ended_at = '2026-01-06T16:00:00+00:00' WHERE id = ?", [S2], "| duration | 2h00m"),
    ("UPDATE env_snapshots SET driver_version = '590.1' WHERE session_id = ?", [S2], "| driver | 590.1 |"),
    ("UPDATE patterns_applied SET note = 'a new note' WHERE session_id = ? AND pattern_id = 'profile-first'",
     [S2], "Profile before optimizing: a new note"),
]


def test_cached_build_says_nothing_was_compiled(fdb):
    with fdb.conn:
        fdb.execute("DELETE FROM metrics WHERE step_id = ? AND key = 'build_time_s'", [BUILD2])
        fdb.execute("UPDATE steps SET summary = json_set(summary, '$.cached', json('true')) "
                    "WHERE id = ?", [BUILD2])
    text = session_report(fdb, 2, now=NOW).text
    assert "Loaded from the build cache: nothing was compiled (nvcc 13.0" in text
    assert "recorded no build time" not in text


@pytest.mark.parametrize("sql, args, expected", TRACE_CASES, ids=[c[2][:40] for c in TRACE_CASES])
def test_report_figures_trace_to_rows(fdb, sql, args, expected):
    before = session_report(fdb, 2, now=NOW).text
    assert expected not in before
    with fdb.conn:
        assert fdb.execute(sql, args).rowcount >= 1
    after = session_report(fdb, 2, now=NOW).text
    assert expected in after


def test_geomean_is_computed_from_the_rows(fdb):
    bench = report_data(fdb, 2, now=NOW)["bench"]
    speedups = [0.40 / 0.60, 5.00 / 4.20, 0.25 / 0.29, 2.80 / 2.40]
    expected = 1.0
    for s in speedups:
        expected *= s
    assert bench["geomean_speedup"] == pytest.approx(expected ** 0.25)
    assert bench["best_speedup"] == pytest.approx(5.00 / 4.20)


def test_bench_row_that_failed_is_shown_with_its_status(fdb):
    with fdb.conn:
        fdb.execute("UPDATE bench_results SET status = 'wrong', note = 'max error 0.5', speedup_vs_sdpa = NULL "
                    "WHERE step_id = ? AND impl = 'ours' AND seq_len_q = 1024 AND causal = 0", [BENCH2])
    text = session_report(fdb, 2, now=NOW).text
    assert "| wrong: max error 0.5 |" in text
    bench = report_data(fdb, 2, now=NOW)["bench"]
    assert bench["geomean_speedup"] == pytest.approx((5.00 / 4.20 * 0.25 / 0.29 * 2.80 / 2.40) ** (1 / 3))


# --------------------------------------------------------------------------------------------
# Plots


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_drawn_beside_the_report(fdb, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the 'plots' extra)")
    out = tmp_path / "out" / "session-2.md"
    result = session_report(fdb, 2, out=out, now=NOW)
    names = sorted(p.name for p in result.images)
    assert names == ["session-2-telemetry.png", "session-2-tflops-bf16-d128-causal.png",
                     "session-2-tflops-bf16-d128-full.png"]
    for image in result.images:
        assert image.parent == out.parent and _png(image)
        assert f"]({image.name})" in out.read_text()


def test_no_plots_when_nothing_to_plot(fdb, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the 'plots' extra)")
    result = session_report(fdb, 4, out=tmp_path / "r4.md", now=NOW)
    assert result.images == []
    assert "Nothing to plot: no benchmark results and no telemetry samples." in result.text


def test_without_matplotlib_the_report_says_how_to_get_plots(fdb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = session_report(fdb, 2, out=tmp_path / "r.md", now=NOW)
    assert result.images == []
    root = Path(__file__).resolve().parent.parent  # installed from this checkout
    assert f"Plots need matplotlib: `pip install -e '{root}[plots]'`" in result.text
    assert list(tmp_path.glob("*.png")) == []


def test_timeline_picks_the_longest_step_with_samples(fdb):
    timeline = report_data(fdb, 2, now=NOW)["timeline"]
    assert (timeline["step"], timeline["seq"], len(timeline["samples"])) == ("bench", 4, 30)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_report_prints_markdown(cli_db):
    result = invoke("report", "2")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Session 2: pipelined softmax\n")
    assert "Plots are drawn when the report is written to a file" in result.output
    # --no-plots on stdout says so, rather than how to get the plots
    result = invoke("report", "2", "--no-plots")
    assert "Plots were turned off (--no-plots)." in result.output
    assert "Plots are drawn when" not in result.output


def test_cli_report_writes_file(cli_db, tmp_path):
    result = invoke("report", "last", "-o", str(tmp_path / "rep" / "last.md"), "--no-plots")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"Wrote {tmp_path / 'rep' / 'last.md'}")
    assert "Plots were turned off (--no-plots)." in (tmp_path / "rep" / "last.md").read_text()


def test_cli_report_json(cli_db):
    result = invoke("report", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["session"]["name"] == "baseline"
    assert data["bench"]["configs"] == 4 and data["cost"]["ai_usd"] is None


@pytest.mark.parametrize("args", [["report", "1"], ["history"], ["patterns"]])
def test_json_with_output_writes_the_json_to_the_file(cli_db, tmp_path, args):
    """--json -o FILE writes what --json prints into FILE (it was ignored: the JSON went to the
    terminal and nothing to FILE), and no Markdown or plot beside it."""
    printed = invoke(*args, "--json")
    assert printed.exit_code == 0, printed.output
    target = tmp_path / "out" / "r.json"
    result = invoke(*args, "--json", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Wrote {target}"
    written, shown = json.loads(target.read_text()), json.loads(printed.output)
    # the same report (figures of the open session, and the time stamp, move between the two)
    assert written.keys() == shown.keys() and written
    for key in ("session", "sessions", "patterns"):
        if key in shown:
            assert json.dumps(written[key], sort_keys=True).count('"id"') == \
                json.dumps(shown[key], sort_keys=True).count('"id"')
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


@pytest.mark.parametrize("ref", ["99", "no-such-session"])
def test_cli_report_unknown_session_is_one_line(cli_db, ref):
    result = invoke("report", ref)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no session matches")


def test_cli_report_without_database_is_one_line(tmp_path):
    result = invoke("report")
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error:")
    assert "Traceback" not in result.output


def test_cli_report_unwritable_output_is_one_line(cli_db, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("report", "1", "-o", str(blocker / "r.md"), "--no-plots")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write") and len(result.output.strip().splitlines()) == 1


def test_infinite_figures_render(fdb):
    """A metric or result stored as +-inf (a division by a zero time, a database from elsewhere)
    is written as inf, not a crash of the report."""
    inf = float("inf")
    with fdb.conn:
        fdb.execute("UPDATE metrics SET value = ?", [inf])
        fdb.execute("UPDATE bench_results SET throttled_samples = ?, tflops = ?, latency_ms = ?, "
                    "speedup_vs_sdpa = ?, pct_peak = ?", [inf, inf, inf, inf, -inf])
        fdb.execute("UPDATE correctness_results SET max_err = ?", [inf])
    text = session_report(fdb, 2).text
    assert "| flash_fwd_bf16_hdim128_causal | inf | inf | inf | inf |" in text
    assert session_report(fdb, 1).text


# --------------------------------------------------------------------------------------------
# Formatting helpers


@given(st.one_of(st.none(), st.text(), st.integers(), st.floats(allow_nan=False)))
def test_cells_never_break_a_table_row(value):
    cell = f_cell(value)
    assert "\n" not in cell and "\r" not in cell
    assert cell.replace("\\|", "").count("|") == 0
    assert cell  # an empty cell would read as a missing column


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_delta_sign_matches(value):
    text = f_delta(value)
    assert text.startswith("+") == (value > 0) and text.startswith("-") == (value < 0)


def test_config_label():
    row = {"dtype": "bf16", "batch_size": 2, "num_heads": 8, "seq_len_q": 128, "seq_len_k": 4096,
           "head_dim": 64, "causal": 1}
    assert config_label(row) == "bf16 B2 H8 Sq128 Sk4096 D64 causal"


def test_plot_lines_follow_each_implementation_across_lengths():
    from sessionkit.report.plots import bench_groups

    # the standard grid keeps B*S fixed, so the batch changes with the length
    rows = [{"status": "ok", "tflops": 100.0 + s / 512, "dtype": "bf16", "head_dim": 128, "causal": 0,
             "impl": impl, "seq_len_k": s, "batch_size": 16384 // s, "num_heads": 16}
            for impl in ("ours", "sdpa") for s in (512, 1024, 2048)]
    groups = bench_groups(rows)
    assert list(groups) == [("bf16", 128, False)]
    series = groups[("bf16", 128, False)]
    assert sorted(series) == ["ours", "sdpa"]
    assert [x for x, _ in series["ours"]] == [512, 1024, 2048]
    # two shapes at one length for one implementation: those lines are told apart
    rows.append({**rows[0], "batch_size": 1, "tflops": 50.0})
    assert "ours B32 H16" in bench_groups(rows)[("bf16", 128, False)]


def test_gpu_comes_from_a_step_when_no_preflight_ran(fdb):
    """A session without a preflight snapshot names the GPU its correctness step recorded."""
    session_id = sid(1)
    fdb.conn.execute("DELETE FROM env_snapshots WHERE session_id = ?", [session_id])
    step = fdb.conn.execute("SELECT id, summary FROM steps WHERE session_id = ? AND name = ?",
                            [session_id, "correctness"]).fetchone()
    summary = {**json.loads(step[1]), "device": "NVIDIA H200"}
    fdb.conn.execute("UPDATE steps SET summary = ? WHERE id = ?", [json.dumps(summary), step[0]])
    fdb.conn.commit()
    text = session_report(fdb, 1, now=NOW).text
    assert "| GPU | NVIDIA H200 (recorded by the correctness step) |" in text
    fdb.conn.execute("UPDATE steps SET summary = ? WHERE id = ?", [step[1], step[0]])
    fdb.conn.commit()
    assert "| GPU | not recorded (no preflight snapshot) |" in session_report(fdb, 1, now=NOW).text


def test_report_json_and_export_are_strict_json_with_non_finite_figures(cli_db, tmp_path):
    """A stored summary holding NaN or an infinity (an old or hand-edited row) comes out as null:
    ``report --json`` and ``export`` print JSON that strict parsers read."""
    step = cli_db.conn.execute("SELECT id, summary FROM steps WHERE session_id = ? AND name = ?",
                               [sid(1), "bench"]).fetchone()
    summary = {**json.loads(step[1]), "geomean_speedup_vs_sdpa": float("nan"),
               "best_speedup_vs_sdpa": float("inf")}
    cli_db.conn.execute("UPDATE steps SET summary = ? WHERE id = ?", [json.dumps(summary), step[0]])
    cli_db.conn.commit()

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    for args in (("report", "1", "--json"), ("export", "1")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "NaN" not in result.output and "Infinity" not in result.output
        strict(result.output)
    out = tmp_path / "export.json"
    assert invoke("export", "1", "-o", str(out)).exit_code == 0
    exported = strict(out.read_text())
    bench = next(s for s in exported["steps"] if s["name"] == "bench")
    assert bench["summary"]["geomean_speedup_vs_sdpa"] is None
    assert bench["summary"]["best_speedup_vs_sdpa"] is None


def test_an_unnamed_session_is_titled_by_its_number_once(tmp_path):
    """A session started without a name is called "Session N": the title says it once."""
    from sessionkit.db import open_db
    from sessionkit.sessions import start_session

    db = open_db(tmp_path / "x.db", create=True)
    start_session(db, None, objective="no name")
    start_session(db, "tiles", objective="named", force=True)
    assert session_report(db, 1, now=NOW).text.startswith("# Session 1\n")
    assert session_report(db, 2, now=NOW).text.startswith("# Session 2: tiles\n")


def test_deeply_nested_and_infinite_stored_values_print(cli_db):
    """A summary nested 600 deep (the json module handles it) and infinite durations, as a merged
    database may hold: show, export and report print them, or say in one line why not."""
    cli_db.conn.execute("UPDATE steps SET summary = ? WHERE session_id = ? AND name = 'build'",
                        ['{"a": ' + "[" * 600 + "]" * 600 + "}", sid(1)])
    cli_db.conn.execute("UPDATE steps SET duration_s = 9e999 WHERE session_id = ?", [sid(1)])
    cli_db.conn.execute("UPDATE sessions SET budget_s = 9e999 WHERE id = ?", [sid(1)])
    cli_db.conn.commit()
    for args in (("show", "1", "--json"), ("export", "1"), ("report", "1"), ("report", "1", "--json"),
                 ("show", "1")):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output[-500:])
        if "--json" in args or args[0] == "export":
            json.loads(result.output, parse_constant=lambda c: pytest.fail(c))
    cli_db.conn.execute("UPDATE steps SET summary = ? WHERE session_id = ? AND name = 'build'",
                        ['{"a": ' + "[" * 5000 + "]" * 5000 + "}", sid(1)])
    cli_db.conn.commit()
    for args in (("show", "1", "--json"), ("export", "1"), ("report", "1")):
        result = invoke(*args)
        assert "Traceback" not in result.output and "RecursionError" not in result.output, args
