"""Step-counted progress that reads at a glance, on a terminal or in a plain log file.

    [2/4] build - expected about 45 s (median of 5 earlier runs), budget 60 s
    [2/4] build ... 1m30s, expected 45 s
    [2/4] build passed in 38 s (budget 60 s)
"""

from __future__ import annotations

import errno
import math
import os
import sys
import threading

import click

from .errors import UsageError
from .timefmt import fmt_duration

_COLOURS = {"passed": "green", "skipped": "yellow", "failed": "red", "interrupted": "red"}


DEFAULT_PROGRESS_EVERY_S = 30.0


def heartbeat_every_s() -> float:
    """Seconds between the progress lines of a running step: ``$SESSIONKIT_PROGRESS_EVERY`` (a
    positive number of seconds), or 30 when it is unset or blank.

    Raises :class:`~sessionkit.errors.UsageError` naming the variable for anything else (text,
    zero, a negative number, NaN), before a step is recorded: the heartbeat thread reads it and
    must neither die on it nor spin on a zero interval.
    """
    raw = os.environ.get("SESSIONKIT_PROGRESS_EVERY", "")
    if not raw.strip():
        return DEFAULT_PROGRESS_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise UsageError(f"SESSIONKIT_PROGRESS_EVERY: bad value {raw!r}: give a positive number "
                         "of seconds, e.g. 30")
    return value


def estimate_from_history(db, name: str, *, exclude_step: str | None = None, last: int = 10):
    """(median seconds, runs) over the last passed runs of a step name, or (None, 0)."""
    rows = db.execute(
        "SELECT duration_s FROM steps WHERE name = ? AND status = 'passed' AND duration_s IS NOT NULL"
        " AND id != ? ORDER BY started_at DESC LIMIT ?",
        [name, exclude_step or "", last]).fetchall()
    if not rows:
        return None, 0
    import statistics

    return statistics.median(r[0] for r in rows), len(rows)


def drop_stdout(exc: OSError | None = None) -> None:
    """Point stdout at /dev/null: what is still buffered, and anything printed later, goes
    nowhere instead of failing again (the reader of a pipe went away, or the disk is full). For
    any reason but a closed pipe, ``exc`` is said once on stderr."""
    if exc is not None and exc.errno != errno.EPIPE:
        try:
            sys.stderr.write(f"sessionkit: output dropped ({os.strerror(exc.errno).lower()}); "
                             "what runs goes on and is recorded\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def stdout_gone(exc: BaseException) -> bool:
    """Is ``exc`` a write to our output that can never succeed: its reader went away (EPIPE) or
    it is a file on a full disk or over quota? A step still running then goes on without it."""
    return isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ENOSPC, errno.EDQUOT)


def safe_echo(text: str = "", **kwargs) -> None:
    """click.echo to stdout that survives the reader going away (`| head`) or a full disk: later
    lines go nowhere, so a session still running goes on and is recorded."""
    try:
        click.echo(text, **kwargs)
    except OSError as exc:
        if not stdout_gone(exc):
            raise
        drop_stdout(exc)


class Progress:
    """Prints the lines of one step. ``note`` and ``update`` are what steps call."""

    def __init__(self, label: str, name: str, *, stream=None, color: bool | None = None):
        self.label = label  # "[2/4]" or "[5]"
        self.name = name
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self.expected_s: float | None = None
        self._lock = threading.Lock()
        self._last_update = ""

    def _echo(self, text: str, *, err: bool = False) -> None:
        with self._lock:
            # A step still running must finish and be recorded when the reader of our output went
            # away (`| head`) or it fills a full disk: its lines then go nowhere (safe_echo).
            safe_echo(text, file=sys.stderr if err else self.stream)

    def _style(self, text: str, status: str) -> str:
        if not self.color:
            return text
        return click.style(text, fg=_COLOURS.get(status), bold=status != "passed")

    def start(self, *, expected_s: float | None, runs: int, budget_s: float | None) -> None:
        self.expected_s = expected_s
        if expected_s is None:
            guess = "no earlier passed run to estimate from"
        else:
            plural = "run" if runs == 1 else "runs"
            guess = f"expected about {fmt_duration(expected_s)} (median of {runs} earlier passed {plural})"
        budget = f", budget {fmt_duration(budget_s)}" if budget_s else ""
        self._echo(f"{self.label} {self.name} - {guess}{budget}")

    def heartbeat(self, elapsed_s: float) -> None:
        expected = f", expected {fmt_duration(self.expected_s)}" if self.expected_s else ""
        self._echo(f"{self.label} {self.name} ... {fmt_duration(elapsed_s)}{expected}")

    def note(self, text: str) -> None:
        """An indented line under the step (findings, tables, notices)."""
        for line in str(text).splitlines() or [""]:
            self._echo(f"    {line}")

    def update(self, done: int, total: int, label: str = "") -> None:
        """Counted progress inside a step: ``    12/48 bf16 D128 S4096``. Printed when it changes."""
        text = f"    {done}/{total} {label}".rstrip()
        if text != self._last_update:
            self._last_update = text
            self._echo(text)

    def end(self, status: str, duration_s: float, *, budget_s: float | None, exit_code=None,
            message: str = "", log: str | None = None) -> None:
        budget = f" (budget {fmt_duration(budget_s)})" if budget_s else ""
        if status == "passed":
            line = f"{self.label} {self.name} {self._style('passed', status)} in {fmt_duration(duration_s)}{budget}"
        elif status == "skipped":
            line = f"{self.label} {self.name} {self._style('skipped', status)}"
        else:
            word = self._style(status.upper(), status)
            code = f" (exit {exit_code})" if exit_code not in (None, 0) else ""
            line = f"{self.label} {self.name} {word}{code} in {fmt_duration(duration_s)}"
        if message:
            line += f": {message}"
        if log and status in ("failed", "interrupted"):
            line += f"; log: {log}"
        self._echo(line)
