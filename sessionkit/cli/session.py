"""Session lifecycle commands: start, status, end, sessions, show, export."""

from __future__ import annotations

import click

from ..db import SQLITE_MAX_INT
from ..paramtypes import OutputPath
from .common import db_option, echo_json, json_option, open_db, session_options


def register(cli: click.Group) -> None:
    for command in (start, status, end, sessions, show, export):
        cli.add_command(command)


@click.command()
@click.argument("name", required=False)
@session_options
@click.option("--plan", help="Planned steps, comma separated, e.g. preflight,build,correctness,bench.")
@click.option("--force", is_flag=True, help="Open even if another session is still open.")
@db_option
@json_option
@click.pass_context
def start(ctx, name, objective, plan, budget, step_budgets, gpu_rate, ai_rate, force, as_json):
    """Open a session. Defaults come from [tool.sessionkit] in the nearest pyproject.toml."""
    from ..sessions import check_start_options, start_session
    from ..session_defaults import resolve_start_options

    opts = resolve_start_options(objective=objective, plan=plan, budget=budget,
                                 step_budgets=step_budgets, gpu_rate=gpu_rate, ai_rate=ai_rate)
    check_start_options(name=name, **opts)  # before the database is opened (or made)
    db = open_db(ctx, create=True)
    session = start_session(db, name, force=force, **opts)
    if as_json:
        echo_json(session)
        return
    from ..views import printable

    click.echo(f"Started session {session['number']}: {printable(session['name'])} ({session['id']})")
    click.echo(f"  objective: {printable(session['objective'])}")
    if session["plan"]:
        click.echo(f"  plan:      {', '.join(session['plan'])}")
    from ..timefmt import fmt_duration, fmt_money
    click.echo(f"  budget:    {fmt_duration(session['budget_s']) if session['budget_s'] else 'none'}")
    click.echo(f"  rates:     GPU {_rate(session['gpu_rate_usd_per_h'])}, AI {_rate(session['ai_rate_usd_per_h'])}")
    click.echo(f"  database:  {db.path}")


def _rate(value):
    return "rate not set" if value is None else f"${value:,.2f}/h"


@click.command()
@db_option
@json_option
@click.pass_context
def status(ctx, as_json):
    """Show the open session: elapsed time against budget, cost so far, steps and the next one."""
    from ..sessions import get_open_session, session_status
    from ..views import format_status

    db = open_db(ctx, read_only=True)
    session = get_open_session(db, required=False)
    if session is None:
        if as_json:
            echo_json({"session": None})
        else:
            click.echo("No open session. Start one with: sessionkit start -m/--objective TEXT")
        return
    data = session_status(db, session)
    from ..idle import format_idle, idle_state

    idle = idle_state(db, session, data["steps"])
    if as_json:
        echo_json({**data, "idle": idle})
    else:
        click.echo(format_status(data) + "\n" + format_idle(idle))


@click.command()
@click.option("--outcome", "-m", required=True, help="What came of the session, in a sentence.")
@click.option("--status", "end_status", type=click.Choice(["passed", "failed", "abandoned"]),
              help="How the session ended (default: failed when the latest run of any step failed "
                   "or was interrupted, when no step passed, or when a planned step never ran; else "
                   "passed).")
@click.option("--session", "session_ref", help="Session to end (default: the open one).")
@db_option
@json_option
@click.pass_context
def end(ctx, outcome, end_status, session_ref, as_json):
    """Close the open session with its outcome."""
    from ..sessions import end_session, get_session, get_open_session

    db = open_db(ctx)
    session = get_session(db, session_ref) if session_ref is not None else get_open_session(db)
    done = end_session(db, session, outcome=outcome, status=end_status)
    if as_json:
        echo_json(done)
        return
    from ..costs import session_costs
    from ..sessions import session_steps
    from ..timefmt import fmt_duration, fmt_money
    costs = session_costs(done, session_steps(db, done["id"]))
    from ..views import printable

    click.echo(f"Ended session {done['number']} ({printable(done['name'])}): {done['status']} after "
               f"{fmt_duration(costs['wall_s'])}; cost {fmt_money(costs['total_usd'])}")
    if done.get("status_reason"):
        click.echo(f"  status {done['status']} from the steps: {printable(done['status_reason'])} "
                   "(--status sets it)")


@click.command()
@click.option("--limit", type=click.IntRange(1, SQLITE_MAX_INT), help="Show only the newest N sessions.")
@db_option
@json_option
@click.pass_context
def sessions(ctx, limit, as_json):
    """List sessions, the last numbered first (merged sessions are numbered as they arrive)."""
    from ..sessions import list_sessions
    from ..views import format_session_list

    rows = list_sessions(open_db(ctx, read_only=True), limit=limit)
    echo_json(rows) if as_json else click.echo(format_session_list(rows))


@click.command()
@click.argument("session_ref", metavar="ID|N|last", required=False)
@db_option
@json_option
@click.pass_context
def show(ctx, session_ref, as_json):
    """Show one session: its steps, timings, costs and outcome."""
    from ..sessions import get_session, session_status
    from ..views import format_show

    db = open_db(ctx, read_only=True)
    data = session_status(db, get_session(db, session_ref))
    echo_json(data) if as_json else click.echo(format_show(data))


@click.command()
@click.argument("session_ref", metavar="[ID|N|last]", required=False)
@click.option("--json", "as_json", is_flag=True, default=True,
              help="Export as JSON (the only format; the flag is accepted for symmetry).")
@click.option("-o", "--output", type=OutputPath(writable=True),
              help="Write the JSON to FILE (its missing folders made) instead of printing it; "
                   "'-' prints it.")
@db_option
@click.pass_context
def export(ctx, session_ref, as_json, output):
    """Export everything recorded for a session as JSON."""

    from ..sessions import export_session, get_session
    from .common import dumps_json

    db = open_db(ctx, read_only=True)
    data = export_session(db, get_session(db, session_ref))
    text = dumps_json(data)
    if output:
        from ..atomic import write_atomic

        write_atomic(output, text + "\n", make_parents=True)
        click.echo(f"Wrote {output}")
    else:
        click.echo(text)
