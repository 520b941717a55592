"""README.md documents every command and every registered step, every command has help, and the
README's test command is CI's."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sessionkit.cli import cli
from sessionkit.steps import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def command_objects(group: click.Group, path: tuple[str, ...] = ("sessionkit",)):
    """(command path, click command) for every command and subcommand, groups included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from command_objects(command, (*path, name))


COMMANDS = dict(command_objects(cli))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_in_the_readme(command):
    parts = command.split()
    if len(parts) == 3 and parts[1] == "pattern":
        # the group's subcommands share one row: "sessionkit pattern list|show ID|apply ID"
        row = next(line for line in README.splitlines() if "`sessionkit pattern list" in line)
        assert parts[2] in row.split("`")[1], command
    else:
        assert f"`{command}" in README, f"{command} is not documented in README.md"


@pytest.mark.parametrize("step", sorted(REGISTRY))
def test_every_step_is_in_the_readme(step):
    assert f"sessionkit step {step}" in README


def test_the_profile_row_names_every_implementation():
    """README's `step profile` row lists the choices of --kernel: every registered implementation."""
    from sessionkit.attention import IMPLS

    row = next(line for line in README.splitlines() if line.startswith("| `sessionkit step profile"))
    choices = "\\|".join(IMPLS)  # a | inside a Markdown table cell is written \|
    assert f"[--kernel {choices}]" in row, row


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m pytest -q"
    assert f"&& {test_command}\n" in README
    assert ci.rstrip().splitlines()[-1] == test_command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    """Each command says what it does in ``--help``: a summary line and a non-empty help text."""
    obj = COMMANDS[command]
    assert (obj.help or "").strip(), f"{command} has no help text"
    assert obj.get_short_help_str(limit=80).strip(), f"{command} has no summary line"
    args = command.split()[1:] + ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert obj.get_short_help_str(limit=300).split()[0] in result.output


def test_architecture_page_is_current():
    """docs/architecture.md's command list and table list are what the code has."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "architecture_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_architecture_page_names_paths_that_exist():
    """Every path the page names (a `...` span with a slash) exists, and the five questions a
    newcomer asks are answered there."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    # paths from the repository root, or (in the layer table) from the sessionkit package;
    # .sessionkit/sessions.db is where a database is made at run time; hello.py and hello.md.j2
    # are where the example step would go in the package (it is in tests/data/)
    paths = {p for p in re.findall(r"`([\w./-]+/[\w./-]*)`", page)
             if not p.startswith(".sessionkit/")
             and p not in ("sessionkit/steps/hello.py", "templates/steps/hello.md.j2")}
    assert len(paths) > 15
    missing = sorted(p for p in paths if not ((ROOT / p).exists() or (ROOT / "sessionkit" / p).exists()))
    assert missing == []
    for question in ("A session is stored", "A step is defined", "The kernel lives",
                     "A report is rendered", "An SDPA backend is added"):
        assert f"**{question}**" in page


def test_readme_configuration_example_is_read(tmp_path):
    """The `[tool.sessionkit]` example of README.md's Configuration section parses, and `start`
    takes its objective, plan, budget, rates and step budgets from it."""
    import re

    from sessionkit.config import load_config
    from sessionkit.session_defaults import resolve_start_options

    section = README.split("## Configuration", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "pyproject.toml").write_text(example)
    cfg = load_config(tmp_path)
    assert cfg.telemetry_interval_s == 0.1 and cfg.raw["hooks"]["before"] == [["nvidia-smi", "-L"]]
    options = resolve_start_options(start=tmp_path)
    assert options == {"objective": "D128 causal past SDPA",
                       "plan": ["preflight", "build", "correctness", "bench"], "budget_s": 7200.0,
                       "gpu_rate": 2.49, "ai_rate": 6.0, "step_budgets": {"build": 60.0}}
    from sessionkit.bench.grids import load_grid

    assert [c.spec for c in load_grid("mine", start=tmp_path)] == [
        "1,8,1024,1024,64,fp16,0", "4,16,4096,4096,128,bf16,1"]


def test_the_readme_names_every_sm90_example_report():
    """README's list of the sm90 reports in docs/examples/ (one per kernel version) names each of
    them (`session-sm90-v4.md`, then `-v5` ...), so a new version's report is not left out."""
    import re

    listed = README.split("one report per kernel version", 1)[1].split("\n\n", 1)[0]
    for path in sorted((ROOT / "docs" / "examples").glob("session-sm90-v*.md")):
        version = re.fullmatch(r"session-sm90-(v\d+)\.md", path.name)
        if version:  # the v9 checks report is named on its own
            named = (f"`{path.name}`", f"`-{version[1]}`")
            assert any(n in listed for n in named), f"{path.name} is not named in README's list"
