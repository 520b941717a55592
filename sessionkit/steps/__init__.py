"""The step interface and the registry.

A step is a small object with typed options and a typed summary (:mod:`sessionkit.steps.typed`)::

    @dataclass(frozen=True)
    class HelloOptions(StepOptions):
        who: str = option("world", help="Whom to greet.")

    @dataclass
    class HelloSummary(StepSummary):
        who: str | None = fact(None, help="Whom it greeted.")

    class Hello(Step):
        name = "hello"
        description = "Say hello and record one metric."
        budget_s = 5.0
        options_type = HelloOptions             # -> the CLI options, checked values in context.options
        summary_type = HelloSummary             # -> what the report reads back from steps.summary
        template = "steps/hello.md.j2"          # its section of the report (None: no section)

        def run(self, context: StepContext) -> StepResult:
            context.progress.note(f"hello {context.options.who}")   # a checked HelloOptions
            context.metric("greetings", 1, unit="count")
            return StepResult("passed", message="said hello",
                              summary=HelloSummary(who=context.options.who))

The runner (:mod:`sessionkit.runner`) checks the options, records the step row before ``run`` starts,
keeps its heartbeat, runs the telemetry sampler around it, and stores the result. A step never exits
the process: it returns ``failed`` or raises a :class:`~sessionkit.errors.SessionkitError`. Step
modules must not import torch, jinja2 or pynvml at module level, so that listing steps stays fast.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import StepNotFound
from ..timefmt import now_iso
from .typed import NoOptions, StepOptions, StepSummary

STATUSES = ("passed", "failed", "skipped", "interrupted")


@dataclass
class Metric:
    key: str
    value: float | None
    unit: str | None = None
    subject: str | None = None  # what the value is about: a kernel name, a config label...


@dataclass
class Artifact:
    path: str
    kind: str  # "log", "csv", "ncu-rep", "report", ...


@dataclass
class StepResult:
    status: str  # "passed" | "failed" | "skipped"
    message: str = ""  # one line, shown at the end of the step
    # what the step found, for reports: its summary_type, or a JSON-able dict
    summary: StepSummary | dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    exit_code: int | None = None

    def __post_init__(self):
        if self.status not in ("passed", "failed", "skipped"):
            raise ValueError(f"bad step status {self.status!r}")

    def summary_json(self) -> dict[str, Any]:
        """The summary as stored in ``steps.summary``."""
        return self.summary.to_json() if isinstance(self.summary, StepSummary) else self.summary


class StepContext:
    """What a running step sees: the session, the DB, the progress printer and its options, an
    instance of the step's ``options_type`` (checked values: the runner parses them first)."""

    def __init__(self, *, db, session: dict, step_id: str, seq: int, progress,
                 options: StepOptions, workdir: Path):
        self.db = db
        self.session = session
        self.step_id = step_id
        self.seq = seq
        self.progress = progress
        self.options = options
        self.workdir = workdir

    def metric(self, key: str, value, unit: str | None = None, subject: str | None = None) -> None:
        """Record one metric now (it survives a crash later in the step)."""
        self.metrics([Metric(key, value, unit, subject)])

    def metrics(self, metrics: list[Metric]) -> None:
        rows = [
            {"step_id": self.step_id, "key": m.key,
             "value": None if m.value is None else float(m.value), "unit": m.unit,
             "subject": m.subject}
            for m in metrics
        ]
        if rows:
            def write():
                with self.db.conn:
                    self.db["metrics"].insert_all(rows)

            self._patiently(write, f"the metrics of step {self.seq}")

    def artifact(self, path: str | Path, kind: str) -> None:
        """Record a file made by the step, with its size and sha256."""
        self._patiently(lambda: record_artifact(self.db, self.step_id, Path(path), kind),
                        f"an artifact of step {self.seq}")

    def _patiently(self, write, what: str) -> None:
        # A write while the step runs waits out another writer's lock held past the busy timeout
        # (a merge copying large artifacts), as the step's final writes do, instead of crashing
        # the step; each write here is one transaction, so a retry cannot apply it twice.
        # Inside a transaction of the caller's (the runner's result metrics), the lock is held.
        if self.db.conn.in_transaction:
            write()
            return
        from ..db import patiently

        patiently(self.db, write, what=what, notice=self.progress.note)

    def latest_env(self) -> dict:
        """The newest environment snapshot of this session (preflight findings), or {}."""
        rows = list(self.db.query(
            "SELECT data FROM env_snapshots WHERE session_id = ? ORDER BY taken_at DESC LIMIT 1",
            [self.session["id"]]))
        return json.loads(rows[0]["data"]) if rows else {}


def file_digest(path: Path) -> tuple[str | None, int | None]:
    """The sha256 (hex) and size in bytes of the file at ``path``; (None, None) when it is not a
    regular file or cannot be read."""
    import hashlib

    if not path.is_file():
        return None, None
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        return None, None
    return digest.hexdigest(), size


def record_artifact(db, step_id: str, path: Path, kind: str) -> None:
    """Record (or update) a file made by step ``step_id``, with its sha256 and size as now.

    A file may be recorded before it is complete (a log, so that a crash keeps its path): the
    runner calls :func:`refresh_artifacts` when the step ends, whatever its ending.
    """
    sha, size = file_digest(path)
    with db.conn:
        existing = db.execute("SELECT id FROM artifacts WHERE step_id = ? AND path = ?",
                              [step_id, str(path)]).fetchone()
        row = {"step_id": step_id, "path": str(path), "kind": kind, "sha256": sha,
               "size_bytes": size, "created_at": now_iso()}
        if existing:
            db["artifacts"].update(existing[0], row)
        else:
            db["artifacts"].insert(row)


def refresh_artifacts(db, step_id: str) -> None:
    """Hash again every file recorded for step ``step_id`` and store its sha256 and size_bytes
    as they are on disk now (files recorded early, such as logs, grow after being recorded)."""
    rows = db.execute("SELECT id, path, sha256, size_bytes FROM artifacts WHERE step_id = ?",
                      [step_id]).fetchall()
    updates = []
    for art_id, path, sha, size in rows:
        new_sha, new_size = file_digest(Path(path))
        if new_sha is not None and (new_sha, new_size) != (sha, size):
            updates.append((new_sha, new_size, art_id))
    if updates:
        with db.conn:
            db.conn.executemany("UPDATE artifacts SET sha256 = ?, size_bytes = ? WHERE id = ?",
                                updates)


class Step:
    """Base class for a registered step. Subclasses set the class attributes and ``run``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    budget_s: ClassVar[float] = 60.0
    # The options dataclass: its fields make the CLI options; checked values reach context.options.
    options_type: ClassVar[type[StepOptions]] = NoOptions
    # The summary dataclass the report reads back from steps.summary (None: a plain dict).
    summary_type: ClassVar[type[StepSummary] | None] = None
    # The step's report section, a Jinja template: a path under templates/ (``steps/NAME.md.j2``)
    # or an absolute path (a step outside the package). None: the step has no section.
    template: ClassVar[str | None] = None
    # Whether the report shows the section when the step did not run ("No bench step in this
    # session."): the built-in pipeline steps do; a step added later shows only where it ran, so
    # that adding it changes no other report.
    report_when_absent: ClassVar[bool] = False

    def run(self, context: StepContext) -> StepResult:  # pragma: no cover - interface
        raise NotImplementedError

    def parse_options(self, raw) -> StepOptions:
        """Checked, typed options from a mapping of names to text or values (or an instance,
        returned as it is); raises :class:`~sessionkit.steps.typed.OptionError` (a UsageError)."""
        return self.options_type.parse(raw)


# name -> "module:Class". Built-in steps import lazily so that the CLI starts fast.
REGISTRY: dict[str, str] = {
    "run": "sessionkit.steps.command:CommandStep",
    "preflight": "sessionkit.steps.preflight:PreflightStep",
    "build": "sessionkit.steps.build:BuildStep",
    "correctness": "sessionkit.steps.correctness:CorrectnessStep",
    "bench": "sessionkit.steps.bench:BenchStep",
    "profile": "sessionkit.steps.profile:ProfileStep",
}


def step_names() -> list[str]:
    return list(REGISTRY)


def get_step(name: str) -> Step:
    target = REGISTRY.get(name)
    if target is None:
        known = ", ".join(sorted(REGISTRY))
        raise StepNotFound(f"no step named {name!r}; registered steps: {known}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
