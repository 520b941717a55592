"""``sessionkit run``: start, preflight, build, correctness, bench, end and report in one command."""

from __future__ import annotations

import sys

import click

from ..paramtypes import OutputPath
from .common import db_option, open_db, session_options


def register(cli: click.Group) -> None:
    cli.add_command(run)


@click.command()
@click.argument("name", required=False)
@session_options
@click.option("--grid", default="quick", show_default=True, help="Bench grid (quick, standard, ...).")
@click.option("--plan", help="Steps to run, comma separated (default: preflight,build,correctness,bench).")
@click.option("-o", "--output", "out",
              type=OutputPath(stdout=False, refusal="standard output carries the steps' progress, "
                                                    "so the report goes to a file"),
              help="Report file, its missing folders made and plots beside it (default: "
                   "reports/session-N.md beside the database); not '-': standard output carries "
                   "the steps' progress.")
@click.option("--keep-going", is_flag=True, help="Run every step even when one it needs did not pass.")
@click.option("--no-hooks", is_flag=True, help="Leave out the [tool.sessionkit.hooks] commands.")
@click.option("--no-plots", is_flag=True, help="Do not draw plots in the report.")
@click.option("--force", is_flag=True, help="Open the session even if another is still open "
              "(e.g. one left open by a preempted run).")
@db_option
@click.pass_context
def run(ctx, name, objective, grid, plan, budget, step_budgets, gpu_rate, ai_rate, out, keep_going,
        no_hooks, no_plots, force):
    """Run a whole session: start, preflight, build, correctness, bench, end, report.

    Steps that need a step which did not pass are recorded as skipped, with the reason. The exit
    status is 0 only when every step passed. Hooks in [tool.sessionkit.hooks] (before = [...],
    after = [...]) run as steps of kind 'hook'; after hooks run even when a step failed.
    """
    from ..config import load_config
    from ..session_defaults import resolve_start_options
    from ..session_run import DEFAULT_PLAN, Hooks, check_run, parse_hooks, run_session

    cfg = load_config()
    hooks = Hooks() if no_hooks else parse_hooks(cfg.raw.get("hooks"))
    # --plan, else plan in [tool.sessionkit], else the default plan
    opts = resolve_start_options(objective=objective, plan=plan, budget=budget,
                                 step_budgets=step_budgets, gpu_rate=gpu_rate, ai_rate=ai_rate)
    steps = list(opts.pop("plan", None) or DEFAULT_PLAN)
    opts["force"] = force
    # What would be refused is refused before the database is opened (or made).
    check_run(plan=steps, grid=grid, report_path=out, start_options=opts)
    db = open_db(ctx, create=True)
    result = run_session(db, name=name, plan=steps, grid=grid, hooks=hooks, start_options=opts,
                         report_path=out, plots=not no_plots, keep_going=keep_going,
                         telemetry_interval_s=cfg.telemetry_interval_s)
    if result.exit_code:
        sys.exit(result.exit_code)
