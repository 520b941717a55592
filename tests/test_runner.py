"""The step runner: recording, progress lines, estimates from history, failures and crashes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionkit import steps as steps_mod
from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.progress import Progress, estimate_from_history
from sessionkit.runner import exit_code_for, run_step
from sessionkit.sessions import session_steps
from sessionkit.steps import Metric, Step, StepResult
from sessionkit.steps.typed import StepOptions, option


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@dataclass(frozen=True)
class CountingOptions(StepOptions):
    n: int = option(3, help="How far to count.")


class Counting(Step):
    name = "counting"
    description = "Counts to n and records a metric."
    budget_s = 5.0
    options_type = CountingOptions

    def run(self, context):
        n = context.options.n
        for i in range(n):
            context.progress.update(i + 1, n, "counting")
        context.metric("counted", n, unit="count")
        return StepResult("passed", message="counted", summary={"n": n},
                          metrics=[Metric("answer", 42, "count", subject="x")])


class Crashing(Step):
    name = "crashing"
    description = "Raises a bug."

    def run(self, context):
        raise ZeroDivisionError("division by zero in step")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(steps_mod.REGISTRY, "counting", f"{__name__}:Counting")
    monkeypatch.setitem(steps_mod.REGISTRY, "crashing", f"{__name__}:Crashing")


def test_registered_step_runs_with_its_options(registered):
    invoke("start", "--objective", "x", "--plan", "preflight,counting")
    r = invoke("step", "counting", "--n", "4")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "[2/2] counting - no earlier passed run to estimate from, budget 5.0 s"
    assert "    4/4 counting" in lines
    assert lines[-1].startswith("[2/2] counting passed in ") and lines[-1].endswith("(budget 5.0 s): counted")
    db = open_db()
    (row,) = session_steps(db, db.execute("SELECT id FROM sessions").fetchone()[0])
    assert (row["status"], row["summary"], row["options"]) == ("passed", {"n": 4}, {"n": 4})
    metrics = {(m["key"], m["value"], m["unit"]) for m in db["metrics"].rows}
    assert metrics == {("counted", 4.0, "count"), ("answer", 42.0, "count")}
    assert "counting" in invoke("step", "list").output
    assert "--n" in invoke("step", "counting", "--help").output


def test_estimate_comes_from_history(registered):
    invoke("start", "--objective", "x")
    for _ in range(3):
        invoke("step", "counting")
    db = open_db()
    expected, runs = estimate_from_history(db, "counting")
    durations = sorted(r["duration_s"] for r in db["steps"].rows)
    assert runs == 3 and expected == durations[1]
    r = invoke("step", "counting")
    assert "(median of 3 earlier passed runs), budget 5.0 s" in r.output.splitlines()[0]


def test_crash_is_recorded_with_traceback_artifact(registered):
    invoke("start", "--objective", "x")
    r = invoke("step", "crashing")
    assert r.exit_code == 1
    assert "FAILED" in r.output and "step crashed: ZeroDivisionError: division by zero in step" in r.output
    assert "Traceback" not in r.output
    db = open_db()
    (row,) = db["steps"].rows
    assert row["status"] == "failed"
    (art,) = db["artifacts"].rows
    assert art["kind"] == "traceback"
    assert "ZeroDivisionError" in open(art["path"]).read()


def test_step_run_records_exit_code_tail_and_log():
    invoke("start", "--objective", "x")
    script = "import sys\nfor i in range(250): print('line', i)\nsys.exit(3)"
    r = invoke("step", "run", "noisy", "--", "python3", "-c", script)
    assert r.exit_code == 3
    db = open_db()
    (row,) = db["steps"].rows
    assert (row["status"], row["exit_code"], row["kind"]) == ("failed", 3, "command")
    tail = row["output_tail"].splitlines()
    assert len(tail) == 200 and tail[0] == "line 50" and tail[-1] == "line 249"
    assert json.loads(row["command"]) == ["python3", "-c", script]
    (log,) = db["artifacts"].rows
    assert log["kind"] == "log" and open(log["path"]).read().count("\n") == 250


def test_step_run_streams_output_live():
    invoke("start", "--objective", "x")
    r = invoke("step", "run", "echo", "--", "echo", "hello world")
    assert r.exit_code == 0
    assert "hello world" in r.output


def test_the_result_line_starts_a_line_of_its_own():
    """A command whose output does not end in a newline: its last line is ended before the
    result line, not glued to it (the log keeps the output as it was)."""
    invoke("start", "--objective", "x")
    r = invoke("step", "run", "nonl", "--", "printf", "no newline")
    assert r.exit_code == 0
    assert "no newline\n[1] nonl passed" in r.output
    db = open_db()
    (log,) = db["artifacts"].rows
    assert open(log["path"]).read() == "no newline"


def test_step_run_errors():
    r = invoke("step", "run", "x", "--", "true")
    assert r.exit_code == 1 and "no database" in r.output
    invoke("start", "--objective", "x")
    r = invoke("step", "run", "x", "--")
    assert r.exit_code == 2
    assert r.output.strip() == "Error: no command given after --: sessionkit step run NAME -- CMD ARGS..."
    r = invoke("step", "run", "x", "--", "no-such-command-anywhere")
    assert r.exit_code == 127 and "command not found: no-such-command-anywhere" in r.output
    r = invoke("step", "nonexistent")
    assert r.exit_code == 2 and "No such command 'nonexistent'" in r.output


def test_a_command_that_cannot_be_run_is_exit_126_with_the_reason(tmp_path):
    """A file that exists but cannot be executed (no #! line: exec format error) or a command name
    longer than the system allows is the shell's 126 with the reason, not a crashed step."""
    invoke("start", "--objective", "x")
    script = tmp_path / "noshebang"
    script.write_bytes(b"\x00\x01\x02 not a program\n")
    script.chmod(0o755)
    r = invoke("step", "run", "fmt", "--", str(script))
    assert r.exit_code == 126, r.output
    assert f"cannot run {script}: Exec format error" in r.output and "crashed" not in r.output
    long_name = "x" * 5000
    r = invoke("step", "run", "long", "--", long_name)
    assert r.exit_code == 126, r.output
    assert "cannot run " + "x" * 77 + "...: File name too long" in r.output
    assert "crashed" not in r.output
    steps = {s["name"]: s for s in open_db()["steps"].rows}
    assert steps["fmt"]["status"] == "failed" and steps["fmt"]["exit_code"] == 126
    assert steps["long"]["message"].startswith("cannot run xxx") and len(steps["long"]["message"]) < 200


def test_an_empty_command_name_and_a_folder_get_the_shells_status_and_words(tmp_path):
    """``step run x -- ""`` is 127, command not found, as in a shell (execve's EACCES from the
    PATH search read "permission denied: " with nothing named); a folder given as the command is
    126 "Is a directory", not "permission denied"."""
    invoke("start", "--objective", "x")
    r = invoke("step", "run", "empty", "--", "")
    assert r.exit_code == 127, r.output
    assert "command not found: '' (an empty command name)" in r.output
    r = invoke("step", "run", "folder", "--", str(tmp_path))
    assert r.exit_code == 126, r.output
    assert f"cannot run {tmp_path}: Is a directory" in r.output
    assert "permission denied" not in r.output
    steps = {s["name"]: s for s in open_db()["steps"].rows}
    assert (steps["empty"]["exit_code"], steps["folder"]["exit_code"]) == (127, 126)
    assert steps["folder"]["message"] == f"cannot run {tmp_path}: Is a directory"


def test_step_needs_open_session():
    invoke("start", "--objective", "x")
    invoke("end", "--outcome", "done")
    r = invoke("step", "run", "x", "--", "true")
    assert r.exit_code == 1
    assert r.output.strip() == "Error: no open session; start one with: sessionkit start -m/--objective TEXT"


def test_heartbeat_lines_on_long_steps(monkeypatch):
    monkeypatch.setenv("SESSIONKIT_PROGRESS_EVERY", "0.3")
    invoke("start", "--objective", "x")
    r = invoke("step", "run", "sleepy", "--", "sleep", "1.2")
    beats = [line for line in r.output.splitlines() if line.startswith("[1] sleepy ... ")]
    assert len(beats) >= 2
    db = open_db()
    (row,) = db["steps"].rows
    assert row["heartbeat_at"] > row["started_at"]


def test_progress_line_formats(capsys):
    p = Progress("[2/4]", "build", color=False)
    p.start(expected_s=45, runs=5, budget_s=60)
    p.heartbeat(90)
    p.end("passed", 38, budget_s=60)
    p.end("failed", 12, budget_s=60, exit_code=2, log="/tmp/build.log")
    assert capsys.readouterr().out.splitlines() == [
        "[2/4] build - expected about 45 s (median of 5 earlier passed runs), budget 60 s",
        "[2/4] build ... 1m30s, expected 45 s",
        "[2/4] build passed in 38 s (budget 60 s)",
        "[2/4] build FAILED (exit 2) in 12 s; log: /tmp/build.log",
    ]


def test_exit_codes_for_rows():
    assert exit_code_for({"status": "passed"}) == 0
    assert exit_code_for({"status": "skipped"}) == 125  # git bisect run: cannot test
    assert exit_code_for({"status": "failed", "exit_code": 3}) == 3
    assert exit_code_for({"status": "failed", "exit_code": None}) == 1
    assert exit_code_for({"status": "interrupted", "exit_code": 143}) == 143


def test_library_run_step_without_cli(db, session):
    from sessionkit.steps.command import CommandStep

    row = run_step(db, session, CommandStep(), {"argv": ["true"]}, name="t", kind="command")
    assert row["status"] == "passed" and row["seq"] == 1 and row["exit_code"] == 0


@pytest.mark.parametrize("runs, name, kind", [("run", "build", "builtin"), ("bench", "build", "builtin"),
                                              ("preflight", "bench", "builtin"), ("run", "profile", "hook")])
def test_the_library_refuses_a_built_in_steps_name_for_another_step(db, session, runs, name, kind):
    """`step run build -- true` is refused, but the library took it: run_step(CommandStep(),
    name="build") with its default kind recorded the command as the built-in build (kind
    builtin), which satisfied a planned build and counted in the restart history as a build that
    passed; so did a bench run under the name build. A step may take a built-in step's name only
    when it is that step; refused before anything is recorded."""
    from sessionkit.errors import UsageError
    from sessionkit.steps import get_step

    options = {"argv": ["true"]} if runs == "run" else None
    with pytest.raises(UsageError, match=f"step name '{name}' is taken by a built-in step"):
        run_step(db, session, get_step(runs), options, name=name, kind=kind)
    assert db["steps"].count == 0  # so neither a plan nor the restart history counts it
    row = run_step(db, session, get_step("run"), {"argv": ["true"]}, name=f"{name}-cmd", kind="command")
    assert row["status"] == "passed" and row["name"] == f"{name}-cmd"


def test_a_step_never_writes_into_a_folder_it_did_not_make(tmp_path):
    # A database deleted and started again in the same place finds the old session-1 folders: the
    # new step gets a folder of its own, and the old files stay as they were.
    invoke("start", "--objective", "x")
    db = open_db()
    from sessionkit.db import artifacts_root
    stale = artifacts_root(db.path) / "session-1" / "01-noisy"
    stale.mkdir(parents=True)
    (stale / "noisy.log").write_text("an earlier database's log\n")
    (stale.parent / "01-noisy.2").mkdir()
    r = invoke("step", "run", "noisy", "--", "python3", "-c", "print('fresh')")
    assert r.exit_code == 0, r.output
    assert (stale / "noisy.log").read_text() == "an earlier database's log\n"
    assert not any((stale.parent / "01-noisy.2").iterdir())
    (log,) = db["artifacts"].rows
    assert Path(log["path"]).parent == stale.parent / "01-noisy.3"
    assert "fresh" in Path(log["path"]).read_text()


def test_a_step_folder_that_cannot_be_made_is_one_line_and_no_step(tmp_path):
    invoke("start", "--objective", "x")
    db = open_db()
    from sessionkit.db import artifacts_root
    folder = artifacts_root(db.path) / "session-1"
    folder.mkdir(parents=True)
    for n in range(1, 1000):  # every name make_own_folder tries is taken
        (folder / ("01-noisy" if n == 1 else f"01-noisy.{n}")).mkdir()
    r = CliRunner().invoke(cli, ["step", "run", "noisy", "--", "true"])
    assert r.exit_code == 1
    assert r.output == (f"Error: cannot create the step's folder {folder / '01-noisy'}: 999 "
                        "folders of that name are already there\n")
    assert list(db["steps"].rows) == []


def _occupy(path: Path, kind: str, outside: Path) -> None:
    """Put at ``path`` (the session's folder, or the artifacts folder) what ``kind`` names."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        path.write_text("a file where the session's folder goes\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link out":
        path.symlink_to(outside)
    elif kind == "link in":  # to another session's folder, inside the artifacts folder
        (path.parent / "session-9").mkdir()
        path.symlink_to("session-9")
    elif kind == "dangling link":
        path.symlink_to(outside / "gone")


@pytest.mark.parametrize("where, kind, words", [
    ("session", "file", "is a file, where a folder of the session's step files goes"),
    ("session", "fifo", "is not a folder, where a folder of the session's step files goes"),
    ("session", "link out", "is a symbolic link (to {target}); the session's step files go only "
                            "in a folder of its own inside {root}"),
    ("session", "link in", "is a symbolic link (to {target}); the session's step files go only "
                           "in a folder of its own inside {root}"),
    ("session", "dangling link", "is a symbolic link (to {target}); the session's step files go "
                                 "only in a folder of its own inside {root}"),
    ("root", "file", "is a file, where a folder of the session's step files goes"),
    ("root", "dangling link", "is a symbolic link to {target}, which does not exist; the "
                              "session's step files go there"),
])
def test_a_session_folder_that_is_not_its_own_is_refused_at_the_step_start(tmp_path, where, kind,
                                                                           words):
    """``artifacts/session-N`` as a file made every step fail with "File exists"; as a symbolic
    link out of the artifacts folder, the steps' files landed wherever it pointed. Either is one
    line at the step's start (exit 1) that names the path and what to do; no step is recorded,
    nothing is made through the link, and what was there stays as it was."""
    import os

    from sessionkit.db import artifacts_root

    invoke("start", "--objective", "x")
    db = open_db()
    root = artifacts_root(db.path)
    outside = tmp_path / "outside"
    outside.mkdir()
    path = root / "session-1" if where == "session" else root
    _occupy(path, kind, outside)
    target = os.readlink(path) if path.is_symlink() else None
    r = CliRunner().invoke(cli, ["step", "run", "x", "--", "true"])
    assert r.exit_code == 1, r.output
    assert r.output == (f"Error: cannot start step 'x': {path} "
                        + words.format(target=target, root=root)
                        + ": move it away and run the step again\n")
    assert db["steps"].count == 0
    assert list(outside.iterdir()) == []
    assert os.readlink(path) == target if target else os.path.lexists(path)
    if kind == "link in":
        assert list((root / "session-9").iterdir()) == []
    from sessionkit.errors import SessionkitError
    from sessionkit.sessions import get_open_session
    with pytest.raises(SessionkitError, match="^cannot start step 'x': "):
        run_step(db, get_open_session(db), steps_mod.get_step("run"), {"argv": ["true"]},
                 name="x", kind="command")
    assert db["steps"].count == 0


def test_an_artifacts_folder_that_is_a_link_to_a_folder_keeps_the_steps_files(tmp_path):
    """The artifacts folder itself may be a symbolic link (to a larger disk): steps keep their
    files in its target, below ``session-N``."""
    from sessionkit.db import artifacts_root

    invoke("start", "--objective", "x")
    db = open_db()
    elsewhere = tmp_path / "big-disk" / "artifacts"
    elsewhere.mkdir(parents=True)
    artifacts_root(db.path).symlink_to(elsewhere)
    r = CliRunner().invoke(cli, ["step", "run", "x", "--", "echo", "kept"])
    assert r.exit_code == 0, r.output
    assert (elsewhere / "session-1" / "01-x" / "output.log").read_text() == "kept\n"


def test_a_session_folder_linked_away_while_the_step_starts_is_refused(tmp_path, monkeypatch):
    """A symbolic link put at ``session-N`` between the check and the step folder's ``mkdir``:
    the folder made through it is removed again, and the step refused before it runs."""
    import sessionkit.runner as runner
    from sessionkit.db import artifacts_root

    invoke("start", "--objective", "x")
    db = open_db()
    folder = artifacts_root(db.path) / "session-1"
    outside = tmp_path / "outside"
    outside.mkdir()
    real_check = runner.check_session_folder
    calls = []

    def check_then_link(*args):
        real_check(*args)
        calls.append(args)
        if len(calls) == 2:  # the check in make_step_folder, just before its mkdir
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.symlink_to(outside)

    monkeypatch.setattr(runner, "check_session_folder", check_then_link)
    marker = tmp_path / "ran"
    r = CliRunner().invoke(cli, ["step", "run", "x", "--", "touch", str(marker)])
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"Error: cannot start step 'x': {folder} is a symbolic link")
    assert list(outside.iterdir()) == [] and not marker.exists()
    assert db["steps"].count == 0


def _library_refuses_the_name(db, name: str, match: str) -> None:
    """No step is recorded, and run_step (the library, under the CLI) refuses ``name`` for a
    command step with a UsageError matching ``match``, recording none either."""
    from sessionkit.errors import UsageError
    from sessionkit.sessions import get_open_session

    assert db["steps"].count == 0
    with pytest.raises(UsageError, match=match):
        run_step(db, get_open_session(db), steps_mod.get_step("run"), {"argv": ["true"]},
                 name=name, kind="command")
    assert db["steps"].count == 0


@pytest.mark.parametrize("name", [" build", "build ", "  bench  ", " mine", "mine "])
def test_a_step_name_that_begins_or_ends_with_a_space_is_refused(tmp_path, name):
    """``step run " build" -- true`` was recorded, and ``show``/``status`` printed it as the
    built-in build (a table's cell does not show the space); a plan or a step budget, whose names
    are taken stripped, never matched it. Such a name is refused in one line, before anything is
    recorded."""
    invoke("start", "--objective", "x", "--plan", "build,mine")
    r = CliRunner().invoke(cli, ["step", "run", name, "--", "true"])
    assert r.exit_code == 2, r.output
    assert r.output == (f"Error: bad step name {name!r}: it begins or ends with a space, which "
                        f"a table does not show (it would pass for {name.strip()!r}); leave the "
                        "spaces out\n")
    db = open_db()
    _library_refuses_the_name(db, name, "begins or ends with a space")


@pytest.mark.parametrize("name", ["hook:before", "hook:after", "hook:mine"])
def test_a_command_step_may_not_take_a_hooks_name(name):
    # 'hook:before' as a command step showed in show and the report as the run's hook.
    invoke("start", "--objective", "x")
    r = CliRunner().invoke(cli, ["step", "run", name, "--", "true"])
    assert r.exit_code == 2
    assert r.output.startswith("Error: step name") and "hook" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert list(open_db()["steps"].rows) == []


@pytest.mark.parametrize("args, name, other", [
    (["-n", "--", "true"], "-n", "n"),
    (["--name", "--", "true"], "--name", "name"),
    (["-n", "true"], "-n", "n"),
    (["--", "-n", "--", "true"], "-n", "n"),  # the name after a --: no way around the rule
    (["-", "--", "true"], "-", "mine"),
])
def test_a_step_name_that_begins_with_a_dash_is_refused_in_words(args, name, other):
    """`step run -n -- CMD` said only "bad step name '-n'" (and `step run -- -n -- CMD` "no step
    name before --"): a name that begins with '-' reads as an option, so no command line can give
    it. It is refused in one line that says so and names one to use, before anything is recorded;
    the library refuses it too, so that no such step is recorded by any caller."""
    invoke("start", "--objective", "x")
    r = CliRunner().invoke(cli, ["step", "run", *args])
    assert r.exit_code == 2, r.output
    assert r.output == (f"Error: bad step name {name!r}: it begins with '-', which the command "
                        "line reads as an option; give the step a name that begins otherwise, "
                        f"e.g. {other!r}\n")
    db = open_db()
    _library_refuses_the_name(db, name, "begins with '-'")
    r = CliRunner().invoke(cli, ["step", "run", other, "--", "true"])  # NAME -- CMD still works
    assert r.exit_code == 0, r.output
    assert [s["name"] for s in db["steps"].rows] == [other]
