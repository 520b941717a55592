"""Merging ``sessionkit start`` options with ``[tool.sessionkit]`` defaults."""

from __future__ import annotations

from .config import load_config, parse_plan, parse_step_budgets
from .timefmt import parse_duration, parse_rate


def resolve_start_options(*, objective=None, plan=None, budget=None, step_budgets=(), gpu_rate=None,
                          ai_rate=None, start=None) -> dict:
    """Command-line values win; the nearest pyproject's ``[tool.sessionkit]`` fills the rest."""
    cfg = load_config(start)
    budgets = dict(cfg.step_budgets)
    budgets.update(parse_step_budgets(step_budgets))
    return {
        "objective": objective if objective is not None else cfg.raw.get("objective"),
        "plan": parse_plan(plan) if plan is not None else cfg.plan,
        "budget_s": parse_duration(budget) if budget is not None else cfg.budget_s,
        "gpu_rate": parse_rate(gpu_rate, "--gpu-rate") if gpu_rate is not None else cfg.gpu_rate,
        "ai_rate": parse_rate(ai_rate, "--ai-rate") if ai_rate is not None else cfg.ai_rate,
        "step_budgets": budgets,
    }
