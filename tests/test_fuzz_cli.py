"""Fuzzed command lines never produce a traceback: only usage errors or one-line errors."""

from __future__ import annotations

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionkit.cli import cli

COMMANDS = [["start"], ["status"], ["end"], ["sessions"], ["show"], ["export"], ["step", "list"],
            ["step", "run", "fz", "--", "true"], ["step", "run", "fz", "--", "false"], ["step"]]
OPTIONS = ["--objective", "--plan", "--budget", "--gpu-rate", "--ai-rate", "--step-budget", "--force",
           "--outcome", "--status", "--json", "--limit", "--db", "-o", "--session", "-m", "--help"]
WORDS = st.one_of(
    st.sampled_from(["1", "0", "-1", "last", "open", "2h", "1h30m", "nan", "inf", "$3", "x=1",
                     "build=60s", "passed", "abandoned", "", " ", "1e309", "999999999999999999999",
                     "preflight,,build", "\x00", "é", "--", "-"]),
    st.text(min_size=0, max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS),
       extra=st.lists(st.one_of(st.sampled_from(OPTIONS), WORDS), max_size=6),
       started=st.booleans())
def test_no_tracebacks(tmp_path, command, extra, started):
    runner = CliRunner()
    if started:
        runner.invoke(cli, ["start", "--objective", "fuzz", "--force"])
    args = list(command) + list(extra) if command[:2] != ["step", "run"] else list(command)
    if "--db" in args:  # keep fuzzed paths inside the test folder
        i = args.index("--db")
        if i + 1 < len(args):
            args[i + 1] = str(tmp_path / ("fz" + "".join(c for c in args[i + 1] if c.isalnum())))
    if "-o" in args:
        i = args.index("-o")
        if i + 1 < len(args):
            args[i + 1] = str(tmp_path / "out.json")
    result = runner.invoke(cli, args)
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    if result.exit_code != 0:
        last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
        assert last.startswith("Error:") or "Usage:" in result.output or args[:2] == ["step", "run"], \
            (args, result.output)


def test_huge_and_odd_numbers_are_clean_errors(tmp_path):
    """Numbers past SQLite's 64-bit integers, or digits that are not ASCII, never reach a query."""
    runner = CliRunner()
    for args in (["show", "999999999999999999999"], ["show", "²"], ["export", "9" * 30],
                 ["sessions", "--limit", "9" * 25]):
        result = runner.invoke(cli, args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert result.output.startswith("Error:") and "Traceback" not in result.output, args


def test_paths_with_a_nul_character_are_usage_errors(tmp_path):
    runner = CliRunner()
    for args in (["start", "--db", "\x00"], ["--db", "a\x00b", "status"], ["report", "-o", "x\x00"],
                 ["step", "bench", "--csv", "\x00"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "contains a NUL character" in result.output and "Traceback" not in result.output


STEP_RUN_WORDS = ["--db", "DB", "--db=DB", "--", "x", "true", "false", "", " ", "-", "-x", "--help",
                  "é", "--bogus", "a b"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(STEP_RUN_WORDS), max_size=7))
def test_step_run_argument_shapes_never_trace_back(tmp_path, words):
    """Whatever stands around NAME and `--` (options, empty names, a missing path), `step run`
    records a step under a real name or refuses in one line. Only `true`, `false` or words that
    are no program can run."""
    db = str(tmp_path / "fz.db")
    runner = CliRunner()
    runner.invoke(cli, ["--db", db, "start", "--objective", "fuzz", "--force"])
    args = ["step", "run", *[w.replace("DB", db) for w in words]]
    result = runner.invoke(cli, args)
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert result.exit_code in (0, 1, 2, 126, 127), (args, result.exit_code, result.output)
    from sessionkit.db import open_db

    names = [r[0] for r in open_db(db).execute("SELECT name FROM steps")]
    assert all(n.strip() and not n.startswith("-") for n in names), (args, names)
