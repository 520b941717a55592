"""``sessionkit step ...``: every registered step is a subcommand, plus ``run`` and ``list``."""

from __future__ import annotations

import sys

import click

from .common import db_option, echo_json, json_option, open_db


def _run_registered(ctx, step, options, *, name=None, kind="builtin", command=None):
    from ..config import load_config
    from ..runner import exit_code_for, run_step
    from ..sessions import get_open_session

    db = open_db(ctx)
    session = get_open_session(db)
    cfg = load_config()
    row = run_step(db, session, step, options, name=name, kind=kind, command=command,
                   telemetry_interval_s=cfg.telemetry_interval_s)
    code = exit_code_for(row)
    if code:
        sys.exit(code)


class _RunCommand(click.Command):
    """``step run``: a step name must stand before ``--`` (else click would take the command's
    first word as the name), and may not begin with ``-`` (``-n`` would read as an option; such a
    name is refused in one line, also as ``step run -- -n -- CMD``). sessionkit's own options (``--db PATH``) may stand before
    or after NAME there: they are moved before it, so that they are not taken as the command. Without
    a ``--``, everything after NAME is the command; a ``--db`` there is refused, since it would
    otherwise run as a program and the step would land in the wrong database."""

    def parse_args(self, ctx, args):
        args = list(args)
        if args[:1] == ["--"] and len(args) > 2 and args[1].startswith("-") and args[1] != "--" \
                and "--" in args[2:]:
            # `step run -- -n -- CMD`: a name beginning with '-' given after a --, which no
            # name can begin with (sessionkit.runner.check_step_name says why)
            from ..runner import check_step_name

            check_step_name(args[1], kind="command")
        if args and args[0] == "--":
            raise click.UsageError("no step name before --: sessionkit step run NAME -- CMD ARGS...",
                                   ctx=ctx)
        if "--" in args:
            cut = args.index("--")
            own, names = [], []  # sessionkit's options before --, and the rest (the name)
            i = 0
            while i < cut:
                if args[i] == "--db" and i + 1 < cut:
                    own += args[i:i + 2]
                    i += 2
                    continue
                (own if args[i].startswith("--db=") else names).append(args[i])
                i += 1
            if not names:
                raise click.UsageError("no step name before --: "
                                       "sessionkit step run NAME -- CMD ARGS...", ctx=ctx)
            if "--db" in names:
                raise click.UsageError("--db needs a path: "
                                       "sessionkit step run NAME --db PATH -- CMD ARGS...", ctx=ctx)
            # NAME, then the command (everything after NAME, this -- included when the command
            # came first: `step run NAME make -- -j8` runs `make -- -j8`)
            args = own + names + args[cut:]
        elif len(args) > 1 and (args[1] == "--db" or args[1].startswith("--db=")):
            raise click.UsageError("sessionkit's options go before the command: "
                                   "sessionkit step run NAME --db PATH -- CMD ARGS...", ctx=ctx)
        return super().parse_args(ctx, args)


@click.command("run", cls=_RunCommand, context_settings={"ignore_unknown_options": True,
                                                         "allow_interspersed_args": False})
@click.argument("name")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@db_option
@click.pass_context
def run_command(ctx, name, argv):
    """Run any command as a tracked step: sessionkit step run NAME -- CMD ARGS..."""
    from ..errors import UsageError
    from ..runner import check_step_name
    from ..steps import get_step

    if argv and argv[0] == "--":
        argv = argv[1:]
    if not name.strip():
        raise UsageError("a step name must not be empty: sessionkit step run NAME -- CMD ARGS...")
    check_step_name(name, kind="command")  # before the database is opened; refuses '-n' too
    if not argv:
        raise UsageError("no command given after --: sessionkit step run NAME -- CMD ARGS...")
    _run_registered(ctx, get_step("run"), {"argv": list(argv)}, name=name, kind="command",
                    command=list(argv))


@click.command("list")
@json_option
def list_command(as_json):
    """List the registered steps."""
    from ..steps import REGISTRY, get_step
    from ..timefmt import fmt_duration
    from ..views import table

    steps = [get_step(name) for name in REGISTRY]
    rows = [{"name": s.name, "description": s.description, "budget_s": s.budget_s} for s in steps]
    if as_json:
        echo_json(rows)
        return
    click.echo(table(["step", "budget", "description"],
                     [[r["name"], fmt_duration(r["budget_s"]), r["description"]] for r in rows]))


class StepGroup(click.Group):
    """Builds one subcommand per registered step, importing step modules only when asked."""

    def list_commands(self, ctx):
        from ..steps import REGISTRY

        return ["list", "run"] + sorted(n for n in REGISTRY if n != "run")

    def get_command(self, ctx, name):
        if name == "list":
            return list_command
        if name == "run":
            return run_command
        from ..steps import REGISTRY, get_step

        if name not in REGISTRY:
            return None
        step = get_step(name)

        @click.pass_context
        def callback(ctx, **given):
            from ..steps.typed import OptionError

            try:  # the one check of the values: errors read like click's own, exit status 2
                options = step.parse_options(given)
            except OptionError as exc:
                param = next((p for p in ctx.command.params if exc.flag in p.opts), None)
                raise click.BadParameter(exc.problem, ctx=ctx, param=param) from None
            _run_registered(ctx, step, options)

        command = click.Command(name, params=step.options_type.click_params(), callback=callback,
                                help=step.description, short_help=step.description.split(". ")[0])
        return db_option(command)


@click.group("step", cls=StepGroup)
def step_group():
    """Run a step inside the open session (step list shows them)."""


def register(cli: click.Group) -> None:
    cli.add_command(step_group)
