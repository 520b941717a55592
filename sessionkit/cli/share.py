"""Sharing sessions beyond one host: ``merge``, ``mlflow push`` and ``serve``.

mlflow and datasette are optional extras, imported only inside their commands.
"""

from __future__ import annotations

import click

from ..paramtypes import FilePath
from .common import db_option, echo_json, json_option, open_db


def register(cli: click.Group) -> None:
    for command in (merge,):
        cli.add_command(command)


@click.command()
@click.argument("others", metavar="OTHER.db...", nargs=-1, required=True, type=FilePath())
@db_option
@json_option
@click.pass_context
def merge(ctx, others, as_json):
    """Import the sessions of other sessionkit databases (from other hosts) into this one.

    Keyed by session UUID: merging again changes nothing; a session that differs from its copy here
    is reported as a conflict and left as it is. Exits 1 when there was a conflict.
    """
    from ..merge import format_merge, merge_database

    db = open_db(ctx, create=True)
    results = [merge_database(db, other) for other in others]
    if as_json:
        echo_json([r.as_dict() for r in results])
    else:
        for r in results:
            click.echo(format_merge(r))
    conflicts = sum(len(r.conflicts) for r in results)
    if conflicts:
        raise click.ClickException(f"{conflicts} conflicting session(s) were not imported; see above")
