"""Sharing sessions beyond one host: ``merge``, ``mlflow push`` and ``serve``.

mlflow and datasette are optional extras, imported only inside their commands.
"""

from __future__ import annotations

import click

from ..paramtypes import FilePath
from .common import db_option, echo_json, json_option, open_db


def register(cli: click.Group) -> None:
    for command in (merge, mlflow, serve):
        cli.add_command(command)


@click.command()
# dir_okay: a folder is refused by sessionkit.merge.check_sources in the words --db FOLDER gets.
@click.argument("others", metavar="OTHER.db...", nargs=-1, required=True,
                type=FilePath(dir_okay=True))
@db_option
@json_option
@click.pass_context
def merge(ctx, others, as_json):
    """Import the sessions of other sessionkit databases (from other hosts) into this one.

    Keyed by session UUID: merging again changes nothing; a session that differs from its copy here
    is reported as a conflict and left as it is. Exits 1 when there was a conflict.
    """
    from ..db import find_db, resolve_db_path
    from ..merge import check_artifacts_folder, check_sources, format_merge, merge_database

    # Every source, and this database's artifacts folder, is checked before this database is
    # opened (or made): a typo makes nothing, and no session is imported without its files.
    named = ctx.find_root().obj.get("db_path")
    check_sources(others, find_db(named), contents=True)
    check_artifacts_folder(resolve_db_path(named, create=True))
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


@click.group()
def mlflow():
    """Log sessions to an MLflow tracking server (needs the [mlflow] extra)."""


@mlflow.command("push")
@click.argument("session_refs", metavar="[SESSION...]", nargs=-1)
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI",
              help="The MLflow tracking server, e.g. http://mlflow.internal:5000, or sqlite:///PATH.db "
                   "(default: $MLFLOW_TRACKING_URI).")
@click.option("--experiment", default="sessionkit", show_default=True,
              help="MLflow experiment to log into; created when missing.")
@click.option("--no-plots", is_flag=True, help="Do not draw the report's plots.")
@db_option
@json_option
@click.pass_context
def mlflow_push(ctx, session_refs, tracking_uri, experiment, no_plots, as_json):
    """Log sessions (default: all) as MLflow runs, one per session with a nested run per step.

    Pushing again updates the same runs, found by the session's UUID tag.
    """
    from ..mlflow_push import format_push, push_sessions

    db = open_db(ctx)
    results = push_sessions(db, session_refs, tracking_uri=tracking_uri, experiment=experiment,
                            plots=not no_plots)
    if as_json:
        echo_json([r.as_dict() for r in results])
    else:
        click.echo(format_push(results, tracking_uri))


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 makes it reachable from other machines.")
@db_option
@click.pass_context
def serve(ctx, port, host):
    """Browse the database in Datasette, with described tables and canned queries ([browse] extra).

    Canned queries: sessions with cost and best speedup, regressions between consecutive benched
    sessions, the slowest steps against their budgets, the telemetry of one step.
    """
    import sys
    import tempfile
    from pathlib import Path

    from ..serve import check_port_free, datasette_name, require_datasette
    from ..serve import serve as run_serve

    db = open_db(ctx)
    require_datasette()
    check_port_free(host, port)
    path = Path(db.path)
    db.conn.close()
    where = (f"on a free port of {host} (Datasette prints its address below)" if port == 0
             else f"at http://{host}:{port}/")
    click.echo(f"Serving {path} {where} (Ctrl-C stops)", err=True)
    name = datasette_name(path)
    click.echo(f"Its tables and canned queries are under /{name}/ (as JSON, e.g. "
               f"/{name}/regressions.json?_shape=array)", err=True)
    with tempfile.TemporaryDirectory(prefix="sessionkit-serve-") as tmp:
        code = run_serve(path, host=host, port=port, workdir=Path(tmp))
    sys.exit(code)
