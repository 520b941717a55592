"""``sessionkit compare [A] [B]``: benchmark results of two sessions, regressions first."""

from __future__ import annotations

import click

from .common import db_option, echo_json, json_option, open_db


def register(cli: click.Group) -> None:
    cli.add_command(compare)


@click.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--min-effect", type=float, default=0.05, show_default=True,
              help="Smallest relative change of the median that counts as faster or slower.")
@click.option("--alpha", type=float, default=0.01, show_default=True,
              help="Significance level of the Mann-Whitney U test on the raw samples.")
@click.option("--fail-on-regression", is_flag=True,
              help="Exit with status 1 when anything got slower or broke; 125 (no verdict) when "
                   "the two sessions ran in different environments, unless --allow-env-change.")
@click.option("--allow-env-change", is_flag=True,
              help="With --fail-on-regression: judge sessions that ran on another GPU, driver, "
                   "torch, CUDA or kernel build.")
@click.option("--graph", is_flag=True,
              help="Compare the CUDA-graph timings (bench --graph) instead of the eager ones.")
@db_option
@json_option
@click.pass_context
def compare(ctx, a, b, min_effect, alpha, fail_on_regression, allow_env_change, graph, as_json):
    """Compare the bench results of session A (older) with session B (newer).

    A and B are session numbers, names or ids; by default the two last-numbered sessions that
    benchmarked, the one started first as A (a session brought in by merge is numbered as it
    arrives). Each config is taken from the latest bench step of its session that measured it.
    """
    from ..bench.compare import (RegressionFound, check_same_environment, compare_sessions,
                                 format_comparison)

    db = open_db(ctx, read_only=True)
    result = compare_sessions(db, a, b, min_effect=min_effect, alpha=alpha, graph=graph)
    if as_json:
        echo_json(result)
    else:
        click.echo(format_comparison(result))
    if fail_on_regression:
        check_same_environment(result, allow_env_change=allow_env_change)
    if fail_on_regression and result["regressions"]:
        raise RegressionFound(f"{result['regressions']} regression(s) from session "
                              f"{result['a']['number']} to {result['b']['number']}")
