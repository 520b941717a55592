"""Adding a step takes its own module, its report template and one registry entry, and no other code
(docs/architecture.md, "How to add a step", shows the same example step).

The step is tests/data/hello_step.py with tests/data/hello.md.j2: typed options, a typed summary
and a template. This test adds nothing but the registry entry, then finds the step in
``sessionkit step --help``, its options in ``sessionkit step hello --help``, runs it, plans it in
``sessionkit run``, and reads its section in the report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionkit import steps
from sessionkit.cli import cli
from sessionkit.db import open_db

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def hello(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))
    monkeypatch.setitem(steps.REGISTRY, "hello", "hello_step:HelloStep")
    yield
    sys.modules.pop("hello_step", None)


def test_a_new_step_needs_only_its_module_template_and_registry_entry(hello, tmp_path):
    db_path = str(tmp_path / "s.db")
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, ["--db", db_path, *args], catch_exceptions=False)

    assert invoke("start", "--objective", "greet").exit_code == 0
    group_help = invoke("step", "--help")
    assert group_help.exit_code == 0
    assert any(line.split()[:1] == ["hello"] and "Say hello and record one metric" in line
               for line in group_help.output.splitlines()), group_help.output
    assert "hello" in invoke("step", "list").output

    helped = invoke("step", "hello", "--help")
    assert helped.exit_code == 0
    assert "--who TEXT" in helped.output and "Whom to greet.  [default: world]" in helped.output
    assert "--times INTEGER RANGE" in helped.output and "[default: 1; 1<=x<=10]" in helped.output

    bad = invoke("step", "hello", "--times", "11")
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert bad.output.startswith("Error: Invalid value for '--times': 11 is not in the range 1<=x<=10.")

    assert invoke("step", "hello", "--who", "reader", "--times", "2").exit_code == 0
    assert invoke("step", "hello").exit_code == 0

    db = open_db(db_path)
    rows = db.execute("SELECT seq, status, message, options, summary, id FROM steps "
                      "WHERE name = 'hello' ORDER BY seq").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, "passed", "said hello"), (2, "passed", "said hello")]
    assert json.loads(rows[0][3]) == {"who": "reader", "times": 2}
    assert json.loads(rows[0][4]) == {"who": "reader", "greetings": 2}
    assert json.loads(rows[1][4]) == {"who": "world", "greetings": 1}
    assert db.execute("SELECT key, value, unit FROM metrics WHERE step_id = ? AND subject IS NULL",
                      [rows[0][5]]).fetchall() == [("greetings", 2.0, "count")]
    db.conn.close()

    report = invoke("report")
    assert report.exit_code == 0
    section = report.output.split("## Greetings\n", 1)[1].split("\n## ", 1)[0]
    assert section.split() == "### Step 1 Greeted reader 2 times. ### Step 2 Greeted world 1 time.".split()

    # In a plan, the step starts from the defaults its options dataclass declares.
    assert invoke("end", "--outcome", "greeted").exit_code == 0
    run = invoke("run", "--objective", "greet in a plan", "--plan", "hello", "--no-hooks",
                 "--no-plots", "-o", str(tmp_path / "run.md"))
    assert run.exit_code == 0, run.output
    text = (tmp_path / "run.md").read_text()
    assert "## Greetings\n\nGreeted world 1 time.\n" in text


def test_adding_the_step_changes_no_report_of_a_session_without_it(tmp_path, monkeypatch):
    """A step added later shows only where it ran: the report of a session that never ran it is the
    same with the step registered as without (so adding a step rewrites no report snapshot)."""
    db_path = str(tmp_path / "s.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", db_path, "start", "--objective", "x"]).exit_code == 0
    assert runner.invoke(cli, ["--db", db_path, "step", "run", "a", "--", "true"]).exit_code == 0
    # ended, so that the report holds no "so far" duration that moves between the two renders
    assert runner.invoke(cli, ["--db", db_path, "end", "--outcome", "done"]).exit_code == 0

    def report() -> str:
        result = runner.invoke(cli, ["--db", db_path, "report", "--no-plots"],
                               catch_exceptions=False)
        assert result.exit_code == 0
        return result.output

    before = report()
    monkeypatch.syspath_prepend(str(DATA))
    monkeypatch.setitem(steps.REGISTRY, "hello", "hello_step:HelloStep")
    try:
        after = report()
    finally:
        sys.modules.pop("hello_step", None)
    assert "No bench step in this session." in before  # built-in steps still say what was skipped
    assert after == before
    assert "Greetings" not in after
