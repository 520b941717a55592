"""Detecting steps whose process died without a word (kill -9, preemption, a lost SSH session).

A running step records its host, pid, the pid's start time and a heartbeat timestamp refreshed every
few seconds. Any later sessionkit command calls :func:`reap_dead_steps`: on the same host a step whose
process is gone (or whose pid now belongs to another process, or is a zombie nobody reaped) is dead;
on another host, or in another pid namespace of this host (two containers sharing a folder and a host
name), a step whose heartbeat is older than :data:`STALE_AFTER_S` is dead. Dead steps become
``interrupted``, with an end and duration estimated from their last sign of life (heartbeat,
telemetry sample or file write, whichever is latest); nothing else is touched.
"""

from __future__ import annotations

import json
import os
import socket
from collections import deque
from pathlib import Path

from .timefmt import now_iso, parse_iso, seconds_between, utcnow

HEARTBEAT_S = 5.0
STALE_AFTER_S = 120.0
TAIL_LINES = 200
TAIL_BYTES = 64 * 1024  # the stored tail is at most this long, whatever the lines look like


def pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]`` on Linux), or None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def cap_tail(text: str, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The end of ``text``: its last ``lines`` lines, then at most ``max_bytes`` bytes of UTF-8, so an
    over-long line keeps its end."""
    kept = "\n".join(deque(text.split("\n"), maxlen=lines))
    data = kept.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return kept
    return data[-max_bytes:].decode("utf-8", errors="ignore")


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
        return float(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/PID/stat`` (``R``, ``S``, ``Z``...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
        return data.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """True while ``pid`` runs and is the process that started at ``started`` (clock ticks since
    boot). A zombie (exited, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if process_state(pid) in ("Z", "X"):
        return False
    if started is not None:
        now_started = process_start_time(pid)
        if now_started is not None and now_started != started:
            return False
    return True


def tail_of_file(path: str | Path, lines: int = TAIL_LINES) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return cap_tail("\n".join(data.splitlines()), lines)


def is_dead(step: dict, *, host: str | None = None, namespace: str | None = None) -> bool:
    """Whether a ``running`` step's process is gone. By pid only on this host and in this pid
    namespace (steps recorded before namespaces were kept count as this one); else by heartbeat."""
    host = host or socket.gethostname()
    namespace = namespace or pid_namespace()
    same_namespace = step.get("pid_ns") is None or step.get("pid_ns") == namespace
    if step["host"] == host and same_namespace:
        return not process_alive(int(step["pid"]), step.get("pid_started"))
    beat = parse_iso(step.get("heartbeat_at")) or parse_iso(step["started_at"])
    if beat is None:  # no readable sign of life at all (a damaged row)
        return True
    return (utcnow() - beat).total_seconds() > STALE_AFTER_S


def _iso_of_unix(seconds: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="microseconds")


def last_sign_of_life(db, step: dict, *, now: str | None = None) -> tuple[str, str]:
    """(ISO time, what it is) of the latest evidence that a step's process was still working: its
    heartbeat, its last NVML telemetry sample (``telemetry_samples.t_unix_s``) or the last write to
    one of its recorded files (its log first of all, by modification time). Kept between the step's
    start and ``now``, so that a skewed clock cannot make it end before it began or in the future.

    The heartbeat alone is refreshed every :data:`HEARTBEAT_S` seconds, so a step killed before its
    first refresh would look as if it lasted nothing; its log and samples say how far it got.
    """
    now = now or now_iso()
    started = parse_iso(step["started_at"]) or parse_iso(now)
    found = [(parse_iso(step.get("heartbeat_at")) or started, "heartbeat")]
    sample = db.execute("SELECT MAX(t_unix_s) FROM telemetry_samples WHERE step_id = ?",
                        [step["id"]]).fetchone()
    if sample and sample[0] is not None:
        found.append((parse_iso(_iso_of_unix(sample[0])), "telemetry sample"))
    for path, kind in db.execute("SELECT path, kind FROM artifacts WHERE step_id = ?", [step["id"]]):
        try:
            mtime = os.stat(path).st_mtime
        except (OSError, ValueError):
            continue
        found.append((parse_iso(_iso_of_unix(mtime)), "log write" if kind == "log" else f"{kind} file write"))
    latest, what = max(found, key=lambda item: item[0])
    latest = min(max(latest, started), parse_iso(now))
    return latest.isoformat(timespec="microseconds"), what


def reap_dead_steps(db) -> list[str]:
    """Mark dead running steps ``interrupted``; return one notice per step marked.

    The step's end and duration are taken from its last sign of life (:func:`last_sign_of_life`):
    an estimate, which the message says, and which the summary records as
    ``{"duration_estimate": {"from": what, "at": ISO time}}``.
    """
    from .timefmt import fmt_duration

    notices = []
    running = [dict(r) for r in db.query("SELECT * FROM steps WHERE status = 'running'")]
    for step in running:
        if not is_dead(step):
            continue
        last_seen, what = last_sign_of_life(db, step)
        duration = seconds_between(step["started_at"], last_seen)
        log = db.execute("SELECT path FROM artifacts WHERE step_id = ? AND kind = 'log' LIMIT 1",
                         [step["id"]]).fetchone()
        tail = tail_of_file(log[0]) if log else None
        message = (f"process {step['pid']} on {step['host']} ended without a word; its duration "
                   f"({fmt_duration(duration)}) is an estimate, up to its last sign of life "
                   f"({what} at {last_seen[:19].replace('T', ' ')} UTC)")
        try:
            summary = json.loads(step.get("summary") or "{}")
        except (ValueError, RecursionError):  # not JSON, or nested too deep
            summary = {}
        if not isinstance(summary, dict):
            summary = {}
        summary["duration_estimate"] = {"from": what, "at": last_seen}
        with db.conn:
            # Only touch it if it is still running: another process may have reaped it meanwhile.
            db.execute(
                "UPDATE steps SET status = 'interrupted', ended_at = ?, duration_s = ?, message = ?,"
                " summary = ?, output_tail = COALESCE(output_tail, ?) WHERE id = ? AND status = 'running'",
                [last_seen, duration, message, json.dumps(summary), tail, step["id"]])
        from .steps import refresh_artifacts

        refresh_artifacts(db, step["id"])  # its log grew after it was recorded
        number = db.execute("SELECT number FROM sessions WHERE id = ?", [step["session_id"]]).fetchone()
        notices.append(f"Notice: step {step['name']!r} of session {number[0] if number else '?'} "
                       f"was marked interrupted: {message}")
    return notices


def touch_heartbeat(db, step_id: str) -> None:
    with db.conn:
        db.execute("UPDATE steps SET heartbeat_at = ? WHERE id = ? AND status = 'running'",
                   [now_iso(), step_id])
