"""``sessionkit doctor`` (no session or database needed) and ``sessionkit env show|diff``."""

from __future__ import annotations

import sys

import click

from .common import db_option, echo_json, json_option, open_db


def register(cli: click.Group) -> None:
    cli.add_command(doctor)
    cli.add_command(env)


@click.command()
@json_option
@click.pass_context
def doctor(ctx, as_json):
    """Check that this machine can build, check and time the kernel.

    Python, pip, torch and its CUDA, the GPU, driver, NVML, clocks and throttling, nvcc against torch,
    the host compiler, ninja, pybind11, arch flags, stale cached builds and free disk. Exits 1 when a
    check fails. Nothing is recorded; 'sessionkit step preflight' runs the same checks in a session.
    """
    from ..preflight import format_report, run_checks

    report = run_checks()
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(format_report(report, color=sys.stdout.isatty()))
    if report.failed:
        ctx.exit(1)


@click.group()
def env():
    """Environment snapshots recorded by 'sessionkit step preflight'."""


@env.command("show")
@click.argument("session", required=False)
@db_option
@json_option
@click.pass_context
def env_show(ctx, session, as_json):
    """Print a session's environment snapshot (default: the newest session that has one).

    SESSION is a session number, id or 'last'.
    """
    from ..envinfo import format_snapshot, load_snapshot

    snapshot = load_snapshot(open_db(ctx, read_only=True), session)
    if as_json:
        echo_json(snapshot)
    else:
        click.echo(format_snapshot(snapshot))


@env.command("diff")
@click.argument("a", required=False)
@click.argument("b", required=False)
@db_option
@json_option
@click.pass_context
def env_diff(ctx, a, b, as_json):
    """What changed between two sessions' environments.

    A and B are session numbers, ids or 'last'. With none, the last two sessions that have a snapshot;
    with A only, A against the newest session that has one.
    """
    from ..envinfo import diff_sessions, format_diff

    result = diff_sessions(open_db(ctx, read_only=True), a, b)
    if as_json:
        echo_json(result)
    else:
        click.echo(format_diff(result))
