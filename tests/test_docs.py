"""README.md documents every command and every registered step, and its test command is CI's."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from sessionkit.cli import cli
from sessionkit.steps import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def all_commands(group: click.Group, prefix: str = "sessionkit"):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix} {name}")


@pytest.mark.parametrize("command", sorted(set(all_commands(cli))))
def test_every_command_is_in_the_readme(command):
    parts = command.split()
    if len(parts) == 3 and parts[1] in ("pattern", "env"):
        # grouped forms are written "sessionkit pattern list|show ID|apply ID"
        assert f"sessionkit {parts[1]}" in README and parts[2] in README, command
    else:
        assert f"`{command}" in README, f"{command} is not documented in README.md"


@pytest.mark.parametrize("step", sorted(REGISTRY))
def test_every_step_is_in_the_readme(step):
    assert f"sessionkit step {step}" in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m pytest -q"
    assert f"&& {test_command}\n" in README
    assert ci.rstrip().splitlines()[-1] == test_command
