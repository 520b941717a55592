"""``[tool.sessionkit]`` from the nearest pyproject.toml: defaults for sessions and steps.

Example::

    [tool.sessionkit]
    plan = ["preflight", "build", "correctness", "bench"]
    budget = "2h"
    gpu_rate = 2.49          # USD per hour
    ai_rate = 6.00           # USD per hour
    telemetry_interval = "100ms"

    [tool.sessionkit.step_budgets]
    build = "60s"

    [tool.sessionkit.hooks]
    after = [["gcloud", "compute", "instances", "stop", "my-h100"]]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, UsageError
from .timefmt import parse_duration, parse_rate


# Every key [tool.sessionkit] may hold; any other is refused (a typo would otherwise be ignored).
KNOWN_KEYS = ("objective", "plan", "budget", "gpu_rate", "ai_rate", "step_budgets",
              "telemetry_interval", "hooks", "grids")


def check_keys(raw: dict, path: Path) -> None:
    """Raise :class:`ConfigError` (one line) for a key of ``[tool.sessionkit]`` that sessionkit
    does not read, naming the closest known key."""
    for key in raw:
        if key in KNOWN_KEYS:
            continue
        import difflib  # only on the error path: the CLI's start-up does not pay for it

        close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"[tool.sessionkit] in {path}: unknown key {key!r}; {hint}"
                          f"known keys: {', '.join(KNOWN_KEYS)}")


@dataclass
class Config:
    path: Path | None = None
    plan: list[str] = field(default_factory=list)
    budget_s: float | None = None
    gpu_rate: float | None = None
    ai_rate: float | None = None
    step_budgets: dict[str, float] = field(default_factory=dict)
    telemetry_interval_s: float = 0.1
    raw: dict = field(default_factory=dict)


def find_pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


# The longest step name (sessionkit.runner.check_step_name refuses a longer one for a step).
MAX_STEP_NAME = 100


def _check_plannable_name(name: str, where: str) -> None:
    """UsageError for a step name a plan or a step budget cannot use because no step could ever
    carry it: one that begins with '-', which the command line reads as an option, or one longer
    than :data:`MAX_STEP_NAME` (:func:`sessionkit.runner.check_step_name` refuses both for a
    step). A plan that names such a step could never be met, and `end` calls a session whose
    planned step never ran failed."""
    if name.startswith("-"):
        raise UsageError(f"bad step name {name!r} in {where}: it begins with '-', which the "
                         "command line reads as an option, so no step could carry it")
    if len(name) > MAX_STEP_NAME:
        raise UsageError(f"bad step name {name[:40]!r}... in {where}: {len(name)} characters, and "
                         f"a step's name has at most {MAX_STEP_NAME}, so no step could carry it")


def parse_plan(value) -> list[str]:
    """``"preflight,build"`` or ``["preflight", "build"]`` -> list of step names; ``[]`` for no plan
    (None or []). UsageError for a plan that names no step ("", " ", ","; ``start`` read
    ``--plan ""`` as no plan and ``run`` as its default plan, so neither guesses), for names that
    are bad, and for a name given twice."""
    if value is None or value == []:  # no plan
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise UsageError(f"bad plan {value!r}: give step names separated by commas")
    plan = [i.strip() for i in items if i.strip()]
    if not plan:
        raise UsageError(f"bad plan {value!r}: it names no step; give step names separated by "
                         "commas, e.g. preflight,build")
    for name in plan:
        _check_plannable_name(name, "plan")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"bad step name {name!r} in plan")
    if len(set(plan)) != len(plan):
        raise UsageError(f"a step appears twice in the plan: {', '.join(plan)}")
    return plan


def parse_step_budgets(items) -> dict[str, float]:
    """``["build=60s", "bench=5m"]`` or ``{"build": "60s"}`` -> {name: seconds}."""
    if isinstance(items, dict):
        pairs = list(items.items())
    elif not isinstance(items, (list, tuple)):
        raise UsageError(f"bad step budgets {items!r}: use a table such as {{build = \"60s\"}}")
    else:
        pairs = []
        for item in items or []:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip():
                raise UsageError(f"bad step budget {item!r}: use NAME=DURATION, e.g. build=60s")
            pairs.append((name.strip(), value.strip()))
    for name, _ in pairs:
        _check_plannable_name(str(name).strip(), "step budgets")
    return {name: parse_duration(value) for name, value in pairs}


MAX_TELEMETRY_INTERVAL_S = 3600.0


def check_telemetry_interval(seconds: float) -> float:
    """``seconds`` if it is a usable sampling interval (at most an hour: a longer one would take
    no sample in any step, and past the thread timer's range none at all), else UsageError."""
    if seconds > MAX_TELEMETRY_INTERVAL_S:
        raise UsageError(f"a telemetry interval of {seconds:g} s is too long; at most 1h")
    return seconds


def _telemetry_interval(value) -> float:
    return check_telemetry_interval(parse_duration(value))


def load_config(start: Path | None = None) -> Config:
    path = find_pyproject(start)
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"cannot read {path}: nested too deeply") from None
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"'tool' in {path} must be a table ([tool.sessionkit])")
    raw = tool.get("sessionkit", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[tool.sessionkit] in {path} must be a table")
    check_keys(raw, path)
    objective = raw.get("objective")
    if objective is not None and not isinstance(objective, str):
        raise ConfigError(f"[tool.sessionkit] in {path}: objective must be a string, "
                          f"not {type(objective).__name__}")
    try:
        cfg = Config(
            path=path,
            plan=parse_plan(raw.get("plan")),
            budget_s=parse_duration(raw["budget"]) if "budget" in raw else None,
            gpu_rate=parse_rate(raw.get("gpu_rate"), "gpu_rate"),
            ai_rate=parse_rate(raw.get("ai_rate"), "ai_rate"),
            step_budgets=parse_step_budgets(raw.get("step_budgets", {})),
            telemetry_interval_s=_telemetry_interval(raw.get("telemetry_interval", "100ms")),
            raw=raw,
        )
    except UsageError as exc:
        raise ConfigError(f"[tool.sessionkit] in {path}: {exc}") from None
    return cfg
