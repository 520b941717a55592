"""One preflight run: every check in order, the environment snapshot, and the text that shows them
(the ``sessionkit doctor`` output and the preflight step's log).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..envinfo import Redactor, relevant_env
from . import checks as preflight_checks
from .checks import Check, run_check
from .facts import PREFETCH, Facts, _one_line
from .probe import Probe


@dataclass
class Report:
    checks: list[Check]
    snapshot: dict
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def failed(self) -> int:
        return self.count("fail")

    @property
    def warned(self) -> int:
        return self.count("warn")

    @property
    def passed(self) -> int:
        return self.count("pass")

    def to_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "passed": self.passed,
                "warned": self.warned, "failed": self.failed,
                "elapsed_s": round(self.elapsed_s, 3), "snapshot": self.snapshot}


def build_snapshot(f: Facts) -> dict:
    """The environment snapshot (see the env snapshot contract); momentary readings under ``state``."""
    t = f.maybe("torch")
    n = f.maybe("nvcc") or {}
    hc = f.maybe("host_compiler") or {}
    cxx = f.maybe("cxx") or {}
    ninja = f.maybe("ninja") or {}
    packages = f.maybe("packages") or {}
    arch = f.maybe("arch") or {}
    drv = f.maybe("driver") or {}
    gpus = f.maybe("gpus") or []
    static = ("index", "name", "cc", "memory_mib", "uuid")
    cache = f.maybe("cache") or {"root": None, "entries": []}
    disk = f.maybe("disk") or {}
    snap = {
        "host": f.probe.hostname(),
        "platform": f.probe.platform(),
        "python": {**f.get("python"), "pip": packages.get("pip")},
        "torch": {"version": None, "cuda": None, "cuda_available": False,
                  "error": f.error("torch")} if t is None else {
            "version": t["version"], "cuda": t["cuda"], "cuda_available": t["cuda_available"],
            "device_count": t["device_count"], "cudnn": t.get("cudnn")},
        "packages": {k: v for k, v in packages.items() if k != "pip"},
        "gpus": [{k: g.get(k) for k in static} for g in gpus],
        "driver": drv.get("version"),
        "driver_cuda": drv.get("cuda"),
        "nvml": f.error("nvml") is None,
        "toolchain": {
            "nvcc": n.get("path"), "nvcc_version": n.get("version"), "nvcc_on_path": n.get("on_path"),
            "nvcc_where": n.get("where"), "cuda_home": n.get("cuda_home"),
            "host_compiler": hc.get("path"), "host_compiler_kind": hc.get("kind"),
            "host_compiler_version": hc.get("version"),
            "cxx": cxx.get("path"), "cxx_version": cxx.get("version"),
            "ninja": ninja.get("path"), "ninja_version": ninja.get("version"),
            "pybind11": packages.get("pybind11"),
            "arch_flags": arch.get("flags"), "arch": arch.get("arch"),
        },
        "build_cache": {"root": cache["root"], "builds": len(cache["entries"])},
        "env": relevant_env(f.get("env")),
        "git": f.maybe("git") or {"commit": None, "dirty": None},
        "state": {
            "gpus": [{k: v for k, v in g.items() if k not in static} for g in gpus],
            "disk_free_gib": disk.get("free_gib"),
        },
    }
    return snap


def run_checks(probe: Probe | None = None, *, on_check: Callable[[int, int, Check], None] | None = None,
               prefetch: bool = True) -> Report:
    """Run every check; never raises for what it finds. Secrets are scrubbed from the whole report."""
    started = time.perf_counter()
    probe = probe or Probe()
    facts = Facts(probe)
    pool = facts.prefetch(PREFETCH) if prefetch else None
    redactor = Redactor(probe.env())
    checks = []
    try:
        for i, (name, fn) in enumerate(preflight_checks.CHECKS, 1):
            check = run_check(name, fn, facts)
            check.finding = redactor.text(check.finding)
            check.fix = redactor.text(check.fix) if check.fix else None
            checks.append(check)
            if on_check:
                on_check(i, len(preflight_checks.CHECKS), check)
        try:
            snapshot = build_snapshot(facts)
        except Exception as exc:  # a broken probe must not lose the checks
            snapshot = {"error": _one_line(f"{type(exc).__name__}: {exc}")}
    finally:
        if pool:
            pool.shutdown(wait=True)
    snapshot["elapsed_s"] = round(time.perf_counter() - started, 3)
    return Report(checks, redactor.scrub(snapshot), time.perf_counter() - started)

_STYLE = {"pass": ("PASS", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "red")}


def format_check(check: Check, width: int, *, color: bool = False) -> list[str]:
    word, fg = _STYLE[check.status]
    if color:
        import click  # only a terminal wants colour; the checks themselves never import click

        tag = click.style(word, fg=fg, bold=True)
    else:
        tag = word
    lines = [f"{tag}  {check.name.ljust(width)}  {check.finding}"]
    if check.fix:
        lines.append(f"{' ' * (6 + width + 2)}fix: {check.fix}")
    return lines


def summary_line(report: Report) -> str:
    def n(count, one, many):
        return f"{count} {one if count == 1 else many}"

    return (f"{n(report.passed, 'passed', 'passed')}, {n(report.warned, 'warning', 'warnings')}, "
            f"{n(report.failed, 'failed', 'failed')}")


def format_report(report: Report, *, color: bool = False) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = []
    for check in report.checks:
        lines += format_check(check, width, color=color)
    lines.append(summary_line(report))
    return "\n".join(lines)
