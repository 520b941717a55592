"""Typed errors. The library raises these; the CLI turns them into ``Error: ...`` once."""


def first_line(exc: BaseException, *, limit: int | None = None, named: bool = False) -> str:
    """The first line of an exception's message, for one-line reports of errors from elsewhere.

    The message's first line, stripped; the exception's type name when the message is empty. With
    ``named`` the type name comes first (``"OSError: no such file"``). With ``limit`` a longer line
    is cut to ``limit`` characters, ending in ``...``.
    """
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    if named:
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


class SessionkitError(Exception):
    """Base class: a problem the user can act on. The message is one line."""

    exit_code = 1


class UsageError(SessionkitError):
    """Bad input on the command line or in configuration (exit status 2): a malformed value, or
    one outside the choices a command offers (a step name in a plan, a grid, a status), as click
    says for its own usage errors."""

    exit_code = 2


class NotFound(SessionkitError):
    """A well-formed request names something that is not there: a session id, number or name, a
    pattern id (exit status 1, whatever else the error is: see :func:`exit_status`)."""

    exit_code = 1


def exit_status(exc: SessionkitError) -> int:
    """The exit status of a command that ends with ``exc``, by one rule: 1 for a
    :class:`NotFound` (a well-formed request for something that is not there), even one that is
    also a :class:`UsageError`; else the error's ``exit_code`` (2 for a :class:`UsageError`, 1 for
    the others)."""
    if isinstance(exc, NotFound):
        return NotFound.exit_code
    return exc.exit_code


class ConfigError(UsageError):
    """``[tool.sessionkit]`` holds something unusable."""


class DatabaseError(SessionkitError):
    """The database is missing, unreadable, not SQLite or not writable."""


class NoDatabaseError(DatabaseError):
    """No database was found where one was looked for."""


class SessionNotFound(NotFound):
    """An id, number or name matched no session."""


class PatternNotFound(NotFound):
    """No pattern of the library has that id."""


class NoOpenSession(SessionkitError):
    """A command needs an open session and there is none."""


class SessionAlreadyOpen(SessionkitError):
    """``start`` was asked while another session is open."""


class SessionStateError(SessionkitError):
    """A well-formed request that the session's state refuses: ending a session already ended, or
    one with a step still running (exit status 1)."""


class StepNotFound(UsageError):
    """No registered step has that name: one of the choices a command offers (a plan, like a
    subcommand's name) was misspelt, a usage error (exit status 2)."""


class StepFailed(SessionkitError):
    """A step ran and failed; the message says where its log is."""


class Interrupted(BaseException):
    """A command was stopped by a signal (SIGTERM, SIGHUP) once what it had done was made safe;
    exit with ``exit_code`` (128 + the signal's number). A BaseException, as KeyboardInterrupt is,
    so that no ``except Exception`` swallows it."""

    def __init__(self, exit_code: int):
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code


class StepInterrupted(Interrupted):
    """A step was stopped by Ctrl-C or SIGTERM after its record was saved; exit with ``exit_code``."""


class NewerDatabaseError(DatabaseError):
    """The database holds migrations of a newer sessionkit release: refuse to use it."""
