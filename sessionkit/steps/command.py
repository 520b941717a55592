"""``sessionkit step run NAME -- CMD ARGS...``: any command as a tracked step.

The command runs with its argv as given (no shell). Its output streams live to the terminal and into a
log file registered as an artifact before the command starts, so a kill -9 loses nothing written so far.

The command runs in its own process group, with default signal dispositions (a shell's ignored SIGINT
is not passed on). The whole group ends with the step: after the command exits, on Ctrl-C, SIGTERM or
SIGHUP, it gets SIGTERM and, after a short grace period, SIGKILL. On Linux the command also dies with
sessionkit (``PR_SET_PDEATHSIG``), and a small watchdog ends its group when sessionkit's end closes a
pipe, however sessionkit ends (kill -9 included).

What is kept of the output (the tail) is capped in lines and in bytes; an over-long line keeps its end.
Secrets are scrubbed from the stored tail, the log and the summary (see :mod:`sessionkit.secrets`).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass

from . import Step, StepResult
from ..childproc import child_setup
from ..errors import UsageError
from ..liveness import TAIL_BYTES, TAIL_LINES, cap_tail, tail_of_file
from .typed import StepOptions, StepSummary, fact, option

GRACE_S = 2.0  # between SIGTERM and SIGKILL for what is left of the command's process group
# Signals a command must not inherit as ignored (a background job's shell ignores SIGINT/SIGQUIT).

class TailBuffer:
    """The last lines of a byte stream, each line and the whole capped in bytes.

    Linear in the input: a chunk without a newline only extends the current line, whose start is
    dropped once it passes ``max_bytes``.
    """

    def __init__(self, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES):
        self.lines: deque[bytes] = deque(maxlen=lines)
        self.max_bytes = max_bytes
        self.partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._extend(chunk[start:])
                return
            self._extend(chunk[start:end])
            self.lines.append(bytes(self.partial))
            self.partial.clear()
            start = end + 1

    def _extend(self, piece: bytes) -> None:
        self.partial += piece
        if len(self.partial) > self.max_bytes:
            del self.partial[:len(self.partial) - self.max_bytes]

    def text(self) -> str:
        lines = list(self.lines)
        if self.partial:
            lines.append(bytes(self.partial))
        return cap_tail(b"\n".join(lines).decode(errors="replace"), self.lines.maxlen, self.max_bytes)


def _write_log(log, data: bytes) -> OSError | None:
    """Appends to the step's log; returns the error when the disk is full (the caller ends the
    step with it), raises any other error."""
    try:
        log.write(data)
        log.flush()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return exc
    return None


# Waits for sessionkit's end of a pipe to close, then ends the process group written to it.
_WATCHDOG = ("import os, sys\n"
             "line = sys.stdin.readline()\n"
             "sys.stdin.read()\n"
             "try:\n"
             "    os.killpg(int(line), 9) if line.strip() else None\n"
             "except (OSError, ValueError):\n"
             "    pass\n")


class _GroupWatchdog:
    """A small Python process that ends the command's process group once this process is gone, by
    any death: it waits for the end of a pipe that only this process holds."""

    def __init__(self):
        self.proc = None
        self.fd = None
        try:
            read_end, self.fd = os.pipe()
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG], stdin=read_end,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True)
            os.close(read_end)
            os.set_inheritable(self.fd, False)
        except OSError:
            self.close()

    def watch(self, pgid: int) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, f"{pgid}\n".encode())
            except OSError:
                pass

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@dataclass(frozen=True)
class CommandOptions(StepOptions):
    """What ``sessionkit step run NAME -- CMD ARGS...`` runs (its CLI is written by hand)."""

    argv: tuple[str, ...] = option((), multiple=True,
                                   help="The command and its arguments, run without a shell.")


@dataclass
class CommandSummary(StepSummary):
    """What a command step stored in ``steps.summary``."""

    argv: list[str] | None = fact(None, help="The command and its arguments, secrets redacted.")
    exit_code: int | None = fact(None, help="The command's exit status; 128 + N after signal N.")
    log: str | None = fact(None, help="Path of the full output log.")


class CommandStep(Step):
    name = "run"
    description = "Run any command as a tracked step: sessionkit step run NAME -- CMD ARGS..."
    budget_s = 600.0
    options_type = CommandOptions
    summary_type = CommandSummary

    def __init__(self):
        self.output_tail: str | None = None

    def run(self, context) -> StepResult:
        from ..progress import drop_stdout, stdout_gone
        from ..secrets import current_redactor

        argv = list(context.options.argv)
        if not argv:
            raise UsageError("no command given after --: sessionkit step run NAME -- CMD ARGS...")
        redactor = current_redactor(argv=argv)
        log_path = context.workdir / "output.log"
        tail = TailBuffer()
        out = getattr(sys.stdout, "buffer", None)
        echo = True  # False once our stdout's reader has gone away
        open_line = False  # the command's output so far ends without a newline

        def emit(data: bytes) -> None:
            """The command's output on our stdout. When its reader went away (`| head`) or it is
            on a full disk, the command keeps running: its output still goes to the log and the
            tail, and no more to stdout."""
            nonlocal echo
            try:
                if out is not None:
                    out.write(data)
                    out.flush()
                else:
                    sys.stdout.write(data.decode(errors="replace"))
            except OSError as exc:
                if not stdout_gone(exc):
                    raise
                echo = False
                drop_stdout(exc)

        disk_full = None
        with open(log_path, "wb") as log:
            context.artifact(log_path, "log")
            watchdog = _GroupWatchdog()
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, process_group=0,
                                        preexec_fn=child_setup)
            except FileNotFoundError:
                watchdog.close()
                self.output_tail = ""
                return StepResult("failed", message=f"command not found: {argv[0]}", exit_code=127)
            except PermissionError:
                watchdog.close()
                self.output_tail = ""
                # What a shell says: an empty name is no command (the PATH search tries the
                # folders themselves, which execve refuses as EACCES), a folder is not a program.
                if not argv[0]:
                    return StepResult("failed", message="command not found: '' (an empty command "
                                      "name)", exit_code=127)
                if "/" in argv[0] and os.path.isdir(argv[0]):
                    return StepResult("failed", message=f"cannot run {argv[0]}: Is a directory",
                                      exit_code=126)
                return StepResult("failed", message=f"permission denied: {argv[0]}", exit_code=126)
            except OSError as exc:  # found but not runnable: no #! line, a name too long...
                if exc.errno == errno.ENOSPC:
                    raise
                watchdog.close()
                self.output_tail = ""
                shown = argv[0] if len(argv[0]) <= 80 else argv[0][:77] + "..."
                return StepResult("failed", message=f"cannot run {shown}: "
                                  f"{exc.strerror or exc}", exit_code=126)
            watchdog.watch(proc.pid)
            scrub = redactor.stream()
            try:
                for chunk in _output(proc):
                    clean = scrub.feed(chunk)
                    if disk_full is None:
                        disk_full = _write_log(log, clean)
                        if disk_full is not None:
                            _stop_group(proc)
                    tail.feed(clean)
                    if echo:
                        emit(chunk)
                        open_line = bool(chunk) and not chunk.endswith(b"\n")
                code = proc.wait()
                if echo and open_line:  # end the command's last line before the result line
                    emit(b"\n")
                rest = scrub.flush()
                tail.feed(rest)
                if disk_full is None:
                    disk_full = _write_log(log, rest)
            except BaseException:
                _stop_group(proc)
                # An interruption can land between writing a chunk to the log and adding it to
                # the tail: the log on disk is complete, so the tail comes from it.
                try:
                    log.flush()
                except OSError:
                    pass
                self.output_tail = redactor.text(tail_of_file(log_path, TAIL_LINES) or tail.text())
                raise
            finally:
                _end_group(proc)
                watchdog.close()
                if self.output_tail is None:
                    self.output_tail = redactor.text(tail.text())
            try:
                log.close()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                disk_full = disk_full or exc
        # A negative code is death by signal N; report it shell-style (128 + N).
        exit_code = code if code >= 0 else 128 - code
        summary = CommandSummary(argv=redactor.argv(argv), exit_code=exit_code, log=str(log_path))
        if disk_full is not None:
            return StepResult("failed", message=f"no space left on device: the log {log_path} "
                              "could not be written, so the command was stopped",
                              summary=summary, exit_code=1)
        if code == 0:
            return StepResult("passed", summary=summary, exit_code=0)
        return StepResult("failed", message=_killed_by(code), summary=summary, exit_code=exit_code)


def _killed_by(code: int) -> str:
    """"killed by SIGSEGV" for a process that died of signal -``code``; "" for one that exited."""
    if code >= 0:
        return ""
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _output(proc: subprocess.Popen):
    """The command's output, chunk by chunk, until its pipe closes. When the command has exited but
    something it left running in its group holds the pipe open, that group is ended after
    :data:`GRACE_S`; a holder outside the group cannot keep the step waiting for more than another
    :data:`GRACE_S`."""
    import selectors
    import time

    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        exited_at = ended_group_at = None
        while True:
            if sel.select(timeout=0.1):
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                yield chunk
                continue
            if proc.poll() is None:
                continue
            now = time.monotonic()
            exited_at = exited_at or now
            if ended_group_at is None and now - exited_at > GRACE_S:
                _end_group(proc)
                ended_group_at = time.monotonic()
            elif ended_group_at is not None and now - ended_group_at > GRACE_S:
                return


def _signal_group(proc: subprocess.Popen, sig) -> bool:
    """Send ``sig`` to the command's process group; False when the group is gone."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the command politely, then firmly, so that an interrupted step leaves nothing behind:
    SIGINT to the group, SIGTERM, then SIGKILL, each after a short wait."""
    import time

    for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        if not _signal_group(proc, sig):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.02)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def _end_group(proc: subprocess.Popen) -> None:
    """After the command ended: what it left running in its group gets SIGTERM, then SIGKILL."""
    import time

    if proc.poll() is None:
        _stop_group(proc)
        return
    if not _group_alive(proc.pid):
        return
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.02)
    _signal_group(proc, signal.SIGKILL)
