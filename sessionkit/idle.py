"""Keep or stop the GPU: what the open session's idle time costs against what a restart costs.

A restart of a GPU machine costs the time from a session's start to its first passed build (the
machine boots, the environment is checked, the kernel compiles): its median over this host's latest
50 sessions is the measured restart cost. Both are priced at the session's GPU rate. When the idle
time is about to pass the restart time, stopping the machine is the cheaper choice.
"""

from __future__ import annotations

import socket
import statistics

from .timefmt import fmt_duration, fmt_money, now_iso, seconds_between

SOON_S = 300.0  # "soon": the idle time passes the restart time within five minutes


HISTORY_SESSIONS = 50  # the restart cost is the median over this many latest sessions on the host


def restart_seconds(db, host: str, limit: int = HISTORY_SESSIONS) -> list[float]:
    """Seconds from start to first passed ``build`` step, for each of the latest ``limit``
    sessions recorded on ``host`` that have one (recent sessions: the code, driver and build cache
    of now). Reads through ``idx_sessions_host``, so ``status`` stays fast however many sessions."""
    rows = db.execute(
        """SELECT s.started_at, MIN(st.ended_at) FROM
               (SELECT id, started_at FROM sessions WHERE host = ?
                ORDER BY started_at DESC LIMIT ?) s
           JOIN steps st ON st.session_id = s.id
           WHERE st.name = 'build' AND st.kind = 'builtin' AND st.status = 'passed' AND st.ended_at IS NOT NULL
           GROUP BY s.id""", [host, limit]).fetchall()
    out = []
    for started, first_build in rows:
        secs = seconds_between(started, first_build)
        if secs is not None and secs >= 0:
            out.append(secs)
    return out


def idle_state(db, session: dict, steps: list[dict], *, now: str | None = None,
               host: str | None = None) -> dict:
    """The open session's idle time and restart cost.

    Returns ``{"running", "idle_s", "idle_usd", "restart_s", "restart_usd", "restart_sessions",
    "host", "gpu_rate_usd_per_h", "advice"}``: seconds since the last step ended (or since the start
    when none ran; None while a step runs), the median restart time in seconds over ``host``'s
    sessions (None without history), costs in USD at the session's GPU rate (None when the rate is
    not set) and a one-line ``advice`` (None when there is nothing to advise).
    """
    now = now or now_iso()
    host = host or socket.gethostname()
    rate = session.get("gpu_rate_usd_per_h")
    running = any(st["status"] == "running" for st in steps)
    ended = [st["ended_at"] for st in steps if st.get("ended_at")]
    idle_s = None if running else max(0.0, seconds_between(max(ended) if ended else session["started_at"], now) or 0.0)
    samples = restart_seconds(db, host)
    restart_s = statistics.median(samples) if samples else None

    def usd(secs):
        return None if rate is None or secs is None else rate * secs / 3600.0

    state = {"running": running, "idle_s": idle_s, "idle_usd": usd(idle_s), "restart_s": restart_s,
             "restart_usd": usd(restart_s), "restart_sessions": len(samples), "host": host,
             "gpu_rate_usd_per_h": rate, "advice": None}
    if restart_s is None:
        state["advice"] = (f"no restart history on {host} yet (none of its latest sessions has a passed build), "
                           "so there is no measured restart cost to weigh idling against")
    elif idle_s is not None:
        left = restart_s - idle_s
        cost = f"{fmt_duration(restart_s)}" + (f", {fmt_money(usd(restart_s))}" if rate is not None else "")
        if left <= 0:
            state["advice"] = (f"idle for longer than a restart takes ({cost}): stop the GPU unless "
                               "the next step starts now")
        elif left <= SOON_S:
            state["advice"] = (f"in {fmt_duration(left)} idling costs more than a restart ({cost}): "
                               "stop the GPU if the next step is further off than that")
    return state


def format_idle(state: dict) -> str:
    """The idle and restart lines of ``sessionkit status``."""
    rate = state["gpu_rate_usd_per_h"]
    if state["running"]:
        idle = "none: a step is running"
    else:
        idle = f"{fmt_duration(state['idle_s'])} since the last step"
        idle += (f" ({fmt_money(state['idle_usd'])} at ${rate:,.2f}/h)" if rate is not None
                 else " (GPU rate not set)")
    lines = [f"  idle:      {idle}"]
    if state["restart_s"] is not None:
        n = state["restart_sessions"]
        restart = (f"{fmt_duration(state['restart_s'])}, median start-to-first-passed-build of {n} "
                   f"session{'s' if n != 1 else ''} on {state['host']}")
        if state["restart_usd"] is not None:
            restart += f" ({fmt_money(state['restart_usd'])})"
        lines.append(f"  restart:   {restart}")
    if state["advice"]:
        lines.append(f"  advice:    {state['advice']}")
    return "\n".join(lines)
