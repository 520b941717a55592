"""Session lifecycle: start, end, look up, list, status and export."""

from __future__ import annotations

import json
import os
import socket
import uuid

from .costs import session_costs, stored_number
from .db import SQLITE_MAX_INT
from .gitinfo import git_commit
from .errors import (NoOpenSession, SessionAlreadyOpen, SessionNotFound, SessionStateError,
                     UsageError)
from .timefmt import fmt_duration, now_iso, seconds_between

END_STATUSES = ("passed", "failed", "abandoned")


def _loads(text, default=None):
    """A JSON column's value; ``default`` for text that is not JSON (a damaged or foreign row)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return default


def _decode(row: dict) -> dict:
    """A sessions row with its JSON columns read: ``plan`` a list of step names and
    ``step_budgets`` {name: seconds}; what a damaged or foreign row holds instead is left out."""
    import math

    row = dict(row)
    if "plan" in row:
        plan = _loads(row["plan"]) if isinstance(row["plan"], str) else row["plan"]
        row["plan"] = [p for p in plan if isinstance(p, str)] if isinstance(plan, list) else []
    if "step_budgets" in row:
        budgets = row["step_budgets"]
        budgets = _loads(budgets) if isinstance(budgets, str) else budgets
        row["step_budgets"] = {
            k: v for k, v in budgets.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        } if isinstance(budgets, dict) else {}
    for key in ("budget_s", "gpu_rate_usd_per_h", "ai_rate_usd_per_h"):
        if key in row:
            row[key] = stored_number(row[key], minimum=0.0)
    return row


def open_sessions(db) -> list[dict]:
    return [_decode(r) for r in db.query(
        "SELECT * FROM sessions WHERE status = 'open' ORDER BY number DESC")]


def get_open_session(db, *, required: bool = True) -> dict | None:
    found = open_sessions(db)
    if not found:
        if required:
            raise NoOpenSession("no open session; start one with: sessionkit start -m/--objective TEXT")
        return None
    return found[0]


def check_start_options(*, objective: str | None = None, gpu_rate: float | None = None,
                        ai_rate: float | None = None, name: str | None = None, **_other) -> None:
    """Check the options of a new session without the database, so that a command can refuse them
    before it opens (or makes) one: an objective is required, and rates (USD per hour) must not
    be negative. ``name`` (the session's name, if one was given) only shapes the message of a
    missing objective: ``sessionkit start "fix the tail"`` names the session, it does not give
    its objective. Other keys (as :func:`sessionkit.session_defaults.resolve_start_options`
    returns them) are ignored. Raises :class:`~sessionkit.errors.UsageError`."""
    if not objective or not objective.strip():
        hint = f" ({name!r} is the session's name, not its objective)" if name else ""
        raise UsageError(f"an objective is required: -m/--objective TEXT{hint}")
    for what, rate in (("gpu rate", gpu_rate), ("ai rate", ai_rate)):
        if rate is not None and rate < 0:
            raise UsageError(f"{what} must not be negative")


def start_session(db, name: str | None = None, *, objective: str, plan=None, budget_s=None,
                  gpu_rate=None, ai_rate=None, step_budgets=None, force: bool = False) -> dict:
    """Open a new session and return its row.

    Refuses while another session is open, unless ``force``; raises
    :class:`~sessionkit.errors.UsageError` for a name with control characters and for the options
    :func:`check_start_options` refuses, before anything else is read or written.
    """
    if name is not None and not name.isprintable():  # as step names (runner.check_step_name)
        raise UsageError(f"bad session name {name!r}: it holds control characters")
    check_start_options(objective=objective, gpu_rate=gpu_rate, ai_rate=ai_rate)
    from .secrets import scrub_prose

    row = {
        "id": str(uuid.uuid4()),
        "objective": scrub_prose(objective.strip()),
        "status": "open",
        "started_at": now_iso(),
        "budget_s": budget_s,
        "gpu_rate_usd_per_h": gpu_rate,
        "ai_rate_usd_per_h": ai_rate,
        "plan": json.dumps(list(plan or [])),
        "step_budgets": json.dumps(dict(step_budgets or {})),
        "host": socket.gethostname(),
        "cwd": os.getcwd(),
        "git_commit": git_commit(),
    }
    given_name = scrub_prose((name or "").strip())
    # One statement reads the next number and inserts it, so that sessions started by several
    # processes at once never share a number.
    # Without ``force`` the check for an open session and the insert share one write transaction, so
    # that of several processes starting at once exactly one opens a session.
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not force:
            current = get_open_session(db, required=False)
            if current:
                raise SessionAlreadyOpen(
                    f"session {current['number']} ({current['name']}) is still open; "
                    "end it with 'sessionkit end --outcome TEXT', or pass --force to open another")
        db.execute(
            f"INSERT INTO sessions (number, name, {columns}) "
            "SELECT n, COALESCE(?, 'Session ' || n), " + marks +
            " FROM (SELECT COALESCE(MAX(number), 0) + 1 AS n FROM sessions)",
            [given_name or None, *row.values()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    stored = db.execute("SELECT number, name FROM sessions WHERE id = ?", [row["id"]]).fetchone()
    row["number"], row["name"] = stored
    return _decode(row)


def steps_status(db, session_id: str, plan: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
    """The status a session's steps call for, and why: ``("failed", reason)`` when the latest run of
    any step name ended ``failed`` or ``interrupted``, when no step passed (none ran, or every
    one was skipped), or when a step of the session's ``plan`` never ran, else ``("passed",
    reason)``. A step that failed and then passed on a later run counts as passed; a skipped step
    counts as neither, and as run for the plan.

    This is what :func:`end_session` records when it is given no status.
    """
    latest: dict[str, str] = {}
    for name, status in db.execute(
            "SELECT name, status FROM steps WHERE session_id = ? AND status != 'running' ORDER BY seq",
            [session_id]).fetchall():
        latest[name] = status
    bad = [f"{name} {status}" for name, status in latest.items() if status in ("failed", "interrupted")]
    if bad:
        return "failed", "the latest run of " + ", ".join(bad)
    passed = sum(1 for status in latest.values() if status == "passed")
    if not latest:
        return "failed", "no step ran"
    if not passed:  # every step skipped: nothing was shown to work
        return "failed", f"no step passed ({_count(len(latest), 'step')} skipped)"
    never = [name for name in plan if name not in latest]
    if never:  # the session did not do what it set out to do
        return "failed", f"planned {'step' if len(never) == 1 else 'steps'} never ran: {', '.join(never)}"
    return "passed", f"the latest run of each step passed or was skipped ({passed} passed)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def end_session(db, session: dict | None = None, *, outcome: str, status: str | None = None) -> dict:
    """End ``session`` (default: the open one) with ``outcome`` and ``status`` (one of
    :data:`END_STATUSES`). Without ``status`` it is taken from the steps (:func:`steps_status`):
    ``failed`` when the latest run of any step failed or was interrupted, no step passed or a
    planned step never ran, else ``passed``; the
    returned row then carries the reason as ``status_reason``.

    Raises :class:`UsageError` for a bad status or an empty outcome (exit 2),
    :class:`SessionStateError` for a session already ended or a step still running (a well-formed
    request the session's state refuses: exit 1), and :class:`NoOpenSession` when no session is
    given and none is open.
    """
    if status is not None and status not in END_STATUSES:
        raise UsageError(f"bad status {status!r}: use one of {', '.join(END_STATUSES)}")
    if not outcome or not outcome.strip():
        raise UsageError("an outcome is required: --outcome TEXT")
    from .secrets import scrub_prose

    session = session or get_open_session(db)
    if session["status"] != "open":
        raise SessionStateError(f"session {session['number']} is already ended ({session['status']})")
    # The checks and the update share one write transaction, and the update only touches a session
    # that is still open: of several processes ending one session at once, exactly one succeeds.
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        running = db.execute("SELECT name FROM steps WHERE session_id = ? AND status = 'running'",
                             [session["id"]]).fetchall()
        if running:
            raise SessionStateError(f"step {running[0][0]!r} is still running in this session; "
                                    "wait for it or stop it")
        reason = None
        if status is None:
            status, reason = steps_status(db, session["id"], session.get("plan") or ())
        changed = conn.execute(
            "UPDATE sessions SET status = ?, outcome = ?, ended_at = ? WHERE id = ? AND status = 'open'",
            [status, scrub_prose(outcome.strip()), now_iso(), session["id"]]).rowcount
        if changed != 1:
            now = db.execute("SELECT status FROM sessions WHERE id = ?", [session["id"]]).fetchone()
            raise SessionStateError(f"session {session['number']} is already ended "
                                    f"({now[0] if now else 'gone'}): another process ended it first")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    ended = get_session(db, session["id"])
    if reason is not None:
        ended["status_reason"] = reason
    return ended


def get_session(db, ref: str | int | None = None) -> dict:
    """A session by UUID (or unique prefix), number, name, ``last`` or ``open``; default (``None``):
    open, else last. An empty or blank ``ref`` is a mistake, not the default: UsageError."""
    if ref is not None and str(ref).strip() == "":
        raise UsageError(f"empty session reference {ref!r}: give a session number, id, name or 'last'")
    if ref is None:
        found = get_open_session(db, required=False)
        if found:
            return found
        ref = "last"
    text = str(ref).strip()
    if text == "last":
        rows = list(db.query("SELECT * FROM sessions ORDER BY number DESC LIMIT 1"))
        if not rows:
            raise SessionNotFound("there are no sessions yet; start one with: sessionkit start -m/--objective TEXT")
        return _decode(rows[0])
    if text == "open":
        return get_open_session(db)
    if text.isascii() and text.isdigit():
        number = int(text)  # beyond SQLite's 64-bit integers no session can have it
        rows = (list(db.query("SELECT * FROM sessions WHERE number = ?", [number]))
                if number <= SQLITE_MAX_INT else [])
    else:
        rows = list(db.query("SELECT * FROM sessions WHERE id = ?", [text]))
        if not rows and len(text) >= 4:
            rows = list(db.query("SELECT * FROM sessions WHERE id LIKE ?", [text + "%"]))
        if not rows:
            rows = list(db.query("SELECT * FROM sessions WHERE name = ?", [text]))
    if len(rows) > 1:
        raise SessionNotFound(f"{text!r} matches {len(rows)} sessions; give the number or the full id")
    if not rows:
        raise SessionNotFound(f"no session matches {text!r}; see 'sessionkit sessions'")
    return _decode(rows[0])


def session_steps(db, session_id: str) -> list[dict]:
    rows = db.query("SELECT * FROM steps WHERE session_id = ? ORDER BY seq", [session_id])
    out = []
    for row in rows:
        row = dict(row)
        for key in ("summary", "options", "command"):  # text that is not JSON stays text
            if isinstance(row.get(key), str):
                row[key] = _loads(row[key], row[key])
        for key in ("duration_s", "budget_s"):
            if key in row:
                row[key] = stored_number(row[key], minimum=0.0)
        if "exit_code" in row and not (isinstance(row["exit_code"], int)
                                       and not isinstance(row["exit_code"], bool)):
            row["exit_code"] = None
        out.append(row)
    return out


def list_sessions(db, limit: int | None = None) -> list[dict]:
    sql = """
        SELECT s.*, COUNT(st.id) AS steps,
               SUM(st.status = 'passed') AS passed, SUM(st.status = 'failed') AS failed,
               SUM(st.status = 'interrupted') AS interrupted
        FROM sessions s LEFT JOIN steps st ON st.session_id = s.id
        GROUP BY s.id ORDER BY s.number DESC"""
    if limit:
        sql += f" LIMIT {int(limit)}"
    out = []
    now = now_iso()
    for row in db.query(sql):
        row = _decode(row)
        row["duration_s"] = seconds_between(row["started_at"], row["ended_at"] or now)
        for key in ("passed", "failed", "interrupted"):
            row[key] = row[key] or 0
        out.append(row)
    return out


def session_status(db, session: dict | None = None) -> dict:
    """Elapsed time against budget, cost so far, steps run and the next planned one.

    ``runs`` counts finished step runs (a step run three times counts three); ``planned_done``
    lists the planned steps whose latest finished run passed or was skipped, and ``next_step`` is
    the first planned step that is not among them (a step that passed and then failed on a later
    run is due again), or None.
    """
    session = session or get_open_session(db)
    steps = session_steps(db, session["id"])
    now = now_iso()
    costs = session_costs(session, steps, now=now)
    latest = {s["name"]: s["status"] for s in steps if s["status"] != "running"}  # ordered by seq
    plan = session["plan"]
    planned_done = [name for name in plan if latest.get(name) in ("passed", "skipped")]
    next_step = next((name for name in plan if name not in planned_done), None)
    elapsed = costs["wall_s"]
    return {
        "session": session,
        "elapsed_s": elapsed,
        "budget_s": session["budget_s"],
        "budget_left_s": None if session["budget_s"] is None else session["budget_s"] - elapsed,
        "costs": costs,
        "steps": steps,
        "plan": plan,
        "runs": sum(1 for s in steps if s["status"] != "running"),
        "planned_done": planned_done,
        "next_step": next_step,
    }


def export_session(db, session: dict) -> dict:
    """Everything recorded for one session, as plain JSON-able data."""
    steps = session_steps(db, session["id"])
    ids = [s["id"] for s in steps]
    marks = ",".join("?" * len(ids))

    def rows(table: str) -> list[dict]:
        if not ids or not db[table].exists():
            return []
        return [dict(r) for r in db.query(f"SELECT * FROM {table} WHERE step_id IN ({marks})", ids)]

    extra = {}
    for table in db.table_names():
        if table in ("metrics", "artifacts", "telemetry_samples") or table.startswith("_"):
            continue
        cols = {c.name for c in db[table].columns}
        if "step_id" in cols and table not in ("env_snapshots",):
            extra[table] = rows(table)
    # Rows one level further down, such as bench_samples -> bench_results -> steps.
    for table in db.table_names():
        if table in extra or table.startswith("_"):
            continue
        for fk in db[table].foreign_keys:
            if fk.other_table in extra and fk.other_table not in ("steps", "sessions"):
                extra[table] = [dict(r) for r in db.query(
                    f"SELECT * FROM [{table}] WHERE [{fk.column}] IN (SELECT [{fk.other_column}]"
                    f" FROM [{fk.other_table}] WHERE step_id IN ({marks}))", ids)]
                break
    return {
        "session": session,
        "steps": steps,
        "metrics": rows("metrics"),
        "artifacts": rows("artifacts"),
        "telemetry_samples": rows("telemetry_samples"),
        "env_snapshots": [dict(r) for r in db.query(
            "SELECT * FROM env_snapshots WHERE session_id = ? ORDER BY taken_at", [session["id"]])],
        "patterns_applied": [dict(r) for r in db.query(
            "SELECT * FROM patterns_applied WHERE session_id = ? ORDER BY applied_at", [session["id"]])],
        "costs": session_costs(session, steps),
        **extra,
    }


def describe_elapsed(status: dict) -> str:
    budget = status["budget_s"]
    text = fmt_duration(status["elapsed_s"])
    return f"{text} of {fmt_duration(budget)}" if budget else f"{text} (no budget set)"
