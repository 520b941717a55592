"""The session lifecycle through the CLI, checked through the library."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.sessions import get_session


def invoke(*args, **kw):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)
    return result


def test_start_status_end_show(tmp_path):
    r = invoke("start", "tiling", "--objective", "faster D128", "--plan", "build,bench",
               "--budget", "2h", "--gpu-rate", "2.50", "--ai-rate", "$6", "--step-budget", "build=60s")
    assert r.exit_code == 0, r.output
    assert "Started session 1: tiling" in r.output
    db = open_db()
    s = get_session(db, "last")
    assert (s["name"], s["objective"], s["budget_s"]) == ("tiling", "faster D128", 7200.0)
    assert (s["gpu_rate_usd_per_h"], s["ai_rate_usd_per_h"]) == (2.5, 6.0)
    assert s["plan"] == ["build", "bench"] and s["step_budgets"] == {"build": 60.0}

    r = invoke("status")
    assert r.exit_code == 0
    assert "of 2h00m budget" in r.output and "next:      build" in r.output

    r = invoke("status", "--json")
    data = json.loads(r.output)
    assert data["next_step"] == "build" and data["costs"]["rates_set"] == {"gpu": True, "ai": True}

    r = invoke("end", "--outcome", "tile 128x64 wins", "--status", "failed")
    assert r.exit_code == 0 and "Ended session 1 (tiling): failed" in r.output
    s = get_session(open_db(), 1)
    assert (s["status"], s["outcome"]) == ("failed", "tile 128x64 wins") and s["ended_at"]

    r = invoke("show", "last")
    assert "Session 1: tiling  [failed]" in r.output and "outcome:   tile 128x64 wins" in r.output
    assert json.loads(invoke("show", "1", "--json").output)["session"]["id"] == s["id"]


def test_second_start_refused_unless_forced():
    assert invoke("start", "--objective", "a").exit_code == 0
    r = invoke("start", "--objective", "b")
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: session 1 (Session 1) is still open")
    assert invoke("start", "--objective", "b", "--force").exit_code == 0
    assert get_session(open_db(), "last")["number"] == 2


def test_rates_not_set_are_never_invented():
    invoke("start", "--objective", "a")
    r = invoke("status")
    assert "GPU rate not set, AI rate not set, total rate not set" in r.output
    assert json.loads(invoke("status", "--json").output)["costs"]["gpu_usd"] is None


def test_defaults_from_nearest_pyproject(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sessionkit]\nplan = ["preflight", "bench"]\nbudget = "90m"\ngpu_rate = 3.0\n'
        '[tool.sessionkit.step_budgets]\nbench = "5m"\n')
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert invoke("start", "--objective", "x", "--budget", "1h").exit_code == 0
    s = get_session(open_db(), "last")
    assert s["plan"] == ["preflight", "bench"] and s["budget_s"] == 3600.0
    assert s["gpu_rate_usd_per_h"] == 3.0 and s["step_budgets"] == {"bench": 300.0}


def test_bad_pyproject_is_one_line_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sessionkit]\nbudget = "soon"\n')
    r = invoke("start", "--objective", "x")
    assert r.exit_code == 2
    assert r.output.strip() == (f"Error: [tool.sessionkit] in {tmp_path / 'pyproject.toml'}: "
                                "bad duration 'soon': use a form like 45s, 10m, 2h or 1h30m")


@pytest.mark.parametrize("args, message, code", [
    (["start", "--objective", "x", "--budget", "tomorrow"],
     "Error: bad duration 'tomorrow': use a form like 45s, 10m, 2h or 1h30m", 2),
    (["start", "--objective", "x", "--gpu-rate", "cheap"],
     "Error: bad --gpu-rate 'cheap': give US dollars per hour, e.g. 2.50", 2),
    (["start", "--objective", "x", "--step-budget", "build"],
     "Error: bad step budget 'build': use NAME=DURATION, e.g. build=60s", 2),
    (["start"], "Error: an objective is required: -m/--objective TEXT", 2),
    (["start", "fix the tail"],
     "Error: an objective is required: -m/--objective TEXT ('fix the tail' is the session's name, not its objective)", 2),
    (["end", "--outcome", "x"], "Error: no open session; start one with: sessionkit start -m/--objective TEXT", 1),
])
def test_bad_input_is_one_line(args, message, code):
    if args[0] == "end":
        invoke("start", "--objective", "x")
        invoke("end", "--outcome", "done")
    r = invoke(*args)
    assert r.exit_code == code
    assert r.output.strip().splitlines()[-1] == message


def test_unknown_session_and_missing_db(tmp_path, monkeypatch):
    r = invoke("show", "7")
    assert r.exit_code == 1 and "Error: no database at" in r.output
    invoke("start", "--objective", "x")
    r = invoke("show", "7")
    assert r.exit_code == 1 and r.output.strip() == "Error: no session matches '7'; see 'sessionkit sessions'"
    monkeypatch.delenv("SESSIONKIT_DB")
    r = invoke("status")
    assert r.exit_code == 1 and "no sessionkit database here or in any parent folder" in r.output


def test_db_that_is_not_sqlite(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_text("hello, not a database\n" * 40)
    r = invoke("--db", str(bad), "status")
    assert r.exit_code == 1 and r.output.strip() == f"Error: {bad} is not a SQLite database"
    r = invoke("status", "--db", str(bad))
    assert r.exit_code == 1 and "is not a SQLite database" in r.output


def test_sessions_list_and_export(tmp_path):
    invoke("start", "one", "--objective", "a")
    invoke("step", "run", "hello", "--", "echo", "hi")
    invoke("end", "--outcome", "ok")
    invoke("start", "two", "--objective", "b")
    r = invoke("sessions")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[2].split()[:2] == ["2", "two"] and lines[3].split()[:2] == ["1", "one"]
    rows = json.loads(invoke("sessions", "--json").output)
    assert [row["name"] for row in rows] == ["two", "one"] and rows[1]["passed"] == 1
    data = json.loads(invoke("export", "1", "--json").output)
    assert data["session"]["name"] == "one"
    assert [s["name"] for s in data["steps"]] == ["hello"]
    assert data["artifacts"][0]["kind"] == "log" and len(data["artifacts"][0]["sha256"]) == 64
    out = tmp_path / "one.json"
    assert invoke("export", "1", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text())["session"]["id"] == data["session"]["id"]


def test_session_ids_are_uuids_and_numbers_sequential():
    import uuid

    invoke("start", "--objective", "a")
    invoke("end", "--outcome", "x")
    invoke("start", "--objective", "b")
    rows = json.loads(invoke("sessions", "--json").output)
    assert [r["number"] for r in rows] == [2, 1]
    for r in rows:
        assert uuid.UUID(r["id"]).version == 4
    assert rows[0]["name"] == "Session 2"


def test_export_follows_rows_below_the_steps(tmp_path):
    from sessionkit.sessions import export_session

    db = open_db(tmp_path / "x.db", create=True)
    invoke("--db", str(tmp_path / "x.db"), "start", "--objective", "a")
    invoke("--db", str(tmp_path / "x.db"), "step", "run", "s", "--", "true")
    step_id = db.execute("SELECT id FROM steps").fetchone()[0]
    result = db["bench_results"].insert({
        "step_id": step_id, "impl": "sdpa", "dtype": "bf16", "batch_size": 1, "num_heads": 1,
        "seq_len_q": 1, "seq_len_k": 1, "head_dim": 64, "causal": 0, "status": "ok"}).last_pk
    db["bench_samples"].insert_all({"result_id": result, "idx": i, "latency_ms": 0.1 * i, "throttled": 0}
                                   for i in range(3))
    data = export_session(db, get_session(db, "last"))
    assert len(data["bench_results"]) == 1
    assert [s["idx"] for s in data["bench_samples"]] == [0, 1, 2]


def test_usage_errors_are_one_line():
    from click.testing import CliRunner

    from sessionkit.cli import cli

    runner = CliRunner()
    for args, words in ((["--bogus"], "No such option '--bogus'"),
                        (["nosuch"], "No such command 'nosuch'"),
                        (["step", "bench", "--passes", "0"], "'--passes': 0 is not in the range"),
                        (["start", "--budget"], "'--budget' requires an argument")):
        result = runner.invoke(cli, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error:") and words in lines[0], lines
    result = runner.invoke(cli, ["start", "1", "\x1e"])
    assert result.output == ("Error: Got unexpected extra argument (\\x1e) "
                             "(see 'cli start --help')\n")
    # a group called without a command still shows its help
    result = runner.invoke(cli, ["step"])
    assert "Usage: " in result.output and "Commands:" in result.output


def test_stored_control_characters_are_escaped_on_the_terminal(tmp_path):
    """A session name with an OSC escape and an objective with a newline cannot drive the terminal or
    fake table rows in sessions, show, status or history. `start` refuses such a name now, but a
    database merged from elsewhere or written by an older version can hold one."""
    import subprocess
    import sys

    def sk(*args):
        return subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True,
                              text=True, timeout=60)

    name = "evil\x1b]0;PWN\x07"
    objective = "line one\n2  fake  passed  row\rback"
    refused = sk("start", name, "--objective", objective)
    assert refused.returncode == 2 and "control characters" in refused.stderr
    started = sk("start", "plain", "--objective", objective)
    assert started.returncode == 0, started.stderr
    db = open_db()
    db.execute("UPDATE sessions SET name = ? WHERE number = 1", [name])
    db.conn.commit()
    db.conn.close()
    assert sk("step", "run", "s", "--", "echo", "hi").returncode == 0
    outputs = {cmd[0]: sk(*cmd) for cmd in (["sessions"], ["show", "1"], ["status"], ["history"])}
    for cmd, res in outputs.items():
        assert res.returncode == 0, (cmd, res.stderr)
        assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\r" not in res.stdout, cmd
        assert "PWN" in res.stdout, cmd
        assert not any(line.startswith("2  fake") for line in res.stdout.splitlines()), cmd
    assert "line one\\n2  fake" in outputs["show"].stdout
    assert "line one\\n2  fake" in outputs["status"].stdout
    assert "\\x1b]0;PWN\\x07" in outputs["sessions"].stdout
    # the row of session 1 in the listing is one line
    rows = [line for line in outputs["sessions"].stdout.splitlines() if "PWN" in line]
    assert len(rows) == 1 and "line one\\n2  fake" in rows[0]


def test_end_without_status_takes_it_from_the_latest_run_of_each_step():
    """A session whose latest run of a step failed does not end as passed unless told; a failure
    fixed by a later run of the same step does not count."""
    invoke("start", "--objective", "a")
    invoke("step", "run", "compile", "--", "false")
    r = invoke("end", "--outcome", "done")
    assert r.exit_code == 0 and "Ended session 1 (Session 1): failed" in r.output
    assert "status failed from the steps: the latest run of compile failed" in r.output
    assert get_session(open_db(), 1)["status"] == "failed"

    invoke("start", "--objective", "b")
    invoke("step", "run", "compile", "--", "false")
    invoke("step", "run", "compile", "--", "true")
    invoke("step", "run", "hello", "--", "true")
    r = invoke("end", "--outcome", "fixed it", "--json")
    done = json.loads(r.output)
    assert done["status"] == "passed" and "passed" in done["status_reason"]

    invoke("start", "--objective", "c")
    invoke("step", "run", "compile", "--", "false")
    r = invoke("end", "--outcome", "said so", "--status", "passed")
    assert "Ended session 3 (Session 3): passed" in r.output and "from the steps" not in r.output
    assert get_session(open_db(), 3)["status"] == "passed"


def test_end_without_status_does_not_call_a_session_where_no_step_passed_passed(db, session):
    """A session whose steps were all skipped (a CPU machine) or that ran none ended 'passed',
    while 'sessionkit run' calls the same steps 'failed'."""
    from sessionkit.sessions import end_session, start_session

    for seq, name in enumerate(["build", "bench"], 1):
        db["steps"].insert({"id": f"s{seq}", "session_id": session["id"], "seq": seq, "name": name,
                            "status": "skipped", "started_at": "2026-01-01T00:00:00+00:00",
                            "host": "h", "pid": 1})
    done = end_session(db, session, outcome="no GPU here")
    assert (done["status"], done["status_reason"]) == ("failed", "no step passed (2 steps skipped)")
    empty = start_session(db, objective="nothing")
    done = end_session(db, empty, outcome="nothing ran")
    assert (done["status"], done["status_reason"]) == ("failed", "no step ran")


def test_end_without_status_fails_a_session_whose_planned_steps_never_ran():
    """A session started with --plan ends 'failed' by default when a planned step never ran (a
    run of some other step passed), and says which; a planned step that was skipped counts as run,
    and with every planned step run it is 'passed'."""
    invoke("start", "--objective", "a", "--plan", "build,bench")
    invoke("step", "run", "hello", "--", "true")
    r = invoke("end", "--outcome", "only said hello")
    assert r.exit_code == 0 and "Ended session 1 (Session 1): failed" in r.output
    assert "planned steps never ran: build, bench" in r.output
    assert get_session(open_db(), 1)["status"] == "failed"

    invoke("start", "--objective", "b", "--plan", "compile,bench")
    invoke("step", "run", "compile", "--", "true")
    r = invoke("end", "--outcome", "built", "--json")
    assert json.loads(r.output)["status_reason"] == "planned step never ran: bench"

    invoke("start", "--objective", "c", "--plan", "compile,hello")
    invoke("step", "run", "compile", "--", "true")
    invoke("step", "run", "hello", "--", "true")
    r = invoke("end", "--outcome", "all of it", "--json")
    assert json.loads(r.output)["status"] == "passed"


def test_end_session_default_counts_interrupted_steps(db, session):
    from sessionkit.sessions import end_session

    for seq, (name, status) in enumerate([("build", "passed"), ("bench", "interrupted")], 1):
        db["steps"].insert({"id": f"s{seq}", "session_id": session["id"], "seq": seq, "name": name,
                            "status": status, "started_at": "2026-01-01T00:00:00+00:00",
                            "host": "h", "pid": 1})
    done = end_session(db, session, outcome="stopped")
    assert done["status"] == "failed" and done["status_reason"] == "the latest run of bench interrupted"


def test_a_budget_without_a_unit_is_one_line_error(tmp_path):
    r = invoke("start", "--objective", "x", "--budget", "2")
    assert r.exit_code == 2 and r.output.strip() == (
        "Error: bad duration '2': give it a unit, e.g. 2s, 2m or 2h (a bare number is not taken as seconds)")
    r = invoke("start", "--objective", "x", "--step-budget", "build=60")
    assert r.exit_code == 2 and r.output.strip().startswith("Error: bad duration '60': give it a unit")
    (tmp_path / "pyproject.toml").write_text("[tool.sessionkit]\nbudget = 7200\n")
    r = invoke("start", "--objective", "x")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "budget" in r.output and "bad duration 7200: give it a unit" in r.output
    assert not (tmp_path / "sessions.db").exists() or open_db()["sessions"].count == 0


def test_status_counts_runs_apart_from_the_planned_steps_done():
    """Retries and unplanned steps are runs, not planned steps done; a planned step whose latest
    run failed is next again. A plan may name command steps (`step run NAME`)."""
    invoke("start", "--objective", "x", "--plan", "compile,measure")
    for name, command in (("compile", "false"), ("compile", "true"), ("hello", "true"), ("measure", "true")):
        invoke("step", "run", name, "--", command)
    r = invoke("status")
    assert "  steps:     4 runs; 2 of 2 planned done" in r.output
    assert "  next:      all planned steps done" in r.output
    invoke("step", "run", "measure", "--", "false")
    r = invoke("status")
    assert "  steps:     5 runs; 1 of 2 planned done" in r.output and "  next:      measure" in r.output
    data = json.loads(invoke("status", "--json").output)
    assert (data["runs"], data["planned_done"], data["next_step"]) == (5, ["compile"], "measure")


@pytest.mark.parametrize("name", ["preflight", "build", "correctness", "bench", "profile"])
def test_a_command_step_cannot_take_a_built_in_steps_name(name):
    """`step run build -- true` ran `true`, recorded it as a step named build and counted it as
    the planned build (status: "1 of 1 planned done", next: all done) without building anything.
    A command step may not take a built-in step's name: refused in one line, exit 2, before
    anything is recorded; the plan still waits for the built-in step."""
    invoke("start", "--objective", "x", "--plan", name)
    r = invoke("step", "run", name, "--", "true")
    assert r.exit_code == 2, r.output
    assert r.output == (f"Error: step name {name!r} is taken by a built-in step ('sessionkit step "
                        f"{name}' runs it); give a command step a name of its own, e.g. "
                        f"'{name}-cmd'\n")
    data = json.loads(invoke("status", "--json").output)
    assert (data["runs"], data["planned_done"], data["next_step"]) == (0, [], name)
    assert open_db()["steps"].count == 0
    # the library refuses it too; a name of its own is taken
    from sessionkit.errors import UsageError
    from sessionkit.runner import run_step
    from sessionkit.sessions import get_open_session
    from sessionkit.steps import get_step

    db = open_db()
    with pytest.raises(UsageError, match="is taken by a built-in step"):
        run_step(db, get_open_session(db), get_step("run"), {"argv": ["true"]}, name=name,
                 kind="command")
    assert invoke("step", "run", f"{name}-cmd", "--", "true").exit_code == 0
    assert invoke("step", "run", "run", "--", "true").exit_code == 0  # the command step's own name
    data = json.loads(invoke("status", "--json").output)
    assert (data["runs"], data["planned_done"], data["next_step"]) == (2, [], name)


@pytest.mark.parametrize("column, text", [
    ("steps.summary", "not json{"), ("steps.options", "not json{"), ("steps.command", "{"),
    ("sessions.plan", "not json{"), ("sessions.plan", "5"), ("sessions.plan", "null"),
    ("sessions.plan", '["build", 1]'), ("sessions.step_budgets", "not json{"),
    ("sessions.step_budgets", "[1]"), ("sessions.step_budgets", '{"x": "60s", "y": NaN}'),
])
def test_json_columns_that_do_not_hold_what_was_written_are_read_without_a_crash(column, text):
    """A row damaged or written elsewhere (a merged database) is still shown, exported and
    reported, and the open session still records steps."""
    assert invoke("start", "--objective", "odd rows", "--plan", "x,build").exit_code == 0
    assert invoke("step", "run", "x", "--", "true").exit_code == 0
    table, name = column.split(".")
    db = open_db()
    with db.conn:
        db.execute(f"UPDATE {table} SET {name} = ?", [text])
    for args in (["show", "last"], ["status"], ["export"], ["report"], ["sessions"],
                 ["step", "run", "y", "--", "true"], ["status", "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and result.exception is None, (args, result.output)
    exported = json.loads(invoke("export").output)
    session = exported["session"]
    assert isinstance(session["plan"], list) and isinstance(session["step_budgets"], dict)
    if column == "steps.summary":  # the text is shown as it is, not dropped
        assert "not json{" in json.dumps(exported)


@pytest.mark.parametrize("value", ["60", "0.5", "fast", "-1s"])
def test_bad_telemetry_interval_is_one_line_and_records_nothing(value, monkeypatch):
    """$SESSIONKIT_TELEMETRY_INTERVAL takes a duration with its unit; anything else stops the step
    before it is recorded, with one line naming the variable."""
    assert invoke("start", "x", "--objective", "o").exit_code == 0
    monkeypatch.setenv("SESSIONKIT_TELEMETRY_INTERVAL", value)
    r = invoke("step", "run", "hello", "--", "true")
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "SESSIONKIT_TELEMETRY_INTERVAL" in lines[0], r.output
    assert "Traceback" not in r.output
    db = open_db()
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0


def test_telemetry_interval_from_the_environment_wins_over_pyproject(monkeypatch):
    from sessionkit.runner import telemetry_interval_from_env

    monkeypatch.delenv("SESSIONKIT_TELEMETRY_INTERVAL", raising=False)
    assert telemetry_interval_from_env() is None
    monkeypatch.setenv("SESSIONKIT_TELEMETRY_INTERVAL", "250ms")
    assert telemetry_interval_from_env() == 0.25
    assert invoke("start", "x", "--objective", "o").exit_code == 0
    r = invoke("step", "run", "hello", "--", "true")
    assert r.exit_code == 0, r.output


def test_db_option_between_the_step_name_and_the_command(tmp_path):
    """`step run NAME --db PATH -- CMD` records the step in PATH (the option was once taken as the
    command and the step landed, failed, in the default database); without `--` it is refused."""
    other = tmp_path / "other.db"
    assert invoke("--db", str(other), "start", "-m", "there").exit_code == 0
    r = invoke("step", "run", "hi", "--db", str(other), "--", "true")
    assert r.exit_code == 0, r.output
    db = open_db(other)
    assert [tuple(row) for row in db.execute("SELECT name, status FROM steps")] == [("hi", "passed")]
    r = invoke("step", "run", "hi", f"--db={other}", "--", "true")
    assert r.exit_code == 0, r.output
    r = invoke("step", "run", "hi", "--db", str(other), "true")
    assert r.exit_code == 2 and "options go before the command" in r.output
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 2


def test_run_with_a_bad_telemetry_interval_opens_no_session(tmp_path, monkeypatch):
    """`sessionkit run` checks $SESSIONKIT_TELEMETRY_INTERVAL before the session opens: nothing is
    left open, no after-hook is skipped half-way."""
    monkeypatch.setenv("SESSIONKIT_TELEMETRY_INTERVAL", "5")
    r = invoke("run", "-m", "x", "--plan", "preflight", "--no-hooks", "--no-plots")
    assert r.exit_code == 2 and "SESSIONKIT_TELEMETRY_INTERVAL" in r.output
    assert "started" not in r.output
    assert open_db(create=True)["sessions"].count == 0


@pytest.mark.parametrize("value", ["2h", "120000d", "9" * 300 + "d"])
def test_a_telemetry_interval_past_an_hour_is_refused(value, monkeypatch):
    from sessionkit.errors import UsageError
    from sessionkit.runner import telemetry_interval_from_env

    monkeypatch.setenv("SESSIONKIT_TELEMETRY_INTERVAL", value)
    with pytest.raises(UsageError, match="SESSIONKIT_TELEMETRY_INTERVAL"):
        telemetry_interval_from_env()
    monkeypatch.setenv("SESSIONKIT_TELEMETRY_INTERVAL", "1h")
    assert telemetry_interval_from_env() == 3600.0


def test_status_and_show_give_a_skipped_step_no_duration(db, session):
    """A skipped step never ran: `status` and `show` print '-' for its duration, as the report
    does, even when its row spans time (a step skipped after a long wait for its dependency)."""
    db["steps"].insert({"id": "sk1", "session_id": session["id"], "seq": 1, "name": "bench",
                        "status": "skipped", "started_at": "2026-01-01T00:00:00+00:00",
                        "ended_at": "2026-01-01T00:05:00+00:00", "duration_s": 300.0,
                        "message": "build did not pass", "host": "h", "pid": 1})
    db["sessions"].update(session["id"], {"gpu_rate_usd_per_h": 3600.0})
    for args in (["status"], ["show", "last"]):
        out = invoke(*args).output
        row = next(line for line in out.splitlines() if line.split()[:3] == ["1", "bench", "skipped"])
        assert row.split()[3] == "-", (args, row)
        assert "5m" not in row and "$300" not in row, (args, row)  # nor a cost of its 300 s
    data = json.loads(invoke("status", "--json").output)
    assert data["costs"]["per_step"]["sk1"]["seconds"] == 0.0
    assert data["costs"]["per_step"]["sk1"]["total_usd"] == 0.0


def test_tables_align_wide_characters():
    """Step names in wide characters (CJK, emoji) take two columns each: the columns after them
    still line up in `status`."""
    from sessionkit.views import display_width, table

    assert (display_width("abc"), display_width("名前"), display_width("e\u0301")) == (3, 4, 1)
    text = table(["step", "status"], [["名前", "passed"], ["ab", "failed"]])
    lines = [line for line in text.splitlines() if not line.startswith("-")]
    starts = [display_width(line[:line.index(word)]) for line, word in
              zip(lines, ["status", "passed", "failed"])]
    assert len(set(starts)) == 1, text


def test_cut_cells_end_in_an_ellipsis():
    """`sessions`, `show` and `status` cut long names, objectives and notes to fit their tables; a
    cut cell ends in "...", so that "... (torch, cuda_device, gpu, dri" is not read as whole."""
    name, objective = "n" * 45, "o" * 70
    assert invoke("start", name, "--objective", objective).exit_code == 0
    program = "p" * 80  # its "command not found: ppp..." note is longer than the column
    assert invoke("step", "run", "long", "--", program).exit_code == 127
    listing = invoke("sessions").output
    assert "n" * 27 + "..." in listing and "n" * 28 not in listing
    assert "o" * 37 + "..." in listing and "o" * 38 not in listing
    for command in (["show", "last"], ["status"]):
        out = invoke(*command).output
        note = "command not found: " + "p" * (57 - len("command not found: ")) + "..."
        assert note in out, out
    assert invoke("step", "run", "fits", "--", "p" * 10).exit_code == 127  # a note that fits
    assert f"command not found: {'p' * 10}\n" in invoke("show", "last").output
