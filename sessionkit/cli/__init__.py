"""The command line. Commands parse, call one library function and print.

Typed :class:`~sessionkit.errors.SessionkitError`\\ s become ``Error: ...`` here, in one place.
Heavy modules (torch, jinja2, pynvml) are imported only inside the commands that need them.
"""

from __future__ import annotations

import errno
import importlib
import os
import sqlite3
import sys

import click

from ..errors import Interrupted, SessionkitError, exit_status
from ..paramtypes import FilePath
from ..progress import drop_stdout

# Each module defines ``register(cli)``; one module per command group.
COMMAND_MODULES = [
    "sessionkit.cli.session",
    "sessionkit.cli.step",
    "sessionkit.cli.doctor",
    "sessionkit.cli.report",
    "sessionkit.cli.run",
    "sessionkit.cli.compare",
    "sessionkit.cli.share",
]


# Raised when a group is called without a command: click shows the group's help for it.
_SHOW_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def one_line(exc: click.UsageError) -> click.ClickException:
    """A usage error as one ``Error: ...`` line that names the help to read, same exit code.
    Control characters from the command line are shown escaped."""
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    from ..views import printable

    text = printable(exc.format_message())
    err = click.ClickException(f"{text}{where}")
    err.exit_code = exc.exit_code
    return err


def _not_utf8(args: list[str]) -> str | None:
    """The usage error for the first argument that is not valid UTF-8 (the OS hands such bytes to
    Python as lone surrogates, which neither SQLite nor the terminal can take), or None.

    Arguments after a bare ``--`` belong to the command a step runs and are passed on as they are.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            option, value = None, arg
            if arg.startswith("--") and "=" in arg:
                option, _, value = arg.partition("=")
            elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
                option, value = arg[:2], arg[2:]
            elif i > 0 and args[i - 1].startswith("-") and args[i - 1] not in ("-", "--") \
                    and "=" not in args[i - 1]:
                option = args[i - 1]
            what = f"the value of {option}" if option else f"argument {i + 1}"
            return f"{what} is not valid UTF-8: {repr(os.fsencode(value))[1:]}"
    return None


class SessionkitGroup(click.Group):
    """Turns library errors and usage errors into one-line ``Error: ...`` messages with the
    right exit code."""

    def main(self, args=None, *extra, **kwargs):
        argv = sys.argv[1:] if args is None else list(args)
        problem = _not_utf8([str(a) for a in argv])
        if problem is not None:
            err = click.UsageError(problem)
            if kwargs.get("standalone_mode", True):
                click.echo(f"Error: {problem}", err=True)
                sys.exit(err.exit_code)
            raise one_line(err)
        return super().main(argv, *extra, **kwargs)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _SHOW_HELP:
            raise
        except click.UsageError as exc:  # a bad option of the top-level command itself
            raise one_line(exc) from None

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a full disk or a closed pipe surfaces here, not at exit
            return result
        except _SHOW_HELP:
            raise
        except click.UsageError as exc:  # bad arguments or options of any subcommand
            raise one_line(exc) from None
        except SessionkitError as exc:
            from ..views import printable

            # A path or name from the command line may hold a newline or an escape sequence:
            # shown escaped, the message stays one line and cannot drive the terminal.
            err = click.ClickException(printable(str(exc)))
            err.exit_code = exit_status(exc)  # 1 for "not found", 2 for usage errors
            raise err from None
        except sqlite3.Error as exc:  # e.g. locked for longer than the busy timeout
            from ..views import printable

            raise click.ClickException(printable(f"database error: {exc}")) from None
        except Interrupted as exc:  # a step, or a merge, stopped by a signal
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except OSError as exc:  # e.g. stdout on a full disk; recorded data is already committed
            drop_stdout()
            if exc.errno == errno.EPIPE:  # the reader went away (| head): nothing to say
                sys.exit(141)
            where = f": {exc.filename}" if exc.filename else ""
            from ..views import printable

            raise click.ClickException(printable(f"{exc.strerror or exc}{where}")) from None




@click.group(cls=SessionkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sessionkit", message="sessionkit %(version)s")
# dir_okay: a folder, like a FIFO or a device, is refused by sessionkit.db with the same words.
@click.option("--db", "db_path", type=FilePath(dir_okay=True), envvar="SESSIONKIT_DB",
              help="SQLite database (default: $SESSIONKIT_DB, else .sessionkit/sessions.db "
                   "found upward from here).")
@click.pass_context
def cli(ctx, db_path):
    """sessionkit: make each GPU kernel optimization session count.

    Open a session, run tracked steps with step-counted progress, telemetry, timings and costs,
    and render reports from what was measured.
    """
    ctx.obj = {"db_path": db_path}


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main():
    cli(prog_name="sessionkit")
