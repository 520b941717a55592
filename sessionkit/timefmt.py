"""Durations, timestamps and money: parsing and formatting in one place."""

from __future__ import annotations

import datetime as _dt
import math
import re

from .errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|min|s|m|h|d)")  # ASCII digits only
# Outside these a duration is a typo (or would print as a 40-digit number of hours).
MIN_DURATION_S = 0.001
MAX_DURATION_S = 366 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds in a duration with its unit, such as ``45s``, ``90m``, ``2h``, ``1h30m``, ``1.5h`` or
    ``250ms`` (units ``ms``, ``s``, ``m``/``min``, ``h``, ``d``, in lower case; in a combined
    duration each unit appears once, the largest first).

    A bare number (``"90"``, or a TOML number) has no unit and is refused, since one reader takes
    ``--budget 2`` as two hours and another as two seconds. Raises :class:`UsageError` (one line) for
    that, for anything else that is not a duration, and for one that is not positive.

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UsageError(f"bad duration {text!r}: use a form like 45s, 10m, 2h or 1h30m")
    number = str(text).strip()
    if not isinstance(text, str) or re.fullmatch(r"\d+(\.\d+)?", number):
        if re.fullmatch(r"\d+(\.\d+)?", number) and float(number) > 0:
            raise UsageError(f"bad duration {text!r}: give it a unit, e.g. {number}s, {number}m or "
                             f"{number}h (a bare number is not taken as seconds)")
        raise UsageError(f"bad duration {text!r}: use a form like 45s, 10m, 2h or 1h30m")
    raw = str(text).strip()  # units in lower case only: 90M could be read as 90 months
    pos, value, last_unit = 0, 0.0, math.inf
    for match in _PART.finditer(raw):
        if match.start() != pos and raw[pos : match.start()].strip():
            break
        unit = _UNITS[match.group(2)]
        if unit >= last_unit:  # 30s30s or 1m1h: each unit once, the largest first, as in 1h30m
            raise UsageError(f"bad duration {text!r}: give each unit once, the largest first, "
                             "as in 1h30m")
        value += float(match.group(1)) * unit
        last_unit, pos = unit, match.end()
    if not raw or pos != len(raw) or not _PART.search(raw):
        raise UsageError(f"bad duration {text!r}: use a form like 45s, 10m, 2h or 1h30m")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"bad duration {text!r}: it must be a positive length of time")
    if value < MIN_DURATION_S or value > MAX_DURATION_S:
        raise UsageError(f"bad duration {text!r}: it must be between 1 ms and 366 days")
    return value


# A $/hour rate above this is a typo (a full 8-GPU node rents for tens of dollars an hour); with it,
# costs stay finite numbers (JSON has no Infinity) for any length of time a session can have.
MAX_RATE_USD_PER_H = 1_000_000.0


def parse_rate(text: str | float | int | None, what: str) -> float | None:
    """A $/hour rate, ``None`` when not set. Accepts ``2.5`` or ``$2.50``, from 0 to
    :data:`MAX_RATE_USD_PER_H`; UsageError (one line) for anything else."""
    if text is None or text == "":
        return None
    if isinstance(text, bool):
        raise UsageError(f"bad {what} {text!r}: give US dollars per hour, e.g. 2.50")
    number = str(text).strip()
    if isinstance(text, str):  # plain decimal ASCII digits: float() also takes 1_0, 1e3, ١٠
        number = number.removeprefix("$")
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", number):
            raise UsageError(f"bad {what} {text!r}: give US dollars per hour, e.g. 2.50")
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: give US dollars per hour, e.g. 2.50") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"bad {what} {text!r}: it must be a non-negative number of dollars per hour")
    if value > MAX_RATE_USD_PER_H:
        raise UsageError(f"bad {what} {text!r}: at most {MAX_RATE_USD_PER_H:,.0f} dollars per hour")
    return value


def fmt_duration(seconds: float | None) -> str:
    """``38 s``, ``1m30s``, ``2h05m``; ``-`` for None and for a stored value that is not a finite
    number (a damaged or merged row)."""
    if seconds is None:
        return "-"
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60.5:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_money(value: float | None) -> str:
    """US dollars to the cent; an amount above 0 that would show as $0.00 shows as ``<$0.01``, so
    that parts and their total agree (two parts of $0.004 are not "$0.00" each and "$0.01" in all).
    None (no rate set) is "rate not set"."""
    if value is None:
        return "rate not set"
    if not math.isfinite(value):  # a damaged or merged row: show it, do not fail on it
        return f"${value}"
    if 0 < value < 0.005:
        return "<$0.01"
    if not math.isfinite(value * 100):  # beyond whole cents in a float
        return f"${value:,.2f}"
    return _cents_text(_to_cents(value))


def _to_cents(value: float) -> int:
    """Whole cents, half a cent up ($0.125 is 13 cents), after rounding off float noise
    (0.29 * 100 is 28.999999999999996). For finite values."""
    return math.floor(round(value * 100, 6) + 0.5)


def _cents_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def fmt_money_parts(parts: list[float | None]) -> list[str]:
    """The parts of a sum of money and, last, their total, in US dollars to the cent, such that
    the parts shown add up to the total shown: the total is rounded to the cent, and its cents are
    shared out among the parts by largest remainder (Hamilton's method), so each part is within a
    cent of its value. (Rounded each on its own, $0.0152 and $0.0367 show as $0.02 and $0.04 and
    their $0.0519 as $0.05.) A part that gets no cent but is above 0 shows as ``<$0.01``, as in
    :func:`fmt_money`; None parts (no rate set) show as "rate not set" and count as 0, and with
    every part None the total is "rate not set" too. Parts below 0 or not finite (never stored by
    sessionkit, but a merged row may hold anything) are shown each as :func:`fmt_money` shows it.

    >>> fmt_money_parts([0.0152, 0.0367])
    ['$0.01', '$0.04', '$0.05']
    """
    known = [p for p in parts if p is not None]
    if not known:
        return ["rate not set"] * (len(parts) + 1)
    total = sum(known)
    if not all(math.isfinite(p * 100) and p >= 0 for p in known) or not math.isfinite(total * 100):
        return [fmt_money(p) for p in parts] + [fmt_money(total)]
    # cents, with a little rounding of float noise first (0.29 * 100 is 28.999999999999996)
    exact = [round(p * 100, 6) if p is not None else 0.0 for p in parts]
    floors = [math.floor(c) for c in exact]
    total_cents = _to_cents(total)
    spare = total_cents - sum(floors)
    # the parts with the largest remainders get a cent each (ties: the earlier part)
    order = sorted(range(len(parts)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:max(spare, 0)]:
        floors[i] += 1
    shown = []
    for part, cents in zip(parts, floors):
        if part is None:
            shown.append("rate not set")
        elif cents == 0 and part > 0:
            shown.append("<$0.01")
        else:
            shown.append(_cents_text(cents))
    return shown + [fmt_money(total) if total_cents == 0 else _cents_text(total_cents)]


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def now_iso() -> str:
    return utcnow().isoformat(timespec="microseconds")


def parse_iso(text: str | None) -> _dt.datetime | None:
    """An ISO 8601 timestamp as an aware datetime (one without an offset is taken as UTC); None
    for None, "" and anything that is not such a timestamp (a damaged or foreign row), so that
    no reader fails on one stored value."""
    if not text or not isinstance(text, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=_dt.timezone.utc)


def seconds_between(start: str | None, end: str | None) -> float | None:
    a, b = parse_iso(start), parse_iso(end)
    if a is None or b is None:
        return None
    return (b - a).total_seconds()
