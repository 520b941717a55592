"""Small helpers shared by the command modules."""

from __future__ import annotations

import json

import click

from ..errors import SessionkitError
from ..paramtypes import FilePath


def db_option(fn):
    """``--db PATH`` on a subcommand too: ``sessionkit status --db x.db`` works like ``--db`` first."""

    def store(ctx, _param, value):
        if value:
            ctx.ensure_object(dict)
            ctx.find_root().obj["db_path"] = value
        return value

    # dir_okay: sessionkit.db refuses a folder as it refuses a FIFO or a device, in one line.
    return click.option("--db", "db_override", type=FilePath(dir_okay=True), expose_value=False,
                        callback=store, help="SQLite database to use.")(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def open_db(ctx: click.Context, *, create: bool = False, read_only: bool = False):
    """Open the database named by --db / $SESSIONKIT_DB / search, and mark stale steps.

    Reading commands pass ``read_only``: a database that cannot be written (an archive, a read-only
    file) is then opened for reading, and stale steps are left as they are.
    """
    from ..db import open_db as _open
    from ..liveness import reap_dead_steps

    db = _open(ctx.find_root().obj.get("db_path"), create=create, read_only=read_only)
    for notice in getattr(db, "notices", []):
        click.echo(notice, err=True)
    if not getattr(db, "read_only", False):
        for notice in reap_dead_steps(db):
            click.echo(notice, err=True)
    return db


def _default(obj):
    """Typed step summaries as the JSON objects they are stored as; other objects as text."""
    return obj.to_json() if hasattr(obj, "to_json") else str(obj)


def dumps_json(data) -> str:
    """Strict JSON text of ``data``, indented: typed step summaries as the objects they are stored
    as, other unknown objects as text, and NaN or infinite numbers (a stored summary may hold them)
    as null, which every JSON parser reads (``NaN`` and ``Infinity`` are not JSON). The conversion
    runs in the json module's C encoder and decoder (a first pass that writes the constants, a
    parse that turns them into None), not in Python recursion, so deeply nested stored values print
    as before; nesting too deep even for them is a one-line error."""
    try:
        loose = json.dumps(data, default=_default)
        return json.dumps(json.loads(loose, parse_constant=lambda _: None), indent=2,
                          allow_nan=False)
    except RecursionError:
        raise SessionkitError("a stored value is nested too deeply to print as JSON") from None


def echo_json(data) -> None:
    """Print ``data`` as strict JSON; a typed step summary is printed as the JSON object it is
    stored as, and non-finite numbers as null."""
    click.echo(dumps_json(data))


def session_options(fn):
    """The options that open a session, shared by ``start`` and ``run``."""
    for option in reversed([
        click.option("--objective", "-m", help="What this session is for (required; or set in pyproject)."),
        click.option("--budget", help="Session time budget with its unit, e.g. 2h, 90m or 1h30m "
                                      "(a bare number is refused)."),
        click.option("--step-budget", "step_budgets", multiple=True, metavar="NAME=DURATION",
                     help="Budget for one step with its unit, e.g. build=60s (repeatable)."),
        click.option("--gpu-rate", help="GPU cost in USD per hour."),
        click.option("--ai-rate", help="AI assistant cost in USD per hour."),
    ]):
        fn = option(fn)
    return fn
