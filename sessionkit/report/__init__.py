"""Reports: a session's Markdown report, the history of all sessions, and the pattern library.

Data first (:mod:`.data`, :mod:`.history`, :mod:`.patterns` return plain dicts computed from the
database), then rendering (:mod:`.render`, Jinja templates in ``templates/``), then optional plots
(:mod:`.plots`, matplotlib). Nothing heavy is imported at package import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    text: str
    path: Path | None = None
    images: list[Path] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def session_report(db, session_ref=None, out: str | Path | None = None, *, plots: bool = True,
                   now: str | None = None) -> Report:
    """Render one session's report; with ``out``, write it there with its plots beside it (an
    ``out`` that :func:`sessionkit.atomic.check_output` refuses is refused before any plot)."""
    from .data import report_data
    from .render import render

    path = _checked(out)
    data = report_data(db, session_ref, now=now)
    if not plots:
        plot_info = {"state": "disabled", "hint": None, "images": []}
    elif path is None:
        plot_info = {"state": "stdout", "hint": None, "images": []}
    else:
        from .plots import make_plots

        plot_info = make_plots(data, path.parent, path.stem)
    text = render("report.md.j2", r=data, plots=plot_info)
    if path is not None:
        _write(path, text)
    images = [path.parent / img["file"] for img in plot_info["images"]] if path else []
    return Report(text=text, path=path, images=images, data=data)


def history_report(db, out: str | Path | None = None, *, now: str | None = None) -> Report:
    from .history import history_data
    from .render import render

    path = _checked(out)
    import gc

    # Building a row dict per session: with 100,000 sessions the cyclic collector would run over
    # them again and again (about a fifth of the time) and find nothing to free.
    paused = gc.isenabled()
    gc.disable()
    try:
        lines: list[str] = []
        data = history_data(db, now=now, table=lines)
        text = render("history.md.j2", h=data, table="\n".join(lines))
    finally:
        if paused:
            gc.enable()
    if path is not None:
        _write(path, text)
    return Report(text=text, path=path, data=data)


def patterns_report(db, out: str | Path | None = None) -> Report:
    from .patterns import pattern_evidence
    from .render import render

    path = _checked(out)
    evidence = pattern_evidence(db)
    text = render("patterns.md.j2", patterns=evidence)
    if path is not None:
        _write(path, text)
    return Report(text=text, path=path, data={"patterns": evidence})


def _checked(out: str | Path | None) -> Path | None:
    """``out`` as a Path, checked as an output before any work (None stays None)."""
    if out is None:
        return None
    from ..atomic import check_output

    check_output(out)
    return Path(out)


def _write(path: Path, text: str) -> None:
    from ..atomic import write_atomic

    write_atomic(path, text, make_parents=True)
