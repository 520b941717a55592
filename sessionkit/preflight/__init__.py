"""Preflight checks: is this machine ready to build, check and time the kernel?

``sessionkit doctor`` runs them anywhere (no session, no database); ``sessionkit step preflight``
(:mod:`sessionkit.steps.preflight`) runs them in a session, records the environment snapshot and fails
the step when a check fails.

The package in four parts, each importing only the ones before it:

* :mod:`~sessionkit.preflight.probe`: everything the checks learn about the machine goes through a
  :class:`Probe` (``which``, ``run``, ``import_torch``, ``nvml``, ``disk_usage``, ``env``, ...), so
  tests hand in a fake one;
* :mod:`~sessionkit.preflight.facts`: the facts, gathered lazily and once each (:class:`Facts`):
  torch is imported once, nvcc runs once;
* :mod:`~sessionkit.preflight.checks`: the checks (:data:`CHECKS`). A check never raises: an
  exception inside one becomes a ``fail`` with the exception's text;
* :mod:`~sessionkit.preflight.report`: one run of every check (:func:`run_checks`), the
  environment snapshot and the text.
"""

from __future__ import annotations

from .checks import CHECKS, Check, run_check
from .facts import Facts, parse_compiler_version
from .probe import Probe
from .report import Report, build_snapshot, format_check, format_report, run_checks, summary_line

__all__ = [
    "CHECKS",
    "Check",
    "Facts",
    "Probe",
    "Report",
    "build_snapshot",
    "format_check",
    "format_report",
    "parse_compiler_version",
    "run_check",
    "run_checks",
    "summary_line",
]
