"""``sessionkit step preflight``: run the preflight checks in a session, record the environment
snapshot and fail the step when a check fails. The checks themselves are
:mod:`sessionkit.preflight`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import preflight
from ..envinfo import store_snapshot
from ..timefmt import now_iso
from . import Step, StepContext, StepResult
from .typed import StepSummary, fact


@dataclass
class PreflightSummary(StepSummary):
    """What a preflight step stored in ``steps.summary``; the environment snapshot itself is a row
    of ``env_snapshots``."""

    checks: list[dict] | None = fact(None, help="Every check: {name, status (pass, warn or fail), "
                                                "finding, fix}, in the order they ran.")
    passed: int | None = fact(None, unit="count", help="Checks that passed.")
    warned: int | None = fact(None, unit="count", help="Checks that warned.")
    failed: int | None = fact(None, unit="count", help="Checks that failed.")
    snapshot_id: int | None = fact(None, help="The id of the env_snapshots row it wrote.")

    def failed_checks(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.get("name") for c in self.checks or []
                if isinstance(c, dict) and c.get("status") == "fail"]


class PreflightStep(Step):
    name = "preflight"
    description = "Check Python, torch, GPU, driver, nvcc, host compiler and build cache; snapshot the environment."
    budget_s = 30.0
    summary_type = PreflightSummary
    template = "steps/preflight.md.j2"
    report_when_absent = True

    probe_factory: Callable[[], preflight.Probe] = preflight.Probe  # tests swap in a fake

    def run(self, context: StepContext) -> StepResult:
        report = preflight.run_checks(self.probe_factory())
        snapshot_id = store_snapshot(context.db, report.snapshot, session_id=context.session["id"],
                                     step_id=context.step_id, taken_at=now_iso())
        for key, value in (("checks_passed", report.passed), ("checks_warned", report.warned),
                           ("checks_failed", report.failed)):
            context.metric(key, value, unit="count")
        path = Path(context.workdir) / "preflight.json"
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
        context.artifact(path, "json")
        summary = PreflightSummary(checks=[asdict(c) for c in report.checks], passed=report.passed,
                                   warned=report.warned, failed=report.failed,
                                   snapshot_id=snapshot_id)
        line = preflight.summary_line(report)
        context.progress.note(preflight.format_report(
            report, color=getattr(context.progress, "color", False)))
        if report.failed:
            names = ", ".join(c.name for c in report.checks if c.status == "fail")
            return StepResult("failed", message=f"{line} ({names})", summary=summary, exit_code=1)
        return StepResult("passed", message=line, summary=summary)
