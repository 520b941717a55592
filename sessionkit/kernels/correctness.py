"""``sessionkit step correctness``: the attention kernel against an fp32 reference on seeded configs.

The checking itself lives in :mod:`sessionkit.kernels.checking`; this module loads the kernel, runs
the checks with counted progress, stores one ``correctness_results`` row per config as it finishes,
and prints a compact table. Without CUDA (or with a CPU build of torch) the step is skipped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

import click

from ..db import SQLITE_MAX_INT
from ..errors import SessionkitError, UsageError, first_line
from ..steps import Metric, Step, StepContext, StepResult

DEFAULT_CONFIGS = 64
MIN_CONFIGS = 50
MAX_CONFIGS = 100_000


class KernelUnavailable(SessionkitError):
    """A GPU is there but the attention kernel cannot be loaded."""


class NoCuda(Exception):
    """No CUDA device or no CUDA build of torch: the step is skipped with this reason."""


@dataclass
class LoadedKernel:
    fn: Callable  # fn(q, k, v, out, lse, causal, scale, *, causal_alignment, enable_gqa)
    device: object  # a torch.device or a device string
    build_key: str | None = None  # the build-cache key of the library under test
    head_dims: tuple[int, ...] | None = None  # head dims of the family that runs on the device
    family: str | None = None  # the kernel family that runs on the device: "sm90" or "sm80"


def load_kernel(progress=None) -> LoadedKernel:
    """The built attention kernel on the current GPU, built first when no cached build matches.

    Raises :class:`NoCuda` when there is nothing to run it on, and a :class:`SessionkitError` (the
    build's own, or :class:`KernelUnavailable`) when there is a GPU but no usable kernel.
    """
    try:
        import torch
    except ImportError:
        raise NoCuda("torch is not installed") from None
    if torch.version.cuda is None:
        raise NoCuda(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise NoCuda(f"no CUDA device is visible (torch {torch.__version__})")
    try:
        from . import flash_attention_into, load_extension

        info = load_extension(progress)
    except SessionkitError:
        raise
    except Exception as exc:  # a missing or broken extension: say so in one line
        raise KernelUnavailable(
            f"cannot load the attention kernel ({first_line(exc, named=True)}); "
            "run 'sessionkit step build' to see the build log") from None

    def kernel(q, k, v, out, lse, causal, scale, causal_alignment="top_left", enable_gqa=False):
        flash_attention_into(q, k, v, out, lse, causal=causal, scale=scale,
                             causal_alignment=causal_alignment, enable_gqa=enable_gqa)

    device = torch.device("cuda", torch.cuda.current_device())
    head_dims = tuple(int(d) for d in torch.ops.sessionkit.flash_attn_head_dims(device.index))
    family = str(torch.ops.sessionkit.flash_attn_family(device.index))
    return LoadedKernel(kernel, device, getattr(info, "key", None), head_dims, family)


def _device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


class CorrectnessStep(Step):
    name = "correctness"
    description = ("Check the attention kernel against an fp32 reference on seeded random configs "
                   "(fp16/bf16, every head dim of the kernel family, causal top-left and "
                   "bottom-right or not, grouped-query heads, Sq != Sk, strided inputs).")
    budget_s = 180.0
    params = [
        click.Option(["--seed"], type=click.IntRange(0, SQLITE_MAX_INT), default=None,
                     help="Seed for the configs and inputs (default: a random one, printed)."),
        click.Option(["--configs"], type=click.IntRange(MIN_CONFIGS, MAX_CONFIGS),
                     default=DEFAULT_CONFIGS,
                     show_default=True, help="How many random configs to check."),
        click.Option(["--max-seq-len"], type=click.IntRange(min=1), default=None,
                     help="Leave out sequence lengths above this (for quick runs)."),
    ]

    def run(self, context: StepContext) -> StepResult:
        from . import checking

        options = context.options
        count = options.get("configs")
        if count is None:
            count = DEFAULT_CONFIGS
        if count < MIN_CONFIGS:
            raise UsageError(f"--configs must be at least {MIN_CONFIGS}, got {count}")
        seed = options.get("seed")
        if seed is None:
            seed = secrets.randbelow(1 << 31)
        seq_lens = checking.SEQ_LENS
        max_seq = options.get("max_seq_len")
        if max_seq is not None:
            seq_lens = tuple(s for s in seq_lens if s <= max_seq)
            if not seq_lens:
                raise UsageError(f"--max-seq-len {max_seq} leaves no sequence length; "
                                 f"the smallest is {min(checking.SEQ_LENS)}")

        try:
            loaded = load_kernel(context.progress)
        except NoCuda as exc:
            return StepResult("skipped", message=f"{exc}; the kernel needs a CUDA GPU")
        kernel, device = loaded.fn, loaded.device

        head_dims = loaded.head_dims or checking.HEAD_DIMS
        configs = checking.generate_configs(count, seed, seq_lens=seq_lens, head_dims=head_dims)
        context.progress.note(f"seed {seed} ({count} configs; repeat with --seed {seed}) "
                              f"on {_device_name(device)}")

        def on_start(i, config):
            context.progress.update(i + 1, len(configs), config.label)

        def on_result(result):
            with context.db.conn:
                context.db["correctness_results"].insert({"step_id": context.step_id,
                                                          **result.row()})
            if not result.passed:
                context.progress.note(checking.failure_line(result))

        results = checking.run_checks(kernel, configs, device, on_start=on_start,
                                      on_result=on_result)
        summary = checking.summarize(results, seed)
        summary["device"] = _device_name(device)
        summary["build_key"] = loaded.build_key
        summary["kernel_family"] = loaded.family
        context.progress.note(checking.results_table(results))

        metrics = [
            Metric("configs_passed", summary["passed"], "count"),
            Metric("configs_failed", summary["failed"], "count"),
        ]
        if summary["worst_ratio"] is not None:
            metrics.append(Metric("worst_err_ratio", summary["worst_ratio"], "ratio"))
        worst = (f"worst err/bound {summary['worst_ratio']:.3g}"
                 if summary["worst_ratio"] is not None else "no finite output")
        if summary["failed"]:
            first = next(r for r in results if not r.passed)
            family = f"{loaded.family} kernels: " if loaded.family else ""
            message = (f"{family}{summary['failed']} of {summary['configs']} configs failed "
                       f"(seed {seed}); "
                       f"first: #{first.config.idx} {first.config.group} {first.config.shape}")
            return StepResult("failed", message=message, summary=summary, metrics=metrics,
                              exit_code=1)
        family = f"{loaded.family} kernels: " if loaded.family else ""
        message = f"{family}{summary['configs']} configs passed (seed {seed}, {worst})"
        return StepResult("passed", message=message, summary=summary, metrics=metrics)
