"""``sessionkit step bench``: time our attention kernel against SDPA and its backends.

The measuring, the result rows and the table are :mod:`sessionkit.bench` (see
:mod:`sessionkit.bench.step` for how a run is spread over passes and cooled down); this module is the
step: its options, and :func:`run_bench`, which runs the grid inside a session.
"""

from __future__ import annotations

import time

import click

from ..attention import IMPLS
from ..bench.grids import select_configs
from ..bench.passes import ResultStore, measure_grid
from ..bench.stats import geomean
from ..bench.step import (DEFAULT_COOLDOWN, DEFAULT_PASSES, DEFAULT_PREHEAT_S, DEFAULT_TIME_LIMIT_S,
                          MAX_CONFIG_S, MAX_COOLDOWN, MAX_PASSES, bench_config, noise_metrics,
                          parse_impls, parse_preheat, result_rows, results_table, session_ceiling,
                          stop_rule, write_csv)
from ..errors import UsageError
from ..paramtypes import FilePath
from . import Step, StepContext, StepResult


def _kernel_family() -> str | None:
    """The kernel family ("sm90" or "sm80") our op runs on the current GPU, None if unknown."""
    try:
        import torch

        return str(torch.ops.sessionkit.flash_attn_family(torch.cuda.current_device()))
    except Exception:  # no op loaded (ours not measured) or no GPU: nothing to record
        return None


def run_bench(context: StepContext, *, grid: str | None, configs=(), impls=None,
              time_limit_s: float = DEFAULT_TIME_LIMIT_S, graph: bool = False,
              csv_path: str | None = None, preheat_s: float = DEFAULT_PREHEAT_S,
              passes: int = DEFAULT_PASSES, cooldown: float = DEFAULT_COOLDOWN) -> StepResult:
    """The bench step's work (see :mod:`sessionkit.bench.step`): time ``impls`` (default: all) on
    the grid or ``configs``, store ``bench_results`` / ``bench_samples`` rows through ``context``,
    and return the step's result. Bad options raise :class:`~sessionkit.errors.UsageError`."""
    grid_label, chosen = select_configs(grid, configs)
    wanted = parse_impls(impls)
    if time_limit_s is not None and time_limit_s <= 0:
        raise UsageError("--time-limit must be positive")
    if preheat_s is None or preheat_s < 0:
        raise UsageError("--preheat must be 0 or a positive duration")
    if cooldown is None or not 0 <= cooldown <= MAX_COOLDOWN:
        raise UsageError(f"--cooldown must be between 0 and {MAX_COOLDOWN:g}")
    if not isinstance(passes, int) or not 1 <= passes <= MAX_PASSES:
        raise UsageError(f"--passes must be a whole number from 1 to {MAX_PASSES}")
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
        if preheat_s > 0:
            heat = timing.preheat(timer, cap_s=preheat_s)
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

        deadline_total = started + (time_limit_s or DEFAULT_TIME_LIMIT_S)
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
    if csv_path:
        path = write_csv(csv_path, all_rows)
        context.artifact(path, "csv")

    noise = noise_metrics(all_rows)
    for key, (value, unit) in noise.items():
        if value is not None:
            context.metric(key, value, unit=unit)
    ours_rows = [r for r in all_rows if r["impl"] == "ours"]
    speedups = [r["speedup_vs_sdpa"] for r in ours_rows if r["speedup_vs_sdpa"]]
    summary = {
        "grid": grid_label, "configs": n, "ceiling_tflops": ceiling, "ceiling_reused": reused,
        "geomean_speedup_vs_sdpa": geomean(speedups),
        "best_speedup_vs_sdpa": max(speedups) if speedups else None,
        "impls": sorted({r["impl"] for r in all_rows}), "graph": bool(graph), "passes": passes,
        "cooldown": cooldown,
        "ours": "measured" if ours_rows else (ours_note or "not requested"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "preheat": heat,
        **{key: value for key, (value, _) in noise.items()},
    }
    if ours_rows:
        summary["kernel_family"] = _kernel_family()
    wrong = [r for r in ours_rows if r["status"] in ("wrong", "error")]
    if wrong:
        return StepResult("failed", f"ours is wrong or failed on {len(wrong)} of {n} configs; "
                                    "no speed reported for those", summary=summary)
    if speedups:
        family = f" ({summary['kernel_family']})" if summary.get("kernel_family") else ""
        message = (f"{n} configs; ours{family} vs SDPA: geomean "
                   f"{summary['geomean_speedup_vs_sdpa']:.2f}x, "
                   f"best {summary['best_speedup_vs_sdpa']:.2f}x")
    else:
        message = f"{n} configs timed ({', '.join(summary['impls'])})"
    return StepResult("passed", message, summary=summary)



class BenchStep(Step):
    name = "bench"
    description = "Time our attention kernel against SDPA and each SDPA backend on a grid."
    budget_s = 300.0
    params = [
        click.Option(["--grid"], default=None,
                     help="Named grid: quick (default), standard, seeds, or one from "
                          "[tool.sessionkit.grids] in pyproject.toml."),
        click.Option(["--config", "configs"], multiple=True, metavar="B,H,Sq,Sk,D,DTYPE,CAUSAL",
                     help="A config to time (repeatable); alone it replaces the grid."),
        click.Option(["--csv", "csv_path"], type=FilePath(), default=None,
                     help="Also write the results as CSV."),
        click.Option(["--impl", "impls"], multiple=True,
                     help="Only these implementations (repeatable or comma separated): "
                          + ", ".join(IMPLS) + "."),
        click.Option(["--time-limit", "time_limit"], default="150s", show_default=True,
                     help="Time for all configs together; each stops early once its medians "
                          "are steady."),
        click.Option(["--graph"], is_flag=True, help="Time CUDA-graph replays of the launches."),
        click.Option(["--passes"], type=click.IntRange(1, MAX_PASSES), default=DEFAULT_PASSES,
                     show_default=True,
                     help="Visit every config this many times, spread over the run (forward, "
                          "then backward); each median is over the samples of all passes."),
        click.Option(["--cooldown"], type=click.FloatRange(0, MAX_COOLDOWN),
                     default=DEFAULT_COOLDOWN, show_default=True,
                     help="After each batch of samples, leave the GPU idle this many times the "
                          "batch's duration, so that it stays under its power cap and at full "
                          "clock; 0 measures at sustained full load, where the power cap sets "
                          "the clock and results vary more from run to run."),
        click.Option(["--preheat"], default="45s", show_default=True,
                     help="Load the GPU until its temperature levels off, for at most this long "
                          "(0 to skip); counts against --time-limit."),
    ]

    def check_options(self, options: dict) -> None:
        from ..timefmt import parse_duration

        select_configs(options.get("grid"), options.get("configs") or ())
        parse_impls(options.get("impls") or ())
        limit = options.get("time_limit")
        if limit and parse_duration(limit) <= 0:
            raise UsageError("--time-limit must be positive")
        parse_preheat(options.get("preheat"))

    def run(self, context: StepContext) -> StepResult:
        from ..timefmt import parse_duration

        opts = context.options
        limit = opts.get("time_limit")
        preheat = opts.get("preheat")
        return run_bench(context, grid=opts.get("grid"), configs=opts.get("configs") or (),
                         impls=opts.get("impls") or (),
                         time_limit_s=parse_duration(limit) if limit else DEFAULT_TIME_LIMIT_S,
                         graph=bool(opts.get("graph")), csv_path=opts.get("csv_path"),
                         preheat_s=parse_preheat(preheat),
                         passes=opts.get("passes") or DEFAULT_PASSES,
                         cooldown=float(DEFAULT_COOLDOWN if opts.get("cooldown") is None
                                        else opts["cooldown"]))
