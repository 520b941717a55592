"""Regenerate (or check) the generated parts of docs/architecture.md from the code.

Run: python benchmarks/architecture_doc.py [--check]

Four blocks of the page are written from the code, between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` lines: ``commands`` (every CLI command and subcommand with the first line of
its help, from the click group), ``implementations`` (the registry of ``sessionkit.attention``),
``schema`` (every table of a new database with its columns and the migration that made it, from a
database migrated in memory) and ``add-step`` (the example step's module and template,
``tests/data/hello_step.py`` and ``tests/data/hello.md.j2``, which ``tests/test_add_step.py``
registers and runs). With ``--check`` nothing is written and the exit status is 1 when the page is
out of date (the test suite runs this).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def command_rows() -> str:
    import click

    from sessionkit.cli import cli

    rows = ["| command | what it does |", "|---|---|"]

    def walk(group: click.Group, path: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            summary = command.get_short_help_str(limit=120).replace("|", "\\|")
            rows.append(f"| `{path} {name}` | {summary} |")
            if isinstance(command, click.Group):
                walk(command, f"{path} {name}")

    walk(cli, "sessionkit")
    return "\n".join(rows)


def implementation_rows() -> str:
    from sessionkit.attention import IMPLEMENTATIONS

    rows = ["| name | bench table header | SDPA backend forced | reference | what it is |",
            "|---|---|---|---|---|"]
    for impl in IMPLEMENTATIONS:
        forced = f"`{impl.sdpa_backend}`" if impl.sdpa_backend else "-"
        reference = "yes" if impl.reference else ""
        rows.append(f"| `{impl.name}` | {impl.short} | {forced} | {reference} | {impl.description} |")
    return "\n".join(rows)


def schema_rows() -> str:
    import sqlite3

    import sqlite_utils

    from sessionkit.schema import MIGRATIONS

    db = sqlite_utils.Database(sqlite3.connect(":memory:"))
    made_by: dict[str, str] = {}
    for fn in MIGRATIONS:  # the order sessionkit.db applies them in
        fn(db)
        for table in db.table_names():  # in the order they were created
            made_by.setdefault(table, fn.__name__)
    rows = ["| table | made by | columns |", "|---|---|---|"]
    for table in sorted(made_by, key=lambda t: t.startswith("_")):  # stable: creation order
        columns = ", ".join(c.name for c in db[table].columns)
        rows.append(f"| `{table}` | `{made_by[table]}` | {columns} |")
    return "\n".join(rows)


def example_step() -> str:
    data = ROOT / "tests" / "data"
    module = (data / "hello_step.py").read_text()
    template = (data / "hello.md.j2").read_text()
    return (f"```python\n{module}```\n\nIts template, `templates/steps/hello.md.j2` "
            f"(`tests/data/hello.md.j2`):\n\n```jinja\n{template}```")


BLOCKS = {"commands": command_rows, "implementations": implementation_rows, "schema": schema_rows,
          "add-step": example_step}


def regenerate(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no '<!-- generated: {name} -->' block")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the page is current")
    args = parser.parse_args()
    text = DOC.read_text()
    new = regenerate(text)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python benchmarks/architecture_doc.py", file=sys.stderr)
            return 1
        print(f"{DOC} is current")
        return 0
    if new != text:
        DOC.write_text(new)
        print(f"wrote {DOC}")
    else:
        print(f"{DOC} is current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
