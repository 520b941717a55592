"""``sessionkit step bench``: time our attention kernel against SDPA and its backends.

The measuring, the result rows and the table are :mod:`sessionkit.bench` (see
:mod:`sessionkit.bench.step` for how a run is spread over passes and cooled down); this module is the
step: its options, and :func:`run_bench`, which runs the grid inside a session.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass

from ..attention import CONFIG_EXAMPLES, CONFIG_FIELDS, IMPLS, AttentionConfig
from ..bench.grids import BUILTIN_GRIDS, load_grid, parse_config, select_configs
from ..bench.passes import ResultStore, measure_grid
from ..bench.stats import geomean
from ..bench.step import (DEFAULT_COOLDOWN, DEFAULT_PASSES, DEFAULT_PREHEAT_S, DEFAULT_TIME_LIMIT_S,
                          MAX_CONFIG_S, MAX_COOLDOWN, MAX_PASSES, bench_config, noise_metrics,
                          parse_impls, parse_preheat, result_rows, results_table, session_ceiling,
                          check_csv_target, stop_rule, write_csv)
from ..timefmt import parse_duration
from . import Step, StepContext, StepResult
from .typed import StepOptions, StepSummary, fact, file_path, option


def _grid_name(name: str) -> str:
    load_grid(name)  # an unknown grid (or a broken [tool.sessionkit.grids]) fails here
    return name


def _impl_names(text: str) -> tuple[str, ...]:
    return tuple(parse_impls([text]) or ())


@dataclass(frozen=True)
class BenchOptions(StepOptions):
    grid: str | None = option(None, parse=_grid_name,
                              help="Named grid: quick (default), "
                                   + ", ".join(g for g in BUILTIN_GRIDS if g != "quick")
                                   + ", or one from [tool.sessionkit.grids] in pyproject.toml.")
    configs: tuple[AttentionConfig, ...] = option(
        (), flag="--config", multiple=True, parse=parse_config,
        metavar="B,H,Sq,Sk,D,DTYPE,CAUSAL[,H_KV]",
        dump=operator.attrgetter("spec"),
        help=f"A config to time (repeatable); alone it replaces the grid. {CONFIG_FIELDS}; "
             f"e.g. {CONFIG_EXAMPLES}.")
    csv_path: str | None = option(None, flag="--csv", parse=file_path, metavar="FILE",
                                  help="Also write the results as CSV to FILE (its missing "
                                       "folders made), kept among the step's files; not '-': "
                                       "standard output carries the progress.")
    impls: tuple[str, ...] = option((), flag="--impl", multiple=True, parse=_impl_names,
                                    help="Only these implementations (repeatable or comma "
                                         "separated): " + ", ".join(IMPLS) + ".")
    time_limit_s: float = option(DEFAULT_TIME_LIMIT_S, flag="--time-limit", unit="s", min=0,
                                 min_open=True, parse=parse_duration, metavar="DURATION",
                                 default_text=f"{DEFAULT_TIME_LIMIT_S:g}s",
                                 help="Time for all configs together; each stops early once its "
                                      "medians are steady.")
    graph: bool = option(False, help="Time CUDA-graph replays of the launches.")
    passes: int = option(DEFAULT_PASSES, unit="count", min=1, max=MAX_PASSES,
                         help="Visit every config this many times, spread over the run (the "
                              "grid in order, then in reverse order, ...); each median is over "
                              "the samples of all passes. Forward attention only.")
    cooldown: float = option(DEFAULT_COOLDOWN, unit="ratio", min=0, max=MAX_COOLDOWN,
                             help="After each batch of samples, leave the GPU idle this many times "
                                  "the batch's duration, so that it stays under its power cap and "
                                  "at full clock; 0 measures at sustained full load, where the "
                                  "power cap sets the clock and results vary more from run to "
                                  "run.")
    preheat_s: float = option(DEFAULT_PREHEAT_S, flag="--preheat", unit="s", min=0,
                              parse=parse_preheat, metavar="DURATION", default_text=f"{DEFAULT_PREHEAT_S:g}s",
                              help="Load the GPU until its temperature levels off, for at most "
                                   "this long (0 to skip); counts against --time-limit.")


@dataclass
class BenchSummary(StepSummary):
    """What a bench step stored in ``steps.summary``; each config and implementation is a row of
    ``bench_results`` with its samples in ``bench_samples``."""

    grid: str | None = fact(None, help="The grid: a grid's name, custom (--config alone) or "
                                       "NAME+custom.")
    configs: int | None = fact(None, unit="count", help="Configs timed.")
    ceiling_tflops: float | None = fact(None, unit="TFLOP/s",
                                        help="The bf16 matmul ceiling that % of peak refers to.")
    ceiling_reused: bool | None = fact(None, help="True when the ceiling was measured earlier in "
                                                  "the session.")
    geomean_speedup_vs_sdpa: float | None = fact(None, unit="ratio",
                                                 help="Geometric mean of SDPA's latency / ours.")
    best_speedup_vs_sdpa: float | None = fact(None, unit="ratio",
                                              help="The largest SDPA latency / ours.")
    impls: list[str] | None = fact(None, help="The implementations timed.")
    graph: bool | None = fact(None, help="True when CUDA-graph replays were timed (--graph).")
    passes: int | None = fact(None, unit="count", help="Visits of every config (--passes).")
    cooldown: float | None = fact(None, unit="ratio", help="Idle time per busy time (--cooldown).")
    ours: str | None = fact(None, help="'measured', or why our kernel was not.")
    elapsed_s: float | None = fact(None, unit="s", help="Wall time of the whole run.")
    preheat: dict | None = fact(None, help="The preheat: {seconds, temp_start_c, temp_end_c, "
                                           "steady}; None when skipped.")
    pass_spread_median_pct: float | None = fact(None, unit="%",
                                                help="Median spread of the per-pass medians.")
    throttled_sample_share: float | None = fact(None, unit="fraction",
                                                help="Share of samples taken at a throttle reason.")
    sm_clock_median_mhz: float | None = fact(None, unit="MHz", help="Median SM clock of the "
                                                                    "samples.")
    kernel_family: str | None = fact(None, help="The family our kernel ran as: sm90 or sm80.")
    build_key: str | None = fact(None, help="The build cache key of our kernel's library: two "
                                            "bench steps on different builds differ here.")
    nvcc_flags: str | None = fact(None, help="The experiment flags of that build "
                                             "($SESSIONKIT_NVCC_FLAGS), empty for the plain build.")


def _kernel_build() -> tuple[str | None, str | None]:
    """The build key and the experiment flags of our loaded kernel library, (None, None) if none
    is loaded in this process."""
    from ..kernels import build

    info = build.loaded()
    if info is None:
        return None, None
    return info.key, " ".join(build.extra_nvcc_flags())


def _kernel_family() -> str | None:
    """The kernel family ("sm90" or "sm80") our op runs on the current GPU, None if unknown."""
    try:
        import torch

        return str(torch.ops.sessionkit.flash_attn_family(torch.cuda.current_device()))
    except Exception:  # no op loaded (ours not measured) or no GPU: nothing to record
        return None


def run_bench(context: StepContext, options: BenchOptions) -> StepResult:
    """The bench step's work (see :mod:`sessionkit.bench.step`): time ``options.impls`` (default:
    all) on the grid or ``options.configs``, store ``bench_results`` / ``bench_samples`` rows
    through ``context``, and return the step's result with a :class:`BenchSummary`."""
    grid_label, chosen = select_configs(options.grid, options.configs)
    if options.csv_path:
        check_csv_target(options.csv_path)  # not after minutes of timing
    wanted = list(options.impls) or None
    graph, passes, cooldown = options.graph, options.passes, options.cooldown
    try:
        import torch
    except ImportError:
        return StepResult("skipped", "needs torch with CUDA; torch is not installed")
    if not torch.cuda.is_available():
        return StepResult("skipped", f"needs a CUDA GPU (torch {torch.__version__}: "
                                     "torch.cuda.is_available() is False)")
    from ..bench import timing

    progress = context.progress
    db = context.db
    device = torch.device("cuda", torch.cuda.current_device())
    probe = timing.Probe.for_torch_device(device.index)
    if not probe.available:
        progress.note(f"no throttle flags or clock-steady warm-up: {probe.reason}")
    started = time.monotonic()
    try:
        timer = timing.Timer(torch, device, probe=probe, graph=graph, cooldown=cooldown)
        ours_note = None
        if (wanted is None or "ours" in wanted) and chosen:
            # Load (and, the first time, build) our kernel before the preheat, so that a build
            # does not leave the GPU idle and cooling between the preheat and the configs.
            _, ours_note = timing.ours_impl(torch, chosen[0])
            if ours_note:
                progress.note(f"ours skipped: {ours_note}")
        heat = None
        if options.preheat_s > 0:
            heat = timing.preheat(timer, cap_s=options.preheat_s)
            temps = ""
            if heat["temp_start_c"] is not None and heat["temp_end_c"] is not None:
                temps = f", {heat['temp_start_c']:.0f} C -> {heat['temp_end_c']:.0f} C"
            state = "steady" if heat["steady"] else "not steady yet"
            progress.note(f"preheat: {heat['seconds']:.1f} s{temps} ({state})")
        ceiling = session_ceiling(db, context.session["id"])
        reused = ceiling is not None
        if ceiling is None:
            ceiling, ms = timing.matmul_ceiling(timer)
            progress.note(f"matmul ceiling: bf16 8192^3 in {ms:.3f} ms = {ceiling:.0f} TFLOP/s")
        context.metric("matmul_bf16_tflops", ceiling, unit="TFLOP/s", subject="ceiling")

        deadline_total = started + options.time_limit_s
        n = len(chosen)

        def impls_for(config):
            nonlocal ours_note
            impls_here = []
            if wanted is None or "ours" in wanted:
                ours, why = timing.ours_impl(torch, config)
                if ours is not None:
                    impls_here.append(ours)
                elif ours_note is None:
                    ours_note = why
                    progress.note(f"ours skipped: {why}")
            impls_here += [imp for imp in timing.sdpa_impls(torch, config)
                           if wanted is None or imp.name in wanted]
            if wanted is not None and "sdpa" not in wanted:
                # the reference still runs for the correctness check and speedups
                impls_here = [imp for imp in timing.sdpa_impls(torch, config)
                              if imp.name == "sdpa"] + impls_here
            return impls_here

        def visit(config, known, budget, first):
            return bench_config(timer, torch, config, impls_for(config), stop_rule(budget, passes),
                                deadline=time.monotonic() + budget, first=first, known=known)

        all_rows = measure_grid(
            ResultStore(db, context.step_id), chosen, visit, passes=passes,
            deadline=deadline_total, max_visit_s=MAX_CONFIG_S / passes, progress=progress,
            rows_for=lambda config, runs: result_rows(config, runs, ceiling=ceiling))
    finally:
        probe.close()

    table = results_table(all_rows)
    progress.note(table)
    (context.workdir / "bench_table.txt").write_text(table + "\n")
    context.artifact(context.workdir / "bench_table.txt", "report")
    if options.csv_path:
        path = write_csv(options.csv_path, all_rows)
        context.artifact(path, "csv")

    noise = noise_metrics(all_rows)
    for key, (value, unit) in noise.items():
        if value is not None:
            context.metric(key, value, unit=unit)
    ours_rows = [r for r in all_rows if r["impl"] == "ours"]
    build_key, nvcc_flags = _kernel_build() if ours_rows else (None, None)
    speedups = [r["speedup_vs_sdpa"] for r in ours_rows if r["speedup_vs_sdpa"]]
    summary = BenchSummary(
        grid=grid_label, configs=n, ceiling_tflops=ceiling, ceiling_reused=reused,
        geomean_speedup_vs_sdpa=geomean(speedups),
        best_speedup_vs_sdpa=max(speedups) if speedups else None,
        impls=sorted({r["impl"] for r in all_rows}), graph=graph, passes=passes, cooldown=cooldown,
        ours="measured" if ours_rows else (ours_note or "not requested"),
        elapsed_s=round(time.monotonic() - started, 1), preheat=heat,
        kernel_family=_kernel_family() if ours_rows else None, build_key=build_key,
        nvcc_flags=nvcc_flags,
        **{key: value for key, (value, _) in noise.items()})
    wrong = [r for r in ours_rows if r["status"] in ("wrong", "error")]
    if wrong:
        return StepResult("failed", f"ours is wrong or failed on {len(wrong)} of {n} configs; "
                                    "no speed reported for those", summary=summary)
    if speedups:
        family = f" ({summary.kernel_family})" if summary.kernel_family else ""
        message = (f"{n} configs; ours{family} vs SDPA: geomean "
                   f"{summary.geomean_speedup_vs_sdpa:.2f}x, "
                   f"best {summary.best_speedup_vs_sdpa:.2f}x")
    else:
        message = f"{n} configs timed ({', '.join(summary.impls)})"
    return StepResult("passed", message, summary=summary)


class BenchStep(Step):
    name = "bench"
    description = "Time our attention kernel against SDPA and each SDPA backend on a grid."
    budget_s = 300.0
    options_type = BenchOptions
    summary_type = BenchSummary
    template = "steps/bench.md.j2"
    report_when_absent = True

    def run(self, context: StepContext) -> StepResult:
        return run_bench(context, context.options)
