"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import math

import click

from ..paramtypes import FilePath


def db_option(fn):
    """``--db PATH`` on a subcommand too: ``sessionkit status --db x.db`` works like ``--db`` first."""

    def store(ctx, _param, value):
        if value:
            ctx.ensure_object(dict)
            ctx.find_root().obj["db_path"] = value
        return value

    return click.option("--db", "db_override", type=FilePath(), expose_value=False,
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


def _plain(obj):
    """``obj`` as plain JSON values: typed step summaries as the objects they are stored as, other
    unknown objects as text, and NaN or infinite floats (a stored summary may hold them) as null,
    which every JSON parser reads (``NaN`` and ``Infinity`` are not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "to_json"):
        return _plain(obj.to_json())
    return str(obj)


def dumps_json(data) -> str:
    """Strict JSON text of ``data`` (see :func:`_plain`), indented."""
    return json.dumps(_plain(data), indent=2, allow_nan=False)


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
