"""``sessionkit step run NAME -- CMD ARGS...``: any command as a tracked step.

The command runs with its argv as given (no shell). Its output streams live to the terminal and into a
log file registered as an artifact before the command starts, so a kill -9 loses nothing written so far.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque

from . import Step, StepResult
from ..errors import UsageError
from ..liveness import TAIL_LINES, tail_of_file


class CommandStep(Step):
    name = "run"
    description = "Run any command as a tracked step: sessionkit step run NAME -- CMD ARGS..."
    budget_s = 600.0

    def __init__(self):
        self.output_tail: str | None = None

    def run(self, context) -> StepResult:
        argv = list(context.options.get("argv") or [])
        if not argv:
            raise UsageError("no command given after --: sessionkit step run NAME -- CMD ARGS...")
        log_path = context.workdir / "output.log"
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        partial = b""
        out = getattr(sys.stdout, "buffer", None)
        with open(log_path, "wb") as log:
            context.artifact(log_path, "log")
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                self.output_tail = ""
                return StepResult("failed", message=f"command not found: {argv[0]}", exit_code=127)
            except PermissionError:
                self.output_tail = ""
                return StepResult("failed", message=f"permission denied: {argv[0]}", exit_code=126)
            try:
                fd = proc.stdout.fileno()
                while True:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    log.write(chunk)
                    log.flush()
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    tail.extend(line.decode(errors="replace") for line in lines)
                    if out is not None:
                        out.write(chunk)
                        out.flush()
                    else:
                        sys.stdout.write(chunk.decode(errors="replace"))
                code = proc.wait()
            except BaseException:
                _stop(proc)
                # An interruption can land between writing a chunk to the log and adding it to
                # the tail: the log on disk is complete, so the tail comes from it.
                log.flush()
                partial = b""
                tail = deque((tail_of_file(log_path, TAIL_LINES) or "\n".join(tail)).split("\n"),
                             maxlen=TAIL_LINES)
                raise
            finally:
                if partial:
                    tail.append(partial.decode(errors="replace"))
                self.output_tail = "\n".join(tail)
        # A negative code is death by signal N; report it shell-style (128 + N).
        exit_code = code if code >= 0 else 128 - code
        summary = {"argv": argv, "exit_code": exit_code, "log": str(log_path)}
        if code == 0:
            return StepResult("passed", summary=summary, exit_code=0)
        return StepResult("failed", message="", summary=summary, exit_code=exit_code)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the child politely, then firmly, so that an interrupted step leaves nothing behind."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
