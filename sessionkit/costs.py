"""Costs: GPU and AI rates (USD per hour) times the wall time the session was open.

A rate that was not set gives ``None`` ("rate not set"), never a made-up default.
"""

from __future__ import annotations

from .timefmt import now_iso, seconds_between


def stored_number(value, *, minimum: float | None = None) -> float | None:
    """A numeric column as a finite float (at least ``minimum``); None for NULL and for text,
    booleans or a value out of range (a damaged or foreign row), so that no reader computes
    with it."""
    import math

    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        return None
    return number


def _cost(rate: float | None, seconds: float | None) -> float | None:
    rate = stored_number(rate, minimum=0.0)
    if rate is None or seconds is None:
        return None
    return rate * seconds / 3600.0


def session_seconds(session: dict, now: str | None = None) -> float:
    end = session.get("ended_at") or now or now_iso()
    return max(0.0, seconds_between(session["started_at"], end) or 0.0)


def step_seconds(step: dict, now: str | None = None) -> float:
    """Seconds the step ran: 0 for a skipped step (it never ran, whatever its row spans), else
    its recorded duration, else from its start to its end (or ``now`` while it runs)."""
    if step.get("status") == "skipped":
        return 0.0
    duration = stored_number(step.get("duration_s"), minimum=0.0)
    if duration is not None:
        return duration
    end = step.get("ended_at") or now or now_iso()
    return max(0.0, seconds_between(step["started_at"], end) or 0.0)


def session_costs(session: dict, steps: list[dict], now: str | None = None) -> dict:
    """GPU, AI and total cost of a session, and the same per step.

    >>> session_costs({"started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T01:00:00+00:00",
    ...                "gpu_rate_usd_per_h": 2.0, "ai_rate_usd_per_h": None}, [])["gpu_usd"]
    2.0
    """
    gpu_rate, ai_rate = session.get("gpu_rate_usd_per_h"), session.get("ai_rate_usd_per_h")
    wall = session_seconds(session, now)
    gpu, ai = _cost(gpu_rate, wall), _cost(ai_rate, wall)
    total = None if gpu is None and ai is None else (gpu or 0.0) + (ai or 0.0)
    per_step = {}
    for step in steps:
        secs = step_seconds(step, now)
        s_gpu, s_ai = _cost(gpu_rate, secs), _cost(ai_rate, secs)
        per_step[step["id"]] = {
            "seconds": secs,
            "gpu_usd": s_gpu,
            "ai_usd": s_ai,
            "total_usd": None if s_gpu is None and s_ai is None else (s_gpu or 0.0) + (s_ai or 0.0),
        }
    passed = sum(1 for s in steps if s.get("status") == "passed")
    return {
        "wall_s": wall,
        "gpu_usd": gpu,
        "ai_usd": ai,
        "total_usd": total,
        "per_passed_step_usd": None if total is None or passed == 0 else total / passed,
        "passed_steps": passed,
        "rates_set": {"gpu": gpu_rate is not None, "ai": ai_rate is not None},
        "per_step": per_step,
    }
