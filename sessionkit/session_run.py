"""``sessionkit run``: a whole session in one command.

start -> before hooks -> preflight -> build -> correctness -> bench -> after hooks -> end -> report

Every step goes through the runner (:func:`sessionkit.runner.run_step`), so it is recorded, timed,
sampled and counted (``[3/6] build ...``). A step whose prerequisite did not pass is recorded as
``skipped`` with the reason, instead of failing for a reason that has nothing to do with it; on a
machine without a GPU that means: preflight fails with its fixes, the rest is skipped, the report says
so and the exit status is non-zero. Lifecycle hooks come from ``[tool.sessionkit.hooks]``::

    [tool.sessionkit.hooks]
    before = ["nvidia-smi -L"]
    after = [["gcloud", "compute", "instances", "stop", "my-h100"]]

Each hook is a command (a string split like a shell would, or a list of arguments, run without a
shell), recorded as a step of kind ``hook``. After hooks run even when a step failed or was
interrupted, so that a stop command for a rented machine is never skipped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .db import reports_root
from .errors import ConfigError, StepInterrupted, UsageError
from .steps import Step, StepResult

DEFAULT_PLAN = ("preflight", "build", "correctness", "bench")
DEFAULT_GRID = "quick"
# A step runs only when the step it needs passed (in this run).
NEEDS = {"build": "preflight", "correctness": "build", "bench": "build", "profile": "build"}


@dataclass
class Hooks:
    before: list[list[str]] = field(default_factory=list)
    after: list[list[str]] = field(default_factory=list)


def parse_hooks(raw) -> Hooks:
    """``[tool.sessionkit.hooks]`` -> Hooks; every problem is a one-line ConfigError."""
    if raw is None:
        return Hooks()
    where = "[tool.sessionkit.hooks]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table with before = [...] and after = [...]")
    unknown = sorted(set(raw) - {"before", "after"})
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; use before and after")
    hooks = Hooks()
    for key in ("before", "after"):
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise ConfigError(f"{where} {key} must be a list of commands")
        for item in items:
            if isinstance(item, str):
                try:
                    argv = shlex.split(item)
                except ValueError as exc:
                    raise ConfigError(f"{where} {key}: cannot split {item!r}: {exc}") from None
            elif isinstance(item, list) and all(isinstance(a, str) for a in item):
                argv = list(item)
            else:
                raise ConfigError(f"{where} {key}: {item!r} is neither a command string nor a list of strings")
            if not argv:
                raise ConfigError(f"{where} {key}: an empty command")
            getattr(hooks, key).append(argv)
    return hooks


class SkippedStep(Step):
    """Records a planned step that did not run, and why."""

    def __init__(self, name: str, reason: str, budget_s: float | None = None):
        self.name = name
        self.reason = reason
        self.description = f"{name} (skipped)"
        if budget_s is not None:
            self.budget_s = budget_s

    def run(self, context) -> StepResult:
        return StepResult("skipped", message=self.reason)


@dataclass
class RunResult:
    session: dict
    steps: list[dict]
    report_path: Path | None
    exit_code: int
    outcome: str


def _failed_checks(row: dict) -> list[str]:
    from .steps.preflight import PreflightSummary

    return PreflightSummary.from_json(row.get("summary")).failed_checks()


def _why_not(row: dict) -> str:
    """Why steps that need ``row`` cannot run: one short clause."""
    name = row["name"]
    if row["status"] == "skipped":
        return f"{name} was skipped"
    checks = _failed_checks(row)
    if checks:
        return f"{name} failed ({', '.join(checks)})"
    if row.get("exit_code") not in (None, 0):
        return f"{name} failed (exit {row['exit_code']})"
    return f"{name} {row['status']}"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _outcome(db, session: dict, rows: list[dict], interrupted: StepInterrupted | None) -> tuple[str, str]:
    """(status, outcome sentence) from what was recorded."""
    from .report.aggregates import bench_speedups

    builtin = [r for r in rows if r["kind"] != "hook"]
    hooks_failed = [r for r in rows if r["kind"] == "hook" and r["status"] != "passed"]
    parts = []
    if interrupted is not None:
        where = next((r["name"] for r in rows if r["status"] == "interrupted"), None)
        parts.append(f"interrupted during {where}" if where else "interrupted")
    failed = [r for r in builtin if r["status"] in ("failed", "interrupted")]
    skipped = [r["name"] for r in builtin if r["status"] == "skipped"]
    passed = [r for r in builtin if r["status"] == "passed"]
    for r in failed:
        if r["status"] == "failed":
            parts.append(_why_not(r))
    if skipped:
        parts.append(f"{_and(skipped)} skipped")
    if hooks_failed:
        parts.append(f"{len(hooks_failed)} hook{'s' if len(hooks_failed) > 1 else ''} failed")
    bench = bench_speedups(db).get(session["id"])
    if not parts:
        parts.append(f"all {len(passed)} steps passed")
    if bench and bench["geomean"] is not None:
        parts.append(f"geomean speedup vs SDPA {bench['geomean']:.2f}x over {bench['configs']} configs "
                     f"(best {bench['best']:.2f}x)")
    sentence = "; ".join(parts)
    sentence = sentence[0].upper() + sentence[1:] + "."
    if interrupted is not None:
        return "abandoned", sentence
    ok = all(r["status"] == "passed" for r in rows) and rows
    return ("passed" if ok else "failed"), sentence


def check_run(*, plan=DEFAULT_PLAN, grid: str = DEFAULT_GRID, report_path: str | Path | None = None,
              start_options: dict | None = None, objective: str | None = None,
              step_factory=None) -> None:
    """Check what :func:`run_session` would refuse before its session opens, without the
    database, so that a command can refuse it before it opens (or makes) one: the plan (not empty,
    no repeats, no ``run``, every step known), ``grid`` for the steps that take one,
    ``report_path`` as an output (:func:`sessionkit.atomic.check_output`), the environment's
    interval settings, and the session's options (:func:`sessionkit.sessions.check_start_options`;
    ``objective`` wins over the one in ``start_options``). Raises
    :class:`~sessionkit.errors.UsageError` (:class:`~sessionkit.errors.StepNotFound` for an
    unknown step), or :class:`~sessionkit.errors.SessionkitError` for a refused ``report_path``."""
    opts = dict(start_options or {})
    if objective is not None:
        opts["objective"] = objective
    _check_run(list(plan), grid, report_path, opts, step_factory)


def _check_run(plan: list, grid, report_path, start_options: dict, step_factory):
    """:func:`check_run`; returns ({step name: Step}, {step name: its parsed options})."""
    from .progress import heartbeat_every_s
    from .runner import telemetry_interval_from_env
    from .sessions import check_start_options
    from .errors import StepNotFound
    from .steps import get_step, step_names

    step_factory = step_factory or get_step
    if not plan:
        raise UsageError("the plan is empty: name at least one step, e.g. --plan preflight")
    if "run" in plan:
        raise UsageError("'run' needs a command: use [tool.sessionkit.hooks] or 'sessionkit step run'")
    if len(set(plan)) != len(plan):
        raise UsageError(f"a step appears twice in the plan: {', '.join(plan)}")
    planned = {}
    for step_name in plan:  # unknown names fail here
        try:
            planned[step_name] = step_factory(step_name)
        except StepNotFound:
            if step_factory is not get_step:
                raise
            # get_step's list holds 'run', which a plan cannot hold (above)
            known = ", ".join(sorted(n for n in step_names() if n != "run"))
            raise StepNotFound(f"no step named {step_name!r}; a plan takes: {known}") from None
    # Every step starts from its declared defaults, and --grid goes to the steps that take a grid;
    # the values are checked here, before the session opens, as 'step NAME' does.
    prepared = {}
    for step_name, step in planned.items():
        takes_grid = any(spec.name == "grid" for spec in step.options_type.specs())
        prepared[step_name] = step.parse_options({"grid": grid} if grid and takes_grid else {})
    if report_path is not None:  # an -o that would be refused at the end is refused now
        from .atomic import check_output

        check_output(report_path)
    telemetry_interval_from_env()  # a bad $SESSIONKIT_TELEMETRY_INTERVAL stops here, not mid-run
    heartbeat_every_s()  # and so does a bad $SESSIONKIT_PROGRESS_EVERY
    check_start_options(**start_options)
    return planned, prepared


def run_session(db, *, objective: str | None = None, name: str | None = None,
                plan=DEFAULT_PLAN, grid: str = DEFAULT_GRID, hooks: Hooks | None = None,
                start_options: dict | None = None, report_path: str | Path | None = None,
                plots: bool = True, keep_going: bool = False, step_factory=None,
                telemetry_interval_s: float | None = None, echo=None) -> RunResult:
    """Run a whole session; returns what happened. Raises nothing for failed steps.

    ``step_factory(name) -> Step`` replaces the registry (tests); ``echo`` prints a line.
    On Ctrl-C or SIGTERM the interrupted step is recorded, after hooks run, the session ends as
    ``abandoned``, the report is written, and :class:`StepInterrupted` is raised again.
    """
    from .report import session_report
    from .runner import HOOK_PREFIX, run_step
    from .sessions import end_session, get_session, session_steps, start_session

    from .progress import safe_echo
    from .steps import get_step

    echo = echo or safe_echo
    step_factory = step_factory or get_step
    hooks = hooks or Hooks()
    plan = list(plan)
    opts = dict(start_options or {})
    opts["plan"] = plan
    if objective is not None:
        opts["objective"] = objective
    planned, prepared = _check_run(plan, grid, report_path, opts, step_factory)
    session = start_session(db, name, **opts)
    echo(f"Session {session['number']} started: {session['name']} ({session['objective']})")

    total = len(hooks.before) + len(plan) + len(hooks.after)
    counter = iter(range(1, total + 1))
    # After hooks keep the last positions even when an interruption ends the plan early.
    after_positions = iter(range(total - len(hooks.after) + 1, total + 1))
    rows: list[dict] = []
    results: dict[str, dict] = {}
    skip_reasons: dict[str, str] = {}  # planned steps not run -> the first cause

    def record(step, options=None, *, step_name=None, kind="builtin", command=None, position=None):
        row = run_step(db, session, step, options, name=step_name, kind=kind, command=command,
                       index=position or next(counter), total=total,
                       telemetry_interval_s=telemetry_interval_s)
        rows.append(row)
        return row

    interrupted: StepInterrupted | None = None
    blocked_by: str | None = None
    try:
        for argv in hooks.before:
            row = record(step_factory("run"), {"argv": argv}, step_name=f"{HOOK_PREFIX}before", kind="hook",
                         command=argv)
            if row["status"] != "passed" and blocked_by is None:
                blocked_by = f"the before hook {shlex.join(argv)} failed"
        for step_name in plan:
            step = planned[step_name]
            need = NEEDS.get(step_name)
            reason = blocked_by
            if reason is None and need in results and results[need]["status"] != "passed":
                reason = skip_reasons.get(need) or _why_not(results[need])
            if reason is not None and not keep_going:
                skip_reasons[step_name] = reason
                skipped = SkippedStep(step_name, f"not run: {reason}", budget_s=step.budget_s)
                results[step_name] = record(skipped)
                continue
            results[step_name] = record(step, prepared[step_name])
    except StepInterrupted as exc:
        interrupted = exc
    finally:
        # After hooks run whatever happened before them: they may stop a rented machine.
        for argv in hooks.after:
            try:
                record(step_factory("run"), {"argv": argv}, step_name=f"{HOOK_PREFIX}after", kind="hook",
                       command=argv, position=next(after_positions))
            except StepInterrupted as exc:
                interrupted = interrupted or exc
                break
        rows = session_steps(db, session["id"])
        status, outcome = _outcome(db, session, rows, interrupted)
        session = end_session(db, get_session(db, session["id"]), outcome=outcome, status=status)
        echo(f"Session {session['number']} ended {status}: {outcome}")
        if report_path is None:
            report_path = reports_root(db.path) / f"session-{session['number']}.md"
        report = session_report(db, session["id"], out=report_path, plots=plots)
        echo(f"Report: {report.path}")
    if interrupted is not None:
        raise interrupted
    exit_code = 0 if status == "passed" else 1
    return RunResult(session=session, steps=rows, report_path=report.path, exit_code=exit_code,
                     outcome=outcome)
