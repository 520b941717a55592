"""One rule for exit codes: a well-formed request for something that is not there (a session id,
number or name; a pattern id; a database file) exits 1 from every command; a usage error (a
malformed value, one outside the choices a command offers) exits 2, as click's own."""

from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner
from fixtures_db import build_fixture_db

from sessionkit.cli import cli
from sessionkit.errors import SessionkitError, SessionNotFound, StepNotFound, UsageError

# The parameters that name a session or a pattern, by the name the commands give them.
REFERENCE_PARAMS = {"session_ref", "session_refs", "session", "a", "b", "pattern_id"}

UNKNOWN_SESSION = "Error: no session matches '99'; see 'sessionkit sessions'"
UNKNOWN_PATTERN = "Error: no pattern with id 'nope'; 'sessionkit pattern list' shows the ids"


def cases(tmp_path):
    """(command path, parameter) -> the arguments that give it an unknown reference."""
    return {
        ("show", "session_ref"): ["show", "99"],
        ("export", "session_ref"): ["export", "99"],
        ("end", "session_ref"): ["end", "--outcome", "x", "--session", "99"],
        ("report", "session_ref"): ["report", "99", "--no-plots"],
        ("env show", "session"): ["env", "show", "99"],
        ("env diff", "a"): ["env", "diff", "99", "1"],
        ("env diff", "b"): ["env", "diff", "1", "99"],
        ("compare", "a"): ["compare", "99", "1"],
        ("compare", "b"): ["compare", "1", "99"],
        ("mlflow push", "session_refs"): ["mlflow", "push", "1", "99", "--no-plots",
                                          "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        ("pattern show", "pattern_id"): ["pattern", "show", "nope"],
        ("pattern apply", "pattern_id"): ["pattern", "apply", "nope"],
    }


def reference_params() -> set[tuple[str, str]]:
    """Every (command path, parameter) of the CLI that takes a session or pattern reference."""
    found = set()

    def walk(group, path, ctx):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                walk(command, [*path, name], click.Context(command, info_name=name, parent=ctx))
                continue
            found.update((" ".join([*path, name]), p.name) for p in command.params
                         if p.name in REFERENCE_PARAMS)

    walk(cli, [], click.Context(cli, info_name="sessionkit"))
    return found


def test_every_command_exits_1_for_an_unknown_session_or_pattern(tmp_path):
    """`show 99` exited 1 and `pattern apply nope` 2. Every command that takes a session or a
    pattern, given one that is not there, prints one line and exits 1."""
    build_fixture_db(os.environ["SESSIONKIT_DB"])
    table = cases(tmp_path)
    assert reference_params() == set(table), "a command takes a reference this test does not try"
    for (command, param), args in sorted(table.items()):
        result = CliRunner().invoke(cli, args)
        expected = UNKNOWN_PATTERN if param == "pattern_id" else UNKNOWN_SESSION
        assert (result.exit_code, result.output) == (1, expected + "\n"), (command, param)
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was pushed


def test_a_missing_database_file_exits_1_for_reading_and_for_merging(tmp_path):
    missing = tmp_path / "missing.db"
    for args in (["--db", str(missing), "sessions"], ["merge", str(missing)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: no database at {missing}")
        assert result.output.count("\n") == 1


def test_usage_errors_still_exit_2():
    assert CliRunner().invoke(cli, ["run", "--objective", "x", "--plan", "nope"]).exit_code == 2
    assert CliRunner().invoke(cli, ["show", "1", "2"]).exit_code == 2
    assert CliRunner().invoke(cli, ["nope"]).exit_code == 2


def test_exit_status_puts_not_found_before_usage():
    from sessionkit.errors import NotFound, PatternNotFound, exit_status

    class NotFoundAndUsage(UsageError, NotFound):
        pass

    assert exit_status(SessionNotFound("x")) == exit_status(PatternNotFound("x")) == 1
    assert exit_status(NotFoundAndUsage("x")) == 1
    assert exit_status(UsageError("x")) == exit_status(StepNotFound("x")) == 2
    assert exit_status(SessionkitError("x")) == 1


@pytest.mark.parametrize("args", [["pattern", "show", "nope"], ["show", "99"]])
def test_not_found_in_a_real_process_exits_1(tmp_path, args):
    import subprocess
    import sys

    build_fixture_db(os.environ["SESSIONKIT_DB"])
    res = subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and res.stdout == ""
