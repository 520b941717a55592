"""Running one step: record it, keep it alive in the DB, sample telemetry, and store what it did.

The step row is written *before* the step starts, then refreshed by a heartbeat thread, so that a
process killed without a word (kill -9, preemption) leaves a row that the next command marks
``interrupted`` (see :mod:`sessionkit.liveness`). Ctrl-C and SIGTERM mark the step ``interrupted`` here,
with what it had, and the CLI exits 130 or 143.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

from .config import MAX_STEP_NAME  # one limit for steps and plans
from .errors import SessionkitError, StepInterrupted, UsageError
from .liveness import HEARTBEAT_S, pid_namespace, process_start_time, touch_heartbeat
from .secrets import current_redactor
from .progress import Progress, estimate_from_history, heartbeat_every_s
from .steps import Step, StepContext, StepResult, record_artifact, refresh_artifacts
from .timefmt import now_iso

EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGHUP = 130, 143, 129
# A skipped step "cannot test": the exit status git bisect run reads as "skip this commit".
EXIT_SKIPPED = 125
SIGNAL_NAMES = {EXIT_SIGTERM: "SIGTERM", EXIT_SIGHUP: "SIGHUP", EXIT_SIGINT: "Ctrl-C"}
# Disk space kept free while a step runs and given back before its end is written, so that a step
# that filled the disk can still be recorded as failed, with the reason.
# With less free space than that, the most of it that can be had, halving down to the least.
RESERVE_BYTES = 512 * 1024
RESERVE_MIN_BYTES = 16 * 1024
RESERVE_NAME = ".space-reserve"


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left on device" (ENOSPC, EDQUOT) and SQLite's "database or disk is full"."""
    import errno
    import sqlite3

    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, sqlite3.Error) and "disk is full" in str(err):
            return True
    return False


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _reserve_space(workdir: Path) -> Path | None:
    """A file in ``workdir`` holding :data:`RESERVE_BYTES` of disk space (or, on a disk with less
    free, the most it can hold, down to :data:`RESERVE_MIN_BYTES`); None without one."""
    path = workdir / RESERVE_NAME
    size = RESERVE_BYTES
    while size >= RESERVE_MIN_BYTES:
        try:
            with open(path, "wb") as fh:
                try:
                    os.posix_fallocate(fh.fileno(), 0, size)
                except (AttributeError, OSError):
                    fh.write(b"\0" * size)
            return path
        except OSError:
            size //= 2
    try:
        path.unlink()
    except OSError:
        pass
    return None


def _release_space(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass


def artifacts_dir(db, session: dict, seq: int, name: str) -> Path:
    """Where step ``seq`` (named ``name``) of ``session`` would keep its files:
    ``<artifacts root>/session-N/NN-name`` (see :func:`~sessionkit.db.artifacts_root`)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    safe = safe.encode()[:80].decode(errors="ignore")  # file names hold at most 255 bytes
    from .db import artifacts_root

    return artifacts_root(db.path) / f"session-{session['number']}" / f"{seq:02d}-{safe}"


def check_session_folder(db, session: dict, name: str) -> None:
    """Refuse to start step ``name`` of ``session`` when the folders its files go in are there but
    cannot hold them: ``<artifacts root>/session-N`` (see :func:`artifacts_dir`) that is not a
    folder of its own (a file, a FIFO, or a symbolic link, whose step files would land wherever
    it points: outside the artifacts folder, or in another session's folder), or an artifacts
    folder that is not a folder (a file, a dangling symbolic link). The artifacts folder itself
    may be a symbolic link to a folder (one on a larger disk). Nothing is made or changed.

    Raises :class:`~sessionkit.errors.SessionkitError` (one line, exit status 1).
    """
    from .db import artifacts_root, not_a_folder_of_its_own

    root = artifacts_root(db.path)
    folder = root / f"session-{session['number']}"
    start = f"cannot start step {name!r}:"
    again = "move it away and run the step again"
    problem = not_a_folder_of_its_own(folder)
    if folder.is_symlink():
        raise SessionkitError(f"{start} {folder} is {problem}; the session's step files go only "
                              f"in a folder of its own inside {root}: {again}")
    if root.is_symlink() and not root.exists():
        raise SessionkitError(f"{start} {root} is a symbolic link to {os.readlink(root)}, which "
                              f"does not exist; the session's step files go there: {again}")
    if os.path.lexists(root) and not root.is_dir():  # a link to a folder is fine there
        problem, folder = ("a file" if root.is_file() else "not a folder"), root
    if problem:
        raise SessionkitError(f"{start} {folder} is {problem}, where a folder of the session's "
                              f"step files goes: {again}")


def make_step_folder(db, session: dict, seq: int, name: str) -> Path:
    """Create the step's folder and return it: :func:`artifacts_dir`, or ``<that>.2``, ``.3``, ...
    when a folder of that name is already there.

    A folder already there belongs to no step of this database (a step's number is never reused),
    so its files are somebody else's: those of a database that was deleted and started again in the
    same place, or of another database whose artifacts folder has the same name. Writing into it
    would overwrite them, so the step gets a folder of its own (created with ``mkdir``, which fails
    when the name exists, so that two processes never share one).

    The session's folder is checked first (:func:`check_session_folder`), and the step's folder
    once made: should it not lie in ``<real artifacts root>/session-N`` (a symbolic link put
    there meanwhile), it is removed again and the step refused.

    Raises:
        SessionkitError: what :func:`check_session_folder` refuses, or a folder made elsewhere.
        OSError: the folder cannot be created (permissions, full disk, ...).
    """
    from .db import make_own_folder

    base = artifacts_dir(db, session, seq, name)
    check_session_folder(db, session, name)
    base.parent.mkdir(parents=True, exist_ok=True)
    folder = make_own_folder(base)
    inside = os.path.join(os.path.realpath(base.parent.parent), base.parent.name, folder.name)
    if base.parent.is_symlink() or os.path.realpath(folder) != inside:
        try:
            folder.rmdir()  # made by this call, empty
        except OSError:
            pass
        check_session_folder(db, session, name)  # names the link
        raise SessionkitError(f"cannot start step {name!r}: its folder {folder} lies outside "
                              f"{base.parent} (a symbolic link on the way)")
    return folder


def step_position(session: dict, name: str, seq: int, index=None, total=None) -> str:
    plan = session.get("plan") or []
    if index is None and name in plan:
        index, total = plan.index(name) + 1, len(plan)
    if index is None:
        return f"[{seq}]"
    return f"[{index}/{total}]" if total else f"[{index}]"


class _Heartbeat(threading.Thread):
    """Refreshes the step's heartbeat in the DB and prints a progress line every 30 s."""

    def __init__(self, db_path, step_id: str, progress: Progress, started: float, every: float):
        super().__init__(daemon=True, name="sessionkit-heartbeat")
        self.db_path, self.step_id, self.progress, self.started = db_path, step_id, progress, started
        self.every = every
        self.stop_event = threading.Event()

    def run(self) -> None:
        from .db import open_db

        db = None
        every = self.every
        next_print = self.started + every
        tick = min(HEARTBEAT_S, every)
        while not self.stop_event.wait(tick):
            now = time.monotonic()
            try:
                db = db or open_db(self.db_path)
                touch_heartbeat(db, self.step_id)
            except Exception:  # a busy or vanished DB must not kill the step; liveness uses the pid
                db = None
            if now >= next_print:
                self.progress.heartbeat(now - self.started)
                next_print += every
        if db is not None:
            db.conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def _start_telemetry(db, step_id: str, interval_s: float, progress: Progress):
    try:
        from .telemetry import start_telemetry
    except ImportError:
        return None
    return start_telemetry(db, step_id, interval_s=interval_s, notice=progress.note)


class _Signals:
    """Signals around one step, in the main thread.

    While the step runs (the ``with`` block): SIGTERM -> StepInterrupted(143) and SIGHUP (a lost
    terminal or SSH session) -> StepInterrupted(129); SIGINT stays Python's KeyboardInterrupt.
    From the end of the block until :meth:`release`, while the step's end is written (which may
    wait for another writer's lock), SIGINT, SIGTERM and SIGHUP are held instead, so that none of
    them loses the record; :meth:`release` restores the previous handlers and returns the exit
    status of the first signal held (130, 143 or 129), or None.
    """

    CODES = {signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}
    HELD = {signal.SIGINT: EXIT_SIGINT, **CODES}

    def __init__(self):
        self.previous: dict = {}
        self.held: int | None = None
        self.main = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.main:
            def on_signal(signum, frame):
                raise StepInterrupted(self.CODES[signum])
            for sig in self.CODES:
                self.previous[sig] = signal.signal(sig, on_signal)
        return self

    def __exit__(self, *exc):
        if self.main:
            def hold(signum, frame):
                if self.held is None:
                    self.held = self.HELD[signum]
            for sig in self.HELD:
                previous = signal.signal(sig, hold)
                self.previous.setdefault(sig, previous)
        return False

    def release(self) -> int | None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous = {}
        return self.held


DEFAULT_TELEMETRY_INTERVAL_S = 0.1


def telemetry_interval_from_env() -> float | None:
    """``$SESSIONKIT_TELEMETRY_INTERVAL`` in seconds (a duration with its unit: ``250ms``,
    ``1s``), or None when it is unset or empty. It wins over ``telemetry_interval`` in
    ``[tool.sessionkit]``. A bare number or anything else that is not a duration raises
    :class:`~sessionkit.errors.UsageError` naming the variable, before the step is recorded."""
    raw = os.environ.get("SESSIONKIT_TELEMETRY_INTERVAL")
    if raw is None or not raw.strip():
        return None
    from .config import check_telemetry_interval
    from .timefmt import parse_duration

    try:
        return check_telemetry_interval(parse_duration(raw))
    except UsageError as exc:
        raise UsageError(f"SESSIONKIT_TELEMETRY_INTERVAL: {exc}") from None



def run_step(db, session: dict, step: Step, options=None, *, name: str | None = None,
             kind: str = "builtin", command: list[str] | None = None, index: int | None = None,
             total: int | None = None, budget_s: float | None = None,
             telemetry_interval_s: float | None = None, stream=None) -> dict:
    """Run ``step`` inside ``session`` and return the finished step row.

    ``options``: an instance of the step's ``options_type``, or a mapping of option names to
    values that is checked first (:meth:`Step.parse_options`; a bad value raises
    :class:`~sessionkit.steps.typed.OptionError` before anything is recorded).
    Raises :class:`StepInterrupted` (after recording) on Ctrl-C or SIGTERM.
    """
    from .sessions import session_steps

    options = step.parse_options(options)
    name = name or step.name
    check_step_name(name, kind=kind, runs=step.name)
    interval = (telemetry_interval_from_env() or telemetry_interval_s
                or DEFAULT_TELEMETRY_INTERVAL_S)
    every = heartbeat_every_s()
    if session["status"] != "open":
        raise SessionkitError(f"session {session['number']} is {session['status']}; start a new one")
    check_session_folder(db, session, name)  # before anything is recorded
    budgets = session.get("step_budgets") or {}
    budget = budget_s or budgets.get(name) or step.budget_s
    step_id = str(uuid.uuid4())
    redactor = current_redactor()
    row = {
        "id": step_id, "session_id": session["id"], "name": name, "kind": kind,
        "command": json.dumps(redactor.argv(command)) if command is not None else None,
        "options": json.dumps(redactor.value(options.to_json()), default=str), "status": "running",
        "started_at": now_iso(), "budget_s": budget, "host": socket.gethostname(),
        "pid": os.getpid(), "pid_started": process_start_time(os.getpid()), "pid_ns": pid_namespace(),
        "heartbeat_at": now_iso(),
    }
    # One statement, so that two processes recording steps at once never share a seq.
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    with db.conn:
        db.execute(
            f"INSERT INTO steps (seq, {columns}) VALUES ("
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE session_id = ?), " + marks + ")",
            [session["id"], *row.values()])
    seq = db.execute("SELECT seq FROM steps WHERE id = ?", [step_id]).fetchone()[0]
    progress = Progress(step_position(session, name, seq, index, total), name, stream=stream)
    expected, runs = estimate_from_history(db, name, exclude_step=step_id)
    try:
        workdir = make_step_folder(db, session, seq, name)
    except SessionkitError:
        _forget(db, step_id)
        raise
    except OSError as exc:
        _forget(db, step_id)
        where = exc.filename or artifacts_dir(db, session, seq, name)
        raise SessionkitError(f"cannot create the step's folder {where}: {exc.strerror}") from None
    reserve = _reserve_space(workdir)
    progress.start(expected_s=expected, runs=runs, budget_s=budget)
    context = StepContext(db=db, session=session, step_id=step_id, seq=seq, progress=progress,
                          options=options, workdir=workdir)

    started = time.monotonic()
    heartbeat = _Heartbeat(db.path, step_id, progress, started, every)
    heartbeat.start()
    telemetry = _start_telemetry(db, step_id, interval, progress)
    interrupted: BaseException | None = None
    exit_code = None
    signals = _Signals()
    try:
        with signals:
            result = step.run(context)
        if not isinstance(result, StepResult):
            raise TypeError(f"step {name!r} returned {type(result).__name__}, not StepResult")
        status, message, exit_code = result.status, result.message, result.exit_code
    except KeyboardInterrupt as exc:
        interrupted, status, exit_code = exc, "interrupted", EXIT_SIGINT
        message, result = "interrupted by Ctrl-C", None
    except StepInterrupted as exc:
        interrupted, status, exit_code = exc, "interrupted", exc.exit_code
        message, result = f"interrupted by {SIGNAL_NAMES.get(exc.exit_code, 'a signal')}", None
    except SessionkitError as exc:
        status, message, result = "failed", str(exc), None
    except Exception as exc:  # a bug in a step: keep the traceback as an artifact, not on screen
        status, result = "failed", None
        if is_disk_full(exc):
            message = f"no space left on device ({type(exc).__name__}: {exc})"
        else:
            crash = workdir / "crash.txt"
            try:
                crash.write_text(traceback.format_exc())
                record_artifact(db, step_id, crash, "traceback")
                where = f"traceback: {crash}"
            except Exception as inner:  # noqa: BLE001 - the record below matters more
                where = f"traceback not saved: {inner}"
            message = f"step crashed: {type(exc).__name__}: {exc} ({where})"
    finally:
        _release_space(reserve)
        duration = time.monotonic() - started
        heartbeat.stop()
        if telemetry is not None:
            try:
                telemetry.stop()
            except Exception as exc:  # telemetry must never cost the step's record
                progress.note(f"telemetry could not be saved: {exc}")

    # A signal since the step ended (held by `signals`) must not lose the record: it is written
    # first, then the signal ends sessionkit with its status.
    try:
        _finish(db, step, step_id, result, context, status, message, exit_code, duration, budget,
                progress)
    except Exception as exc:
        if is_disk_full(exc):
            raise SessionkitError(
                f"no space left on device: step {name!r} ended {status} but that could not be "
                f"written to {db.path}") from None
        raise
    finally:
        held = signals.release()
    if interrupted is not None:
        raise StepInterrupted(exit_code) from None
    if held is not None:
        raise StepInterrupted(held)
    return next(s for s in session_steps(db, session["id"]) if s["id"] == step_id)


def _forget(db, step_id: str) -> None:
    """Remove the row of a step that never started (nothing refers to it yet), so that no
    half-made step is left behind."""
    try:
        with db.conn:
            db.execute("DELETE FROM steps WHERE id = ?", [step_id])
    except Exception:  # noqa: BLE001 - the caller raises the real reason
        pass


HOOK_PREFIX = "hook:"  # the names of the hook steps 'sessionkit run' records: hook:before, hook:after


def check_step_name(name: str, *, kind: str = "builtin", runs: str | None = None) -> None:
    """Raise :class:`UsageError` for a step name that is empty, longer than
    :data:`MAX_STEP_NAME` characters, holds control characters or begins or ends with a space
    (``" build"`` would print as the built-in ``build``, and a plan, whose names are stripped,
    would never match it) or with ``-`` (the command line reads it as an option: ``step run -n
    -- CMD`` could never name it, nor a plan's step be run); and for the name of a
    built-in step (``build``, ``bench``...: :data:`sessionkit.steps.REGISTRY` but ``run``, the
    command step itself) given to a step of another ``kind`` than ``"builtin"`` (a ``step run``
    command, a hook) or to another step than that one (``runs``: the name of the step that would
    run under ``name``, as :func:`run_step` passes it). A plan, a step budget, progress counters
    and history estimates know a step by its name, so a command called ``build`` would pass for
    the kernel build: it would satisfy a planned ``build`` without building anything. A name that
    begins with ``hook:`` (:data:`HOOK_PREFIX`) is the hooks' (``kind="hook"``) alone: a command
    step called ``hook:before`` would show as the run's hook."""
    from .steps import REGISTRY

    if name in REGISTRY and name != "run" and (kind != "builtin" or (runs is not None
                                                                     and runs != name)):
        if kind != "builtin" or runs == "run":
            fix = f"give a command step a name of its own, e.g. '{name}-cmd'"
        else:
            fix = f"the {runs!r} step may not run under it"
        raise UsageError(f"step name {name!r} is taken by a built-in step ('sessionkit step "
                         f"{name}' runs it); {fix}")
    if name.startswith(HOOK_PREFIX) and kind != "hook":
        raise UsageError(f"step name {name!r} is a hook's ('{HOOK_PREFIX}before' and "
                         f"'{HOOK_PREFIX}after' run the [tool.sessionkit.hooks] commands); give the "
                         "step a name that does not begin with 'hook:'")
    if not name or not name.strip():
        raise UsageError("a step name must not be empty")
    if len(name) > MAX_STEP_NAME:
        raise UsageError(f"step name of {len(name)} characters is too long: "
                         f"use at most {MAX_STEP_NAME}")
    if not name.isprintable():
        raise UsageError(f"bad step name {name!r}: it holds control characters")
    if name.startswith("-"):
        other = name.lstrip("-").strip() or "mine"
        raise UsageError(f"bad step name {name!r}: it begins with '-', which the command line "
                         f"reads as an option; give the step a name that begins otherwise, e.g. "
                         f"{other!r}")
    if name != name.strip():
        raise UsageError(f"bad step name {name!r}: it begins or ends with a space, which a table "
                         f"does not show (it would pass for {name.strip()!r}); leave the spaces out")


def _finish(db, step, step_id, result, context, status, message, exit_code, duration, budget,
            progress) -> None:
    from .db import patiently

    def notice(text: str) -> None:
        try:
            progress.note(text)
        except OSError:
            pass

    what = f"step {step.name!r}"
    # Each write below waits out another writer's long lock (patiently): the step has run,
    # and what it found must land. The metrics go in one transaction, so that a retry
    # never inserts them twice; the artifact and step updates may be repeated.
    if result is not None and result.metrics:
        patiently(db, lambda: _insert_metrics(db, context, result.metrics), what=what,
                  notice=notice)
    if result is not None:
        for art in result.artifacts:
            patiently(db, lambda art=art: record_artifact(db, step_id, Path(art.path), art.kind),
                      what=what, notice=notice)
    # Files recorded while the step ran (its log first of all) have grown since.
    patiently(db, lambda: refresh_artifacts(db, step_id), what=what, notice=notice)
    log = db.execute("SELECT path FROM artifacts WHERE step_id = ? AND kind = 'log' LIMIT 1",
                     [step_id]).fetchone()
    redactor = current_redactor()
    message = redactor.text(message or "") if message is not None else None
    update = {"status": status, "ended_at": now_iso(), "duration_s": duration,
              "exit_code": exit_code, "message": message,
              "summary": json.dumps(redactor.value(result.summary_json() if result else {}),
                                    default=str)}
    tail = getattr(step, "output_tail", None)
    if tail is not None:
        update["output_tail"] = redactor.text(tail)
    def write_step():
        with db.conn:
            db["steps"].update(step_id, update)

    patiently(db, write_step, what=what, notice=notice)
    try:
        progress.end(status, duration, budget_s=budget, exit_code=exit_code, message=message,
                     log=log[0] if log else None)
    except OSError:  # the terminal is gone (SIGHUP) or its pipe closed; the record is written
        pass


def _insert_metrics(db, context, metrics) -> None:
    """The step's result metrics in one transaction: all or none, so a retry cannot double them."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        context.metrics(metrics)  # its own `with conn` commits this transaction
    finally:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")


def exit_code_for(step_row: dict) -> int:
    """The process exit status that reports a finished step."""
    if step_row["status"] == "passed":
        return 0
    if step_row["status"] == "skipped":
        return EXIT_SKIPPED
    if step_row["status"] == "interrupted":
        return step_row.get("exit_code") or EXIT_SIGINT
    code = step_row.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1
