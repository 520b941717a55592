"""Adding a step takes its own module and one registry entry, nothing else (docs/architecture.md)."""

from __future__ import annotations

import sys
import textwrap

from click.testing import CliRunner

from sessionkit import steps
from sessionkit.cli import cli
from sessionkit.db import open_db

HELLO = '''
from dataclasses import dataclass

from sessionkit.steps import Step, StepContext, StepResult
from sessionkit.steps.typed import StepOptions, option


@dataclass(frozen=True)
class HelloOptions(StepOptions):
    who: str = option("world", help="Whom to greet.")


class HelloStep(Step):
    name = "hello"
    description = "Say hello and record one metric."
    budget_s = 5.0
    options_type = HelloOptions

    def run(self, context: StepContext) -> StepResult:
        options = self.parse_options(context.options)
        context.progress.note(f"hello {options.who}")
        context.metric("greetings", 1, unit="count")
        return StepResult("passed", message="said hello", summary={"who": options.who})
'''


def test_a_new_step_needs_only_its_module_and_a_registry_entry(tmp_path, monkeypatch):
    (tmp_path / "hello_step.py").write_text(textwrap.dedent(HELLO))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(steps.REGISTRY, "hello", "hello_step:HelloStep")
    db_path = str(tmp_path / "s.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", db_path, "start", "--objective", "greet"]).exit_code == 0

    listed = runner.invoke(cli, ["--db", db_path, "step", "list"])
    assert listed.exit_code == 0 and "hello" in listed.output
    helped = runner.invoke(cli, ["--db", db_path, "step", "hello", "--help"])
    assert helped.exit_code == 0 and "--who" in helped.output and "Whom to greet." in helped.output
    result = runner.invoke(cli, ["--db", db_path, "step", "hello", "--who", "reader"])
    assert result.exit_code == 0, result.output

    db = open_db(db_path)
    row = db.execute("SELECT status, message, summary, id FROM steps WHERE name = 'hello'").fetchone()
    assert row[:3] == ("passed", "said hello", '{"who": "reader"}')
    assert db.execute("SELECT key, value, unit FROM metrics WHERE step_id = ?", [row[3]]).fetchall() \
        == [("greetings", 1.0, "count")]
    db.conn.close()
    sys.modules.pop("hello_step", None)
