"""Rendering report data with the Jinja templates in ``templates/`` (package ``sessionkit.templates``).

jinja2 is imported here, inside functions, so that the CLI starts without it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from ..timefmt import fmt_duration, fmt_money, fmt_money_parts, parse_iso
from ..views import printable

DASH = "-"


def f_dur(seconds) -> str:
    return DASH if seconds is None else fmt_duration(seconds)


def f_delta(seconds) -> str:
    """``+12 s`` over budget, ``-1m30s`` under."""
    if seconds is None:
        return DASH
    return ("+" if seconds > 0 else "-" if seconds < 0 else "") + fmt_duration(abs(seconds))


def f_money(value) -> str:
    return fmt_money(value)


def f_money_parts(parts) -> list[str]:
    """Parts of a cost and their total, to the cent, the parts adding up to the total shown."""
    return fmt_money_parts(list(parts))


def f_num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:,.{digits}f}"


def f_whole_pct(value) -> str:
    """A share (%) shown whole, never rounded onto a bound it does not reach: ``<1`` for a share
    above 0 that would show as 0, ``>99`` for one below 100 that would show as 100."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if 0 < value < 0.5:
        return "<1"
    if 99.5 <= value < 100:
        return ">99"
    return f"{value:.0f}"


def f_int(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, float) and math.isinf(value):
        return f"{value}"  # inf, -inf: no integer to round to
    return f"{int(round(value)):,}"


def f_auto(value) -> str:
    """A measured number at a sensible precision: integers whole, others to 3 significant digits."""
    if value is None:
        return DASH
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def f_pct(fraction, digits: int = 1) -> str:
    """A fraction (0.25) as ``25.0 %``."""
    return DASH if fraction is None else f"{fraction * 100:.{digits}f} %"


def f_times(value, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}x"


def f_sci(value) -> str:
    return DASH if value is None else f"{value:.2e}"


def f_ts(text) -> str:
    """ISO timestamp -> ``2026-01-05 10:00:00 UTC``."""
    if not text:
        return DASH
    import datetime as dt

    moment = parse_iso(text)
    if moment is None:  # not a timestamp (a damaged row): shown as stored
        return str(text)
    moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def f_date(text) -> str:
    if not text:
        return DASH
    if text.endswith("+00:00") and len(text) >= 16:  # already UTC: no need to parse (history's rows)
        return text[:10]
    return f_ts(text)[:10]


def f_cell(value) -> str:
    """Safe inside a Markdown table cell: no pipes breaking columns, no newlines, other control
    characters escaped (:func:`sessionkit.views.printable`)."""
    if value is None or value == "":
        return DASH
    return printable(str(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|"))


def f_code(value) -> str:
    """Inline code, safe inside a table cell (as :func:`f_cell`; a backquote becomes a quote)."""
    if value is None or value == "":
        return DASH
    return "`" + f_cell(value).replace("`", "'") + "`"


def f_short(value, length: int = 80) -> str:
    text = f_cell(value)
    return text if len(text) <= length else text[: length - 3].rstrip() + "..."


def f_value(value, fmt: str) -> str:
    """A pattern metric value by its kind: duration, count, ratio or number."""
    if value is None:
        return DASH
    if fmt == "duration":
        return fmt_duration(value)
    if fmt == "count":
        return f"{value:g}"
    if fmt == "ratio":
        return f"{value:.2f}x"
    return f"{value:,.3g}"


FILTERS = {"dur": f_dur, "delta": f_delta, "money": f_money, "money_parts": f_money_parts, "num": f_num, "auto": f_auto, "int": f_int,
           "whole_pct": f_whole_pct,
           "pct": f_pct, "times": f_times, "sci": f_sci, "ts": f_ts, "date": f_date,
           "cell": f_cell, "short": f_short, "value": f_value, "code": f_code}


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    from .resources import templates_dir

    def load(name: str):
        # A name is a path under templates/ ("steps/bench.md.j2"), or an absolute path: the
        # template of a step that lives outside the package (its Step.template).
        path = Path(name) if Path(name).is_absolute() else templates_dir() / name
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(FILTERS)
    return env


def render(template: str, **context) -> str:
    """Render ``templates/<template>``; blank-line runs are squeezed so sections read evenly."""
    text = environment().get_template(template).render(**context)
    lines, blank = [], False
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            if blank or not lines:
                continue
            blank = True
        else:
            blank = False
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
