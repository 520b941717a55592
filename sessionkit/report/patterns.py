"""The pattern library: lessons in ``patterns/*.md``, applying them, and their measured effect.

Each pattern file starts with TOML front matter between ``+++`` lines::

    +++
    id = "baseline-first"
    title = "Baseline first"
    problem = "..."
    solution = "..."
    when = "..."
    metric = "bench:geomean_speedup_vs_sdpa"   # the figure it should move (see SELECTORS)
    better = "higher"                           # or "lower"
    +++
    Markdown body.

The effect of a pattern is never assumed: it is the median of its metric over the ended sessions
that applied it against the median over those that did not, with both counts, or "no evidence yet".
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from ..errors import NoOpenSession, PatternNotFound, SessionkitError, UsageError
from ..timefmt import now_iso
from . import aggregates
from .resources import patterns_dir

REQUIRED = ("id", "title", "problem", "solution", "when", "metric")
ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# selector -> what it measures per session. Parameterized ones take ":NAME" (and more) after them.
SELECTORS = {
    "session_duration": "wall time of the session, start to end (s)",
    "steps_failed": "failed steps in the session",
    "steps_interrupted": "interrupted steps in the session",
    "interrupted_time": "seconds spent in steps that ended interrupted",
    "step_duration:STEP": "seconds spent in steps called STEP, retries included",
    "step_failures:STEP": "failed runs of step STEP, in sessions that ran it",
    "bench:geomean_speedup_vs_sdpa": "geometric mean speedup of our kernel over SDPA (last bench)",
    "bench:best_speedup_vs_sdpa": "best speedup of our kernel over SDPA (last bench)",
    "correctness:worst_ratio": "worst max error over its bound (last correctness step)",
    "metric:STEP:KEY[:SUBJECT]": "metric KEY (of SUBJECT) recorded by the last step called STEP",
}
_STEP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class PatternError(UsageError):
    """A pattern file that cannot be used (an id that names no pattern is a
    :class:`~sessionkit.errors.PatternNotFound`)."""


@dataclass(frozen=True)
class Selector:
    kind: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return ":".join((self.kind, *self.args))


@dataclass
class Pattern:
    id: str
    title: str
    problem: str
    solution: str
    when: str
    metric: str
    better: str
    body: str
    source: str
    selector: Selector = field(repr=False, default=None)

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "problem": self.problem,
                "solution": self.solution, "when": self.when, "metric": self.metric,
                "better": self.better, "body": self.body}


def parse_selector(text: str) -> Selector:
    """``"step_duration:build"`` -> Selector("step_duration", ("build",)); raises PatternError."""
    raw = str(text).strip()
    parts = raw.split(":")
    kind, args = parts[0], tuple(parts[1:])
    bad = PatternError(f"bad metric selector {raw!r}; known forms: {', '.join(SELECTORS)}")
    if kind in ("session_duration", "steps_failed", "steps_interrupted", "interrupted_time"):
        if args:
            raise bad
    elif kind in ("step_duration", "step_failures"):
        if len(args) != 1 or not _STEP_NAME.match(args[0]):
            raise bad
    elif kind == "bench":
        if args not in (("geomean_speedup_vs_sdpa",), ("best_speedup_vs_sdpa",)):
            raise bad
    elif kind == "correctness":
        if args != ("worst_ratio",):
            raise bad
    elif kind == "metric":
        if len(args) not in (2, 3) or not all(args) or not _STEP_NAME.match(args[0]):
            raise bad
    else:
        raise bad
    return Selector(kind, args)


def parse_pattern(text: str, source: str = "<text>") -> Pattern:
    """Parse one pattern file's text; every problem is a one-line PatternError naming the file."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "+++":
        raise PatternError(f"{source}: a pattern starts with a '+++' line of TOML front matter")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "+++")
    except StopIteration:
        raise PatternError(f"{source}: front matter has no closing '+++' line") from None
    try:
        meta = tomllib.loads("\n".join(lines[1:end]))
    except tomllib.TOMLDecodeError as exc:
        raise PatternError(f"{source}: bad front matter: {exc}") from None
    missing = [k for k in REQUIRED if not str(meta.get(k, "")).strip()]
    if missing:
        raise PatternError(f"{source}: front matter lacks {', '.join(missing)}")
    for key in REQUIRED:
        if not isinstance(meta[key], str):
            raise PatternError(f"{source}: {key} must be a string")
    if not ID_RE.match(meta["id"]):
        raise PatternError(f"{source}: id {meta['id']!r} must be a short slug like 'baseline-first'")
    better = meta.get("better", "lower")
    if better not in ("lower", "higher"):
        raise PatternError(f"{source}: better must be 'lower' or 'higher', not {better!r}")
    body = "\n".join(lines[end + 1:]).strip()
    if not body:
        raise PatternError(f"{source}: the pattern has no body")
    try:
        selector = parse_selector(meta["metric"])
    except PatternError as exc:
        raise PatternError(f"{source}: {exc}") from None
    return Pattern(id=meta["id"], title=meta["title"].strip(), problem=meta["problem"].strip(),
                   solution=meta["solution"].strip(), when=meta["when"].strip(),
                   metric=selector.text, better=better, body=body, source=source,
                   selector=selector)


def load_patterns(folder=None) -> list[Pattern]:
    """All patterns of a folder (default: the packaged library), sorted by id; ids must be unique."""
    folder = folder if folder is not None else patterns_dir()
    found: dict[str, Pattern] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".md") or entry.name.lower() == "readme.md":
            continue
        pattern = parse_pattern(entry.read_text(encoding="utf-8"), entry.name)
        if pattern.id in found:
            raise PatternError(f"{entry.name}: id {pattern.id!r} is also used by {found[pattern.id].source}")
        found[pattern.id] = pattern
    return [found[k] for k in sorted(found)]


def get_pattern(pattern_id: str, patterns: list[Pattern] | None = None) -> Pattern:
    """The pattern whose id is ``pattern_id``, from ``patterns`` (default: the library).

    Raises :class:`~sessionkit.errors.PatternNotFound` when none has it."""
    patterns = load_patterns() if patterns is None else patterns
    for pattern in patterns:
        if pattern.id == pattern_id:
            return pattern
    raise PatternNotFound(f"no pattern with id {pattern_id!r}; 'sessionkit pattern list' shows the ids")


def apply_pattern(db, pattern_id: str, note: str | None = None, *, session: dict | None = None,
                  patterns: list[Pattern] | None = None) -> dict:
    """Record that the open session (or ``session``) applies a pattern; returns the stored row."""
    from ..secrets import scrub_prose
    from ..sessions import get_open_session

    pattern = get_pattern(pattern_id, patterns)
    if session is None:
        session = get_open_session(db, required=False)
        if session is None:
            raise NoOpenSession("no open session to apply a pattern to; start one with: "
                                "sessionkit start -m/--objective TEXT")
    if session["status"] != "open":
        raise SessionkitError(f"session {session['number']} is {session['status']}; "
                              "patterns are applied to the open session")
    row = {"session_id": session["id"], "pattern_id": pattern.id,
           "note": scrub_prose((note or "").strip()) or None, "applied_at": now_iso()}
    with db.conn:
        row["id"] = db["patterns_applied"].insert(row).last_pk
    return {**row, "session_number": session["number"], "title": pattern.title}


def selector_format(selector: Selector) -> str:
    """How values of a selector read: ``duration``, ``count``, ``ratio`` or ``number``."""
    if selector.kind in ("session_duration", "interrupted_time", "step_duration"):
        return "duration"
    if selector.kind in ("steps_failed", "steps_interrupted", "step_failures"):
        return "count"
    if selector.kind == "bench":
        return "ratio"
    return "number"


def selector_values(db, selector: Selector, sessions: dict[str, dict]) -> dict[str, float]:
    """session_id -> the selector's value, for ended sessions that have one. One query or two."""
    ended = {sid for sid, s in sessions.items() if s["status"] != "open"}
    kind, args = selector.kind, selector.args
    if kind == "session_duration":
        from ..timefmt import seconds_between

        values = {sid: seconds_between(s["started_at"], s["ended_at"]) for sid, s in sessions.items()
                  if s.get("ended_at")}
    elif kind in ("steps_failed", "steps_interrupted", "interrupted_time"):
        counts = aggregates.step_counts(db)
        field_name = {"steps_failed": "failed", "steps_interrupted": "interrupted",
                      "interrupted_time": "interrupted_s"}[kind]
        values = {sid: float(counts.get(sid, {}).get(field_name, 0)) for sid in ended}
    elif kind == "step_duration":
        values = aggregates.step_durations(db, args[0])
    elif kind == "step_failures":
        values = aggregates.step_failures(db, args[0])
    elif kind == "bench":
        key = "geomean" if args[0].startswith("geomean") else "best"
        values = {sid: v[key] for sid, v in aggregates.bench_speedups(db).items()}
    elif kind == "correctness":
        values = {sid: v["worst_ratio"] for sid, v in aggregates.correctness_by_session(db).items()}
    else:  # metric:STEP:KEY[:SUBJECT]
        values = aggregates.step_metric(db, args[0], args[1], args[2] if len(args) > 2 else None)
    return {sid: float(v) for sid, v in values.items() if sid in ended and v is not None}


def pattern_evidence(db, patterns: list[Pattern] | None = None) -> list[dict]:
    """For each pattern: the sessions that applied it and its metric with it versus without it."""
    patterns = load_patterns() if patterns is None else patterns
    sessions = {r["id"]: dict(r) for r in db.query(
        "SELECT id, number, name, status, started_at, ended_at FROM sessions")}
    applied: dict[str, dict[str, list]] = {}
    for row in db.query("""SELECT pa.pattern_id, pa.session_id, pa.note, pa.applied_at
                           FROM patterns_applied pa ORDER BY pa.applied_at, pa.id"""):
        per = applied.setdefault(row["pattern_id"], {})
        per.setdefault(row["session_id"], []).append(row["note"])
    cache: dict[Selector, dict[str, float]] = {}
    out = []
    for pattern in patterns:
        users = applied.get(pattern.id, {})
        if pattern.selector not in cache:
            cache[pattern.selector] = selector_values(db, pattern.selector, sessions)
        values = cache[pattern.selector]
        with_vals = [v for sid, v in values.items() if sid in users]
        without_vals = [v for sid, v in values.items() if sid not in users]
        effect = None
        if with_vals and without_vals:
            m_with, m_without = aggregates.median(with_vals), aggregates.median(without_vals)
            change = m_with - m_without
            if change == 0:
                direction = "no change"
            else:
                better = (change < 0) == (pattern.better == "lower")
                direction = "better" if better else "worse"
            effect = {"median_with": m_with, "median_without": m_without, "n_with": len(with_vals),
                      "n_without": len(without_vals), "change": change,
                      "ratio": (m_with / m_without) if m_without else None,
                      "direction": direction}
        session_list = sorted(
            ({"number": sessions[sid]["number"], "name": sessions[sid]["name"],
              "notes": [n for n in notes if n]} for sid, notes in users.items() if sid in sessions),
            key=lambda s: s["number"])
        out.append({**pattern.as_dict(), "unknown": False, "format": selector_format(pattern.selector),
                    "sessions": session_list,
                    "n_with_value": len(with_vals), "n_without_value": len(without_vals),
                    "effect": effect})
    unknown = sorted(set(applied) - {p.id for p in patterns})
    for pattern_id in unknown:
        users = applied[pattern_id]
        out.append({"id": pattern_id, "title": None, "unknown": True,
                    "sessions": sorted(({"number": sessions[sid]["number"],
                                         "name": sessions[sid]["name"],
                                         "notes": [n for n in notes if n]}
                                        for sid, notes in users.items() if sid in sessions),
                                       key=lambda s: s["number"])})
    return out
