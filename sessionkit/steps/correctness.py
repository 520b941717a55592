"""``sessionkit step correctness``: the attention kernel against an fp32 reference on seeded configs.

This module loads the kernel (:func:`sessionkit.kernels.correctness.load_kernel`), runs the checks of
:mod:`sessionkit.kernels.checking` with counted progress, stores one ``correctness_results`` row per
config as it finishes, and prints a compact table. Without CUDA (or with a CPU build of torch) the
step is skipped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..db import SQLITE_MAX_INT
from ..errors import UsageError
from ..kernels import correctness as kcorrectness
from . import Metric, Step, StepContext, StepResult
from .typed import StepOptions, StepSummary, fact, option


@dataclass(frozen=True)
class CorrectnessOptions(StepOptions):
    seed: int | None = option(None, type=int, min=0, max=SQLITE_MAX_INT,
                              help="Seed for the configs and inputs (default: a random one, "
                                   "printed).")
    configs: int = option(kcorrectness.DEFAULT_CONFIGS, unit="count",
                          min=kcorrectness.MIN_CONFIGS, max=kcorrectness.MAX_CONFIGS,
                          help="How many random configs to check.")
    max_seq_len: int | None = option(None, type=int, min=1,
                                     help="Leave out sequence lengths above this (for quick "
                                          "runs).")


@dataclass
class CorrectnessSummary(StepSummary):
    """What a correctness step stored in ``steps.summary``; each config's result is a row of
    ``correctness_results``."""

    seed: int | None = fact(None, help="The seed of the configs and inputs.")
    configs: int | None = fact(None, unit="count", help="Configs checked.")
    passed: int | None = fact(None, unit="count", help="Configs within the error bound.")
    failed: int | None = fact(None, unit="count", help="Configs outside it (or not run).")
    worst_ratio: float | None = fact(None, unit="ratio",
                                     help="The largest max error / bound over configs with a "
                                          "finite output; None when none had one.")
    nonfinite: int | None = fact(None, unit="count", help="Configs whose output held NaN or Inf.")
    device: str | None = fact(None, help="The GPU the checks ran on.")
    build_key: str | None = fact(None, help="The build cache key of the checked kernels.")
    kernel_family: str | None = fact(None, help="The kernel family checked: sm90 or sm80.")


class CorrectnessStep(Step):
    name = "correctness"
    description = ("Check the attention kernel against an fp32 reference on seeded random configs "
                   "(fp16/bf16, every head dim of the kernel family, causal top-left and "
                   "bottom-right or not, grouped-query heads, Sq != Sk, strided inputs).")
    budget_s = 180.0
    options_type = CorrectnessOptions
    summary_type = CorrectnessSummary
    template = "steps/correctness.md.j2"
    report_when_absent = True

    def run(self, context: StepContext) -> StepResult:
        from ..kernels import checking

        options: CorrectnessOptions = context.options
        count = options.configs
        seed = options.seed
        if seed is None:
            seed = secrets.randbelow(1 << 31)
        seq_lens = checking.SEQ_LENS
        max_seq = options.max_seq_len
        if max_seq is not None:
            seq_lens = tuple(s for s in seq_lens if s <= max_seq)
            if not seq_lens:
                raise UsageError(f"--max-seq-len {max_seq} leaves no sequence length; "
                                 f"the smallest is {min(checking.SEQ_LENS)}")

        try:
            loaded = kcorrectness.load_kernel(context.progress)
        except kcorrectness.NoCuda as exc:
            return StepResult("skipped", message=f"{exc}; the kernel needs a CUDA GPU")
        kernel, device = loaded.fn, loaded.device

        head_dims = loaded.head_dims or checking.HEAD_DIMS
        configs = checking.generate_configs(count, seed, seq_lens=seq_lens, head_dims=head_dims)
        context.progress.note(f"seed {seed} ({count} configs; repeat with --seed {seed}) "
                              f"on {kcorrectness._device_name(device)}")

        def on_start(i, config):
            context.progress.update(i + 1, len(configs), config.case)

        def on_result(result):
            with context.db.conn:
                context.db["correctness_results"].insert({"step_id": context.step_id,
                                                          **result.row()})
            if not result.passed:
                context.progress.note(checking.failure_line(result))

        results = checking.run_checks(kernel, configs, device, on_start=on_start,
                                      on_result=on_result)
        summary = CorrectnessSummary(**checking.summarize(results, seed),
                                     device=kcorrectness._device_name(device),
                                     build_key=loaded.build_key, kernel_family=loaded.family)
        context.progress.note(checking.results_table(results))

        metrics = [
            Metric("configs_passed", summary.passed, "count"),
            Metric("configs_failed", summary.failed, "count"),
        ]
        if summary.worst_ratio is not None:
            metrics.append(Metric("worst_err_ratio", summary.worst_ratio, "ratio"))
        worst = (f"worst err/bound {summary.worst_ratio:.3g}"
                 if summary.worst_ratio is not None else "no finite output")
        if summary.failed:
            first = next(r for r in results if not r.passed)
            family = f"{loaded.family} kernels: " if loaded.family else ""
            message = (f"{family}{summary.failed} of {summary.configs} configs failed "
                       f"(seed {seed}); "
                       f"first: #{first.config.idx} {first.config.group} {first.config.shape}")
            return StepResult("failed", message=message, summary=summary, metrics=metrics,
                              exit_code=1)
        family = f"{loaded.family} kernels: " if loaded.family else ""
        message = f"{family}{summary.configs} configs passed (seed {seed}, {worst})"
        return StepResult("passed", message=message, summary=summary, metrics=metrics)
