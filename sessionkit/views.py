"""Plain-text views of sessions for the terminal (the Markdown reports live in sessionkit.report)."""

from __future__ import annotations

from .timefmt import fmt_duration, fmt_money, fmt_money_parts


def printable(value) -> str:
    """``value`` as text safe to print on a terminal: each control character (escape sequences,
    newlines, carriage returns, tabs...) is shown escaped (``\\x1b``, ``\\n``), so stored text cannot
    drive the terminal or fake extra lines."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip(text: str | None, width: int) -> str:
    """``text`` cut to ``width`` characters for a table cell, ending in ``...`` where it was cut, so
    that a cut note does not read as the whole of it."""
    text = text or ""
    return text if len(text) <= width else text[: width - 3] + "..."


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and full-width characters take two,
    combining marks none (Unicode Standard Annex #11)."""
    import unicodedata

    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def table(headers: list[str], rows: list[list], *, right: set[int] = frozenset()) -> str:
    """A plain aligned table that reads well in a log file (wide characters counted as two
    columns)."""
    cells = [[("-" if c is None else printable(c)) for c in row] for row in rows]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in cells])
              for i, h in enumerate(headers)]

    def pad(text: str, width: int, to_right: bool) -> str:
        fill = " " * (width - display_width(text))
        return fill + text if to_right else text + fill

    def fmt(row):
        return "  ".join(pad(c, w, i in right) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)


def _steps_table(data: dict) -> str:
    per_step = data["costs"]["per_step"]
    rows = []
    for s in data["steps"]:
        secs = per_step[s["id"]]["seconds"]
        delta = None if not s["budget_s"] or s["status"] in ("running", "skipped") else secs - s["budget_s"]
        # "~": estimated from the last sign of life of a step whose process died without a word
        estimated = isinstance(s.get("summary"), dict) and "duration_estimate" in s["summary"]
        # a skipped step never ran: no duration, as in the report
        actual = None if s["status"] == "skipped" else ("~" if estimated else "") + fmt_duration(secs)
        rows.append([s["seq"], s["name"], s["status"], actual,
                     fmt_duration(s["budget_s"]),
                     "-" if delta is None else ("+" if delta > 0 else "-") + fmt_duration(abs(delta)),
                     fmt_money(per_step[s["id"]]["total_usd"]) if data["costs"]["total_usd"] is not None else "-",
                     clip(s.get("message"), 60)])
    if not rows:
        return "  no steps yet"
    return table(["#", "step", "status", "actual", "budget", "delta", "cost", "note"], rows,
                 right={0, 3, 4, 5, 6})


def _cost_line(costs: dict) -> str:
    gpu, ai, total = fmt_money_parts([costs["gpu_usd"], costs["ai_usd"]])
    return f"GPU {gpu}, AI {ai}, total {total}"


def format_status(data: dict) -> str:
    s = data["session"]
    lines = [f"Session {s['number']}: {printable(s['name'])} (open)",
             f"  objective: {printable(s['objective'])}"]
    budget = data["budget_s"]
    elapsed = f"{fmt_duration(data['elapsed_s'])}"
    if budget:
        left = data["budget_left_s"]
        elapsed += f" of {fmt_duration(budget)} budget"
        elapsed += f" ({fmt_duration(left)} left)" if left >= 0 else f" (OVER by {fmt_duration(-left)})"
    lines.append(f"  elapsed:   {elapsed}")
    lines.append(f"  cost:      {_cost_line(data['costs'])}")
    runs = data["runs"]
    line = f"  steps:     {runs} run{'s' if runs != 1 else ''}"
    if data["plan"]:
        line += f"; {len(data['planned_done'])} of {len(data['plan'])} planned done"
    lines.append(line)
    if data["plan"]:
        lines.append(f"  next:      {data['next_step'] or 'all planned steps done'}")
    lines.append("")
    lines.append(_steps_table(data))
    return "\n".join(lines)


def format_show(data: dict) -> str:
    s = data["session"]
    lines = [f"Session {s['number']}: {printable(s['name'])}  [{s['status']}]",
             f"  id:        {s['id']}",
             f"  objective: {printable(s['objective'])}",
             f"  started:   {s['started_at'][:19].replace('T', ' ')} UTC on {printable(s['host'])}",
             f"  ended:     {s['ended_at'][:19].replace('T', ' ') + ' UTC' if s['ended_at'] else '-'}",
             f"  duration:  {fmt_duration(data['elapsed_s'])}"
             + (f" (budget {fmt_duration(s['budget_s'])})" if s["budget_s"] else ""),
             f"  commit:    {printable(s['git_commit'] or '-')}",
             f"  cost:      {_cost_line(data['costs'])}"]
    if s.get("imported_from") is not None:
        lines.insert(4, f"  imported:  from {printable(imported_label(s))} on "
                        f"{(s.get('imported_at') or '-')[:19].replace('T', ' ')} UTC "
                        f"({printable(s['imported_from'])})")
    if s.get("outcome"):
        lines.append(f"  outcome:   {printable(s['outcome'])}")
    lines += ["", _steps_table(data)]
    return "\n".join(lines)


def format_session_list(rows: list[dict]) -> str:
    if not rows:
        return "No sessions yet. Start one with: sessionkit start -m/--objective TEXT"
    from .costs import session_costs

    imported = any(r.get("imported_from") is not None for r in rows)
    out = []
    for r in rows:
        cost = session_costs(r, [])["total_usd"]
        row = [r["number"], clip(r["name"], 30), r["status"], r["started_at"][:16].replace("T", " "),
               fmt_duration(r["duration_s"]), f"{r['passed']}/{r['failed']}/{r['interrupted']}",
               fmt_money(cost) if cost is not None else "rate not set", clip(r["objective"], 40)]
        if imported:  # a column only where some session came from another database
            row.insert(3, imported_label(r))
        out.append(row)
    headers = ["#", "name", "status", "started (UTC)", "duration", "ok/fail/int", "cost", "objective"]
    if imported:
        headers.insert(3, "imported from")
    return table(headers, out, right={0, 5 if imported else 4})


def imported_label(session: dict) -> str | None:
    """``host #N`` for a session merged from another database (its host and its number there),
    None for one recorded here."""
    if session.get("imported_from") is None:
        return None
    return f"{session.get('host') or 'unknown host'} #{session.get('origin_number')}"
