"""Bad input gets one line, never a traceback, and never a half-made row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from small_disk import run_on_small_disk, session_on_tmpfs
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionkit.cli import cli
from sessionkit.config import load_config
from sessionkit.db import open_db
from sessionkit.errors import ConfigError


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, code=None):
    assert result.exit_code != 0 if code is None else result.exit_code == code, result.output
    text = result.output.strip()
    assert text.startswith("Error: ") and "\n" not in text and "Traceback" not in text, text


@pytest.mark.parametrize("args", [["export", "last"], ["export", "last", "--json"],
                                  ["report", "last", "--no-plots"], ["report", "last", "--json"],
                                  ["history"], ["patterns", "--json"]])
def test_an_output_into_missing_folders_makes_them(tmp_path, args):
    """Every -o makes the missing folders of its file (export refused them while report made
    them)."""
    assert invoke("start", "--objective", "x").exit_code == 0
    out = tmp_path / "no" / "such" / "x.out"
    result = invoke(*args, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == f"Wrote {out}\n"
    text = out.read_text()
    if args[0] == "export":
        assert json.loads(text)["session"]["objective"] == "x"
    elif "--json" in args:
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("# ")


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_output_below_a_file_is_one_line(tmp_path, command):
    assert invoke("start", "--objective", "x").exit_code == 0
    (tmp_path / "plain").write_text("a file where a folder would be made\n")
    result = invoke(command, "last", "-o", str(tmp_path / "plain" / "sub" / "x.json"))
    one_line_error(result, 1)
    assert str(tmp_path / "plain" / "sub") in result.output
    assert (tmp_path / "plain").read_text() == "a file where a folder would be made\n"


@pytest.mark.parametrize("name", ["a" * 300, "é" * 150, "x\x1by"])
def test_an_unusable_step_name_leaves_no_row(name):
    assert invoke("start", "--objective", "x").exit_code == 0
    result = invoke("step", "run", name, "--", "true")
    one_line_error(result, 2)
    assert open_db()["steps"].count == 0


def test_step_run_without_a_name_is_a_usage_error_and_records_nothing():
    """``step run -- echo hi``: click would take ``echo`` as the name and run ``hi``."""
    assert invoke("start", "--objective", "x").exit_code == 0
    result = invoke("step", "run", "--", "echo", "hi")
    one_line_error(result, 2)
    assert "no step name before --" in result.output
    assert open_db()["steps"].count == 0


@pytest.mark.parametrize("args, words", [
    (["--db", "DB", "--", "echo", "hi"], "no step name before --"),  # click took echo as the name
    (["x", "--db", "--", "echo", "hi"], "--db needs a path"),  # DB was x, the name echo
    (["", "--", "true"], "a step name must not be empty"),  # was recorded as 'run'
])
def test_step_run_with_its_name_missing_or_empty_records_nothing(tmp_path, args, words):
    db = str(tmp_path / "s.db")
    assert invoke("--db", db, "start", "--objective", "x").exit_code == 0
    result = invoke("step", "run", *[db if a == "DB" else a for a in args])
    one_line_error(result, 2)
    assert words in result.output
    assert open_db(db)["steps"].count == 0


def test_step_run_options_may_stand_on_either_side_of_the_name(tmp_path):
    db = str(tmp_path / "s.db")
    assert invoke("--db", db, "start", "--objective", "x").exit_code == 0
    for args in (["a", "--db", db, "--", "true"], ["--db", db, "b", "--", "true"],
                 [f"--db={db}", "c", "--", "true"], ["d", "--db", db, "sh", "-c", "true", "--"]):
        assert invoke("step", "run", *args).exit_code == 0, args
    rows = list(open_db(db).query("SELECT name, command FROM steps ORDER BY seq"))
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[3]["command"] == '["sh", "-c", "true", "--"]'


def test_run_with_an_unknown_step_in_its_plan_is_a_usage_error():
    result = invoke("run", "--objective", "x", "--plan", "preflight,nosuchstep", "--no-hooks",
                    "--no-plots")
    one_line_error(result, 2)
    assert "nosuchstep" in result.output


def test_run_names_only_the_steps_a_plan_can_hold():
    """The list after an unknown name leaves out 'run', which a plan refuses ("needs a command")."""
    result = invoke("run", "--objective", "x", "--plan", "preflight,nosuchstep", "--no-hooks")
    one_line_error(result, 2)
    assert result.output.strip() == ("Error: no step named 'nosuchstep'; a plan takes: bench, build, "
                                     "correctness, preflight, profile")


@pytest.mark.parametrize("plan, words", [(",", "it names no step"), ("", "it names no step"),
                                         (" ", "it names no step"),
                                         ("build,build", "a step appears twice in the plan"),
                                         ("build,-n", "bad step name '-n' in plan: it begins with '-'"),
                                         ("build," + "x" * 101, "101 characters, and a step's name has "
                                          "at most 100")])
def test_start_refuses_the_plans_run_refuses(plan, words):
    """`start --plan` took an empty plan and a step twice, which `run` refuses. `--plan ""` was no
    plan to `start` and the default plan to `run`: both refuse it now. A name no step can carry
    (over 100 characters) would leave the plan unmet for good: refused too."""
    for command in ("start", "run"):
        result = invoke(command, "--objective", "x", "--plan", plan, *(
            ["--no-hooks", "--no-plots"] if command == "run" else []))
        one_line_error(result, 2)
        assert words in result.output
        assert not os.path.exists(".sessionkit/sessions.db") or open_db()["sessions"].count == 0


@pytest.mark.parametrize("ref", ["", " ", "\t"])
@pytest.mark.parametrize("command", [["show"], ["report", "--no-plots"], ["export"],
                                     ["end", "--outcome", "x", "--session"], ["compare", "1"]])
def test_an_empty_session_reference_is_refused_not_read_as_the_default(command, ref):
    """`show ""` showed the last session and `end --session ""` ended the open one."""
    assert invoke("start", "first", "--objective", "x").exit_code == 0
    assert invoke("end", "--outcome", "done").exit_code == 0
    assert invoke("start", "second", "--objective", "y").exit_code == 0
    args = [*command, ref] if command[0] != "compare" else ["compare", ref, "1"]
    result = invoke(*args)
    one_line_error(result, 2)
    assert "empty session reference" in result.output
    assert [r["status"] for r in open_db().query("SELECT status FROM sessions ORDER BY number")] \
        == ["failed", "open"]


def test_ending_a_session_its_state_refuses_exits_1():
    """A well-formed `end` that the session's state refuses is not a usage error (exit 1)."""
    assert invoke("start", "--objective", "x").exit_code == 0
    assert invoke("end", "--outcome", "done").exit_code == 0
    result = invoke("end", "--outcome", "again", "--session", "1")
    one_line_error(result, 1)
    assert "session 1 is already ended" in result.output


@pytest.mark.parametrize("name", ["evil\x1b[2Jname", "tab\there", "new\nline", "bell\x07"])
def test_a_session_name_with_control_characters_is_refused(name):
    """As a step name is: the terminal would act on it, and each view showed it another way."""
    for command in (["start", name, "--objective", "x"],
                    ["run", name, "--objective", "x", "--no-hooks", "--no-plots"]):
        result = invoke(*command)
        one_line_error(result, 2)
        assert "control characters" in result.output
    assert not os.path.exists(".sessionkit/sessions.db") or open_db()["sessions"].count == 0


def test_an_output_whose_folder_takes_no_new_file_says_so():
    """A file is written beside its target and renamed over it; where no file can be made there
    (/proc, even for root) the one line says that, not only the errno's words ("No such file or
    directory" for a file that is there)."""
    if not os.path.isfile("/proc/version"):
        pytest.skip("needs Linux's /proc")
    assert invoke("start", "--objective", "x").exit_code == 0
    result = invoke("export", "last", "-o", "/proc/version")
    one_line_error(result, 1)
    assert "cannot write /proc/version: no new file can be made in its folder /proc" in result.output



def test_a_step_budget_for_a_name_no_step_can_carry_is_refused():
    """`--step-budget -n=1m` was taken, though no step can be called '-n'."""
    result = invoke("start", "--objective", "x", "--step-budget", "-n=1m")
    one_line_error(result, 2)
    assert "bad step name '-n' in step budgets: it begins with '-'" in result.output
    assert not os.path.exists(".sessionkit/sessions.db") or open_db()["sessions"].count == 0


def test_a_hundred_character_step_name_of_wide_letters_runs():
    assert invoke("start", "--objective", "x").exit_code == 0
    assert invoke("step", "run", "界" * 100, "--", "true").exit_code == 0


@pytest.mark.parametrize("text", ['tool = "x"', "tool = 5", '[tool]\nsessionkit = "x"',
                                  "[tool.sessionkit]\nobjective = 5",
                                  "[tool.sessionkit]\nstep_budgets = 5"])
def test_a_pyproject_of_the_wrong_shape(tmp_path, text):
    (tmp_path / "pyproject.toml").write_text(text + "\n")
    for args in (["start", "--objective", "x"], ["run", "--objective", "x"],
                 ["step", "bench", "--grid", "quick"]):
        one_line_error(invoke(*args))


TOML_VALUES = st.one_of(
    st.integers(-10, 10).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(['"x"', '"2h"', '"-5m"', "true", "[]", '["a", 1]', "[[1]]", "{}", "{a = 1}",
                     '{build = "60s"}', "{build = 5}", '{build = "x"}', '["preflight"]', '"nan"']))
KEYS = ["objective", "plan", "budget", "gpu_rate", "ai_rate", "step_budgets", "telemetry_interval",
        "hooks", "grids"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=TOML_VALUES)
def test_any_value_of_any_key_is_loaded_or_refused_in_one_line(tmp_path, key, value):
    from sessionkit.bench.grids import load_project_grids
    from sessionkit.session_run import parse_hooks

    (tmp_path / "pyproject.toml").write_text(f"[tool.sessionkit]\n{key} = {value}\n")
    try:
        cfg = load_config(tmp_path)
        parse_hooks(cfg.raw.get("hooks"))
        load_project_grids(tmp_path)
    except ConfigError:
        pass
    except Exception as exc:  # noqa: BLE001 - only the typed one-line errors are allowed
        from sessionkit.errors import UsageError
        assert isinstance(exc, UsageError), f"{key} = {value}: {type(exc).__name__}: {exc}"


def test_keys_match_the_config_module():
    from sessionkit.config import KNOWN_KEYS

    assert sorted(KEYS) == sorted(KNOWN_KEYS)


@pytest.mark.parametrize("typo, hint", [("budjet", "did you mean 'budget'?"),
                                        ("step_budget", "did you mean 'step_budgets'?"),
                                        ("colour", "known keys: objective")])
def test_an_unknown_key_is_refused_in_one_line_naming_the_closest(tmp_path, monkeypatch, typo,
                                                                  hint):
    """A typo in [tool.sessionkit] is an error, not a setting silently ignored; the CLI says so in
    one line and opens nothing."""
    (tmp_path / "pyproject.toml").write_text(f'[tool.sessionkit]\n{typo} = "2h"\n')
    with pytest.raises(ConfigError, match=f"unknown key '{typo}'") as info:
        load_config(tmp_path)
    assert hint in str(info.value) and "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)
    result = invoke("start", "--objective", "x")
    one_line_error(result)
    assert typo in result.output


def test_run_checks_every_option_before_opening_the_session():
    result = invoke("run", "--objective", "x", "--grid", "nosuch", "--no-hooks", "--no-plots")
    one_line_error(result, 2)
    assert "nosuch" in result.output
    assert open_db(create=True)["sessions"].count == 0


def test_run_force_opens_a_session_beside_one_left_open(tmp_path):
    assert invoke("start", "--objective", "preempted run").exit_code == 0
    refused = invoke("run", "--objective", "again", "--plan", "preflight", "--no-hooks", "--no-plots")
    one_line_error(refused)
    assert "--force" in refused.output
    forced = invoke("run", "--objective", "again", "--plan", "preflight", "--no-hooks", "--no-plots",
                    "--force")
    assert "Error: no such option" not in forced.output
    assert open_db()["sessions"].count == 2


def test_a_skipped_step_exits_125_for_git_bisect():
    import torch

    if torch.cuda.is_available():
        pytest.skip("correctness runs here; the skip needs a machine without CUDA")
    assert invoke("start", "--objective", "bisect").exit_code == 0
    result = invoke("step", "correctness")
    assert "skipped" in result.output.lower()
    assert result.exit_code == 125


ATOMIC = session_on_tmpfs("2m") + textwrap.dedent("""
    "$2" -m sessionkit history -o history.md >/dev/null || exit 79
    "$2" -m sessionkit export last -o export.json >/dev/null || exit 80
    cp history.md /dev/shm/ 2>/dev/null; sha256sum history.md export.json > "$3"
    head -c 3000000 /dev/zero > filler 2>/dev/null   # the disk is now full
    "$2" -m sessionkit history -o history.md; echo "EXIT $?"
    "$2" -m sessionkit export last -o export.json; echo "EXIT $?"
    sha256sum -c "$3" && echo INTACT
    ls -a
""")


def test_report_files_are_replaced_whole_or_not_at_all(tmp_path):
    result = run_on_small_disk(ATOMIC, tmp_path, str(tmp_path / "sums"), timeout=120)
    out, err = result.stdout, result.stderr
    assert out.count("EXIT 1") == 2, out + err
    assert "INTACT" in out, out + err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("Error: ")] and all(
        line.startswith("Error: ") and "no space left on device" in line
        for line in err.splitlines() if line.strip()), err
    assert ".tmp" not in out  # no temporary file left behind


PLOTS_ATOMIC = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=3m tmpfs "$1" || exit 77
    cd "$1"
    "$2" -c "import fixtures_db; fixtures_db.build_fixture_db('$1/f.db')" || exit 78
    "$2" -m sessionkit --db f.db report 2 -o r.md >/dev/null || exit 79
    ls r*.png >/dev/null || exit 80
    for png in r*.png; do echo "an earlier image" > "$png"; done   # smaller than the new ones
    sha256sum r.md r*.png > "$3"
    head -c 3000000 /dev/zero > filler 2>/dev/null   # the disk is now full
    "$2" -m sessionkit --db f.db report 2 -o r.md; echo "EXIT $?"
    sha256sum -c "$3" && echo INTACT
    ls -a
""")


def test_report_plots_are_replaced_whole_or_not_at_all(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the 'plots' extra)")
    result = run_on_small_disk(PLOTS_ATOMIC, tmp_path, str(tmp_path / "sums"), timeout=120)
    out, err = result.stdout, result.stderr
    assert "EXIT 1" in out and "INTACT" in out, out + err
    assert "Traceback" not in err
    assert err.strip().startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "no space left on device" in err and ".tmp" not in out


def test_report_plots_into_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the 'plots' extra)")
    from fixtures_db import build_fixture_db

    build_fixture_db(tmp_path / "f.db").conn.close()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "f.db"), "report", "2", "-o",
                                      str(blocker / "sub" / "r.md")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.output.startswith("Error: cannot make the folder") and \
        len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("args, named", [
    ([b"start", b"\xff", b"--objective", b"o"], b"argument 2"),
    ([b"start", b"--objective", b"o\xfe"], b"the value of --objective"),
    ([b"end", b"--outcome", b"a\xff"], b"the value of --outcome"),
    ([b"end", b"-ma\xff"], b"the value of -m"),
    ([b"pattern", b"apply", b"profile-first", b"--note=\xff"], b"the value of --note"),
    ([b"show", b"\xff"], b"argument 2"),
    ([b"export", b"\xff"], b"argument 2"),
    ([b"report", b"\xff"], b"argument 2"),
    ([b"env", b"diff", b"\xff", b"1"], b"argument 3"),
])
def test_arguments_that_are_not_utf8_are_a_usage_error(args, named):
    subprocess.run([sys.executable, "-m", "sessionkit", "start", "--objective", "o"], check=True,
                   capture_output=True, timeout=60)
    res = subprocess.run([sys.executable.encode(), b"-m", b"sessionkit", *args], capture_output=True,
                         timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count(b"\n") == 1 and res.stderr.startswith(b"Error: " + named), res.stderr
    assert b"not valid UTF-8" in res.stderr and b"Traceback" not in res.stderr


def test_command_after_double_dash_keeps_its_bytes():
    subprocess.run([sys.executable, "-m", "sessionkit", "start", "--objective", "o"], check=True,
                   capture_output=True, timeout=60)
    res = subprocess.run([sys.executable.encode(), b"-m", b"sessionkit", b"step", b"run", b"x", b"--",
                          b"echo", b"a\xff"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert b"a\xff\n" in res.stdout


@pytest.mark.parametrize("content", [b"\xff[tool.sessionkit]\n",
                                     b"[tool.sessionkit]\nplan = " + b"[" * 3000 + b"]" * 3000 + b"\n",
                                     b'[tool.sessionkit]\ntelemetry_interval = "2h"\n'])
def test_a_pyproject_sessionkit_cannot_use_is_one_line(tmp_path, monkeypatch, content):
    """Not UTF-8, nested past the TOML parser's depth, or an interval past an hour: one line."""
    (tmp_path / "pyproject.toml").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    result = invoke("start", "--objective", "x")
    one_line_error(result)
    assert "pyproject.toml" in result.output


DAMAGE = [
    ("UPDATE sessions SET started_at = 'garbage'", "sessions"),
    ("UPDATE sessions SET ended_at = '2026-13-45T99:00'", "sessions"),
    ("UPDATE sessions SET started_at = '', ended_at = ''", "sessions"),
    ("UPDATE sessions SET gpu_rate_usd_per_h = 'x', budget_s = 'abc', ai_rate_usd_per_h = -5",
     "sessions"),
    ("UPDATE steps SET duration_s = 'abc', budget_s = 'zz', exit_code = 'x'", "steps"),
    ("UPDATE steps SET started_at = 'nope', ended_at = 'never', heartbeat_at = 'x'", "steps"),
    ("UPDATE env_snapshots SET taken_at = 'zz'", "env_snapshots"),
]


@pytest.mark.parametrize("sql, table", DAMAGE)
def test_damaged_times_and_numbers_are_read_without_a_traceback(sql, table):
    """Rows written elsewhere (a merged database, a hand edit) with timestamps or numbers that
    are not: every reading command still answers, with what it can show."""
    from sessionkit.envinfo import store_snapshot
    from sessionkit.timefmt import now_iso

    assert invoke("start", "--objective", "damaged", "--gpu-rate", "2", "--budget", "1h").exit_code == 0
    assert invoke("step", "run", "x", "--", "true").exit_code == 0
    db = open_db()
    session_id = db.execute("SELECT id FROM sessions").fetchone()[0]
    store_snapshot(db, {"host": "h", "driver": "580"}, session_id=session_id, step_id=None,
                   taken_at=now_iso())  # as a preflight stores, without probing this machine
    assert invoke("end", "--outcome", "done").exit_code in (0, 1)
    assert db[table].count > 0
    with db.conn:
        db.execute(sql)
    for args in (["sessions"], ["sessions", "--json"], ["show", "last"], ["export", "last"],
                 ["report", "last"], ["history"], ["patterns"], ["status", "--json"]):
        result = invoke(*args)
        assert "Traceback" not in result.output, (args, result.output[-2000:])
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception))


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "1e-400"])
@pytest.mark.parametrize("command", [["step", "run", "x", "--", "true"], ["run", "--plan", "preflight"]])
def test_a_bad_progress_interval_is_one_line_and_records_nothing(value, command):
    """``$SESSIONKIT_PROGRESS_EVERY`` is read by the heartbeat thread: text once killed that
    thread with a traceback (no heartbeat for the rest of the step), and zero or less made it spin,
    writing the heartbeat and a progress line thousands of times a second."""
    assert invoke("start", "--objective", "x").exit_code == 0
    out = subprocess.run([sys.executable, "-m", "sessionkit", *command],
                         env={**os.environ, "SESSIONKIT_PROGRESS_EVERY": value},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    said = out.stderr.strip()
    assert said.startswith("Error: SESSIONKIT_PROGRESS_EVERY") and "\n" not in said, said
    assert "Traceback" not in out.stdout
    db = open_db()
    assert db["steps"].count == 0 and db["sessions"].count == 1


@pytest.mark.parametrize("value", ["", " ", "0.5", "inf"])
def test_a_usable_or_blank_progress_interval_runs_the_step(value):
    assert invoke("start", "--objective", "x").exit_code == 0
    out = subprocess.run([sys.executable, "-m", "sessionkit", "step", "run", "x", "--", "true"],
                         env={**os.environ, "SESSIONKIT_PROGRESS_EVERY": value},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert [r["status"] for r in open_db()["steps"].rows] == ["passed"]


@pytest.mark.parametrize("args", [["report", "-o", ""], ["history", "-o", ""], ["patterns", "-o", ""],
                                  ["export", "last", "-o", ""], ["--db", "", "sessions"],
                                  ["sessions", "--db", ""]])
def test_an_empty_path_is_a_usage_error(args):
    """``-o ''`` was taken as the folder '.' ("cannot write .: Device or resource busy"), or by
    export as no -o at all; ``--db ''`` as no --db."""
    assert invoke("start", "--objective", "x").exit_code == 0
    result = invoke(*args)
    one_line_error(result, 2)
    assert "empty path" in result.output


@pytest.mark.parametrize("args", [
    ["--db", "a\nb.db", "sessions"],
    ["merge", "miss\ning.db"],
    ["--db", "new.db", "merge", "x\r\x1b[2Kfaked.db"],
    ["report", "-o", "link\nname.md"],
])
def test_a_path_with_control_characters_is_shown_escaped_in_the_one_line(tmp_path, args):
    """Typed errors printed the path they name as it was: a newline in a --db path or a merge
    source split the `Error:` line in two, and an escape sequence reached the terminal. They are
    shown escaped (``\\n``, ``\\x1b``), as usage errors already were."""
    if args[0] == "report":
        assert invoke("start", "--objective", "x").exit_code == 0
        os.symlink(tmp_path / "nowhere", tmp_path / "link\nname.md")
    result = CliRunner().invoke(cli, args, color=True)
    one_line_error(result, 1)
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "\\n" in result.output or "\\x1b" in result.output
