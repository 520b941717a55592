"""An example step, the one docs/architecture.md shows: its module (this file), its report template
(hello.md.j2 beside it) and, in tests/test_add_step.py, its registry entry are all it takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sessionkit.steps import Step, StepContext, StepResult
from sessionkit.steps.typed import StepOptions, StepSummary, fact, option


@dataclass(frozen=True)
class HelloOptions(StepOptions):
    who: str = option("world", help="Whom to greet.")
    times: int = option(1, unit="count", min=1, max=10, help="How many greetings.")


@dataclass
class HelloSummary(StepSummary):
    """What a hello step stores in steps.summary."""

    who: str | None = fact(None, help="Whom it greeted.")
    greetings: int | None = fact(None, unit="count", help="How many greetings it said.")


class HelloStep(Step):
    name = "hello"
    description = "Say hello and record one metric."
    budget_s = 5.0
    options_type = HelloOptions
    summary_type = HelloSummary
    # A step inside the package names "steps/hello.md.j2", under templates/.
    template = str(Path(__file__).with_name("hello.md.j2"))

    def run(self, context: StepContext) -> StepResult:
        options = context.options  # a HelloOptions, checked by the runner
        for _ in range(options.times):
            context.progress.note(f"hello {options.who}")
        context.metric("greetings", options.times, unit="count")
        return StepResult("passed", message="said hello",
                          summary=HelloSummary(who=options.who, greetings=options.times))
