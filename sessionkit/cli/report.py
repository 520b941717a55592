"""Reports: ``report``, ``history``, ``patterns`` and ``pattern apply|list|show``."""

from __future__ import annotations

import click

from ..paramtypes import OutputPath
from .common import db_option, dumps_json, echo_json, json_option, open_db

def _out_option(plots: bool):
    """``-o FILE``; ``plots``: the report draws its plots beside FILE (``report`` does; ``history``
    and ``patterns`` draw none)."""
    where = "its missing folders made, plots beside it" if plots else "its missing folders made"
    tail = " (no plots)" if plots else ""
    return click.option("-o", "--output", "out", type=OutputPath(),
                        help=f"Write Markdown to this file ({where}) instead of printing; with "
                             f"--json, the JSON. '-' prints it, as without -o{tail}.")


def register(cli: click.Group) -> None:
    for command in (report, history, patterns, pattern):
        cli.add_command(command)


def _emit(result, as_json: bool, out=None) -> None:
    if as_json and out is not None:
        from ..atomic import write_atomic

        click.echo(f"Wrote {write_atomic(out, dumps_json(result.data) + chr(10), make_parents=True)}")
    elif as_json:
        echo_json(result.data)
    elif result.path is not None:
        for image in result.images:
            click.echo(f"plot: {image}")
        click.echo(f"Wrote {result.path}")
    else:
        click.echo(result.text, nl=False)


def _render(ctx, make, out, as_json: bool, *args, **kwargs) -> None:
    """Open the database for reading, call ``make(db, *args, out=..., **kwargs)`` (a function of
    :mod:`sessionkit.report`) and print its result: the Markdown, where it was written, or its
    data as JSON (printed, or written to ``out`` without the Markdown and its plots)."""
    db = open_db(ctx, read_only=True)
    _emit(make(db, *args, out=None if as_json else out, **kwargs), as_json, out)


def _report_command(fn):
    """A command that renders a whole-database report: ``-o``, ``--db`` and ``--json``."""
    for decorate in (click.pass_context, json_option, db_option, _out_option(plots=False),
                     click.command()):
        fn = decorate(fn)
    return fn


@click.command()
@click.argument("session_ref", metavar="[SESSION]", required=False)
@_out_option(plots=True)
@click.option("--no-plots", is_flag=True, help="Do not draw plots (with -o).")
@db_option
@json_option
@click.pass_context
def report(ctx, session_ref, out, no_plots, as_json):
    """A session's Markdown report. SESSION: number, id, name or 'last' (default: the open session,
    else the last one)."""
    from ..report import session_report

    _render(ctx, session_report, out, as_json, session_ref, plots=not no_plots)


@_report_command
def history(ctx, out, as_json):
    """All sessions in one table, and the trend of the last ones."""
    from ..report import history_report

    _render(ctx, history_report, out, as_json)


@_report_command
def patterns(ctx, out, as_json):
    """The pattern library, with the sessions that applied each pattern and its measured effect."""
    from ..report import patterns_report

    _render(ctx, patterns_report, out, as_json)


@click.group()
def pattern():
    """Apply, list or show lessons from the pattern library."""


@pattern.command("apply")
@click.argument("pattern_id", metavar="ID")
@click.option("--note", help="What was done, in a sentence.")
@db_option
@json_option
@click.pass_context
def pattern_apply(ctx, pattern_id, note, as_json):
    """Record that the open session applies pattern ID."""
    from ..report.patterns import apply_pattern

    db = open_db(ctx)
    row = apply_pattern(db, pattern_id, note)
    if as_json:
        echo_json(row)
        return
    click.echo(f"Applied {row['pattern_id']} ({row['title']}) to session {row['session_number']}")


@pattern.command("list")
@json_option
def pattern_list(as_json):
    """The ids, titles and metrics of all patterns."""
    from ..report.patterns import load_patterns
    from ..views import table

    found = load_patterns()
    if as_json:
        echo_json([p.as_dict() for p in found])
        return
    click.echo(table(["id", "title", "metric"], [[p.id, p.title, p.metric] for p in found]))


@pattern.command("show")
@click.argument("pattern_id", metavar="ID")
def pattern_show(pattern_id):
    """Print one pattern in full."""
    from ..report.patterns import get_pattern

    p = get_pattern(pattern_id)
    click.echo(f"{p.title} ({p.id})\n")
    for label, text in (("problem", p.problem), ("solution", p.solution), ("when", p.when),
                        ("metric", f"{p.metric} ({p.better} is better)")):
        click.echo(f"{label + ':':10} {text}")
    click.echo("")
    click.echo(p.body)
