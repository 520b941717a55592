"""``sessionkit step bench``: time our attention kernel against SDPA and its backends.

Every implementation runs on the same inputs in the same run, interleaved. Each config is visited
in several passes spread over the run (:mod:`~sessionkit.bench.passes`), and by default the GPU
rests as long as it works between batches of samples (``--cooldown 1``): under sustained load an
H100 sits at its power cap, where the clock it holds for a given config differs by up to 8 % from
one run to the next; below the cap it stays at full boost and medians repeat within 1-2 %.

Results and every raw sample go to ``bench_results`` / ``bench_samples``; the bf16 matmul ceiling
is measured once per session (metric ``matmul_bf16_tflops``, subject ``ceiling``).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import click

from ..errors import UsageError
from ..paramtypes import FilePath
from ..schema import IMPLS
from ..steps import Step, StepContext, StepResult
from .flops import tflops as to_tflops
from .grids import BenchConfig, select_configs
from .passes import ResultStore, measure_grid
from .stats import StopRule, geomean

DEFAULT_TIME_LIMIT_S = 150.0
DEFAULT_PREHEAT_S = 45.0
DEFAULT_PASSES = 3
MAX_PASSES = 20
DEFAULT_COOLDOWN = 1.0
MAX_COOLDOWN = 10.0
MAX_CONFIG_S = 6.0  # per config, all passes together
CSV_COLUMNS = ["implementation", "dtype", "batch_size", "num_heads", "seq_len_q", "seq_len_k",
               "head_dim", "causal", "num_heads_k", "causal_alignment", "latency_ms", "iqr_ms", "samples", "tflops", "pct_peak",
               "memory_mb", "throttled_samples", "speedup_vs_sdpa", "speedup_vs_best", "passes",
               "pass_spread_pct", "sm_clock_mhz", "status", "note"]
SDPA_IMPLS = tuple(i for i in IMPLS if i.startswith("sdpa"))


def parse_impls(values) -> list[str] | None:
    """``--impl`` values (repeatable, comma separated) -> implementation names; None = all."""
    names = []
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in IMPLS:
                raise UsageError(f"unknown implementation {part!r}; choose from {', '.join(IMPLS)}")
            names.append(part)
    return list(dict.fromkeys(names)) or None


def parse_preheat(value) -> float:
    """``--preheat``: a duration, or 0/off to skip; default when not given."""
    from ..timefmt import parse_duration

    if value is None or str(value).strip() == "":
        return DEFAULT_PREHEAT_S
    if str(value).strip().lower() in ("0", "0s", "off", "no", "none"):
        return 0.0
    return parse_duration(value)


def session_ceiling(db, session_id: str) -> float | None:
    """The matmul ceiling already measured in this session, if any."""
    row = db.execute(
        "SELECT m.value FROM metrics m JOIN steps s ON s.id = m.step_id "
        "WHERE s.session_id = ? AND m.key = 'matmul_bf16_tflops' AND m.subject = 'ceiling' "
        "AND m.value IS NOT NULL ORDER BY s.seq DESC, m.id DESC LIMIT 1", [session_id]).fetchone()
    return row[0] if row else None


def result_rows(config: BenchConfig, runs, *, ceiling: float | None) -> list[dict]:
    """bench_results rows (without step_id) for one config, speedups filled in."""
    from .passes import DRIFT_NOTE_PCT, median_clock, pass_spread_pct
    from .timing import summarize_samples

    rows = []
    for run in runs:
        passes = len(set(run.passes)) if run.passes else (1 if run.samples else 0)
        row = {"impl": run.name, **config.as_row(), "latency_ms": None, "iqr_ms": None,
               "samples": len(run.samples), "tflops": None, "pct_peak": None,
               "memory_mb": run.memory_mb, "throttled_samples": sum(run.throttled),
               "speedup_vs_sdpa": None, "speedup_vs_best": None, "status": run.status,
               "note": run.note or None, "launches_per_sample": run.launches,
               "max_abs_err": run.max_abs_err, "stop_reason": run.stop_reason or None,
               "passes": passes, "pass_spread_pct": None, "sm_clock_mhz": median_clock(run)}
        if run.status == "ok" and run.samples:
            stats = summarize_samples(run.samples, run.throttled, run.reasons)
            row["latency_ms"], row["iqr_ms"] = stats["latency_ms"], stats["iqr_ms"]
            row["tflops"] = to_tflops(config.flops, stats["latency_ms"])
            if ceiling and row["tflops"] is not None:
                row["pct_peak"] = 100.0 * row["tflops"] / ceiling
            notes = [row["note"]]
            if stats["used_slowed"]:
                notes.append("slowed down (heat or hardware) most of the time: median of all")
            elif stats["left_out"]:
                notes.append(f"{stats['left_out']} samples under a heat or hardware slowdown "
                             "left out")
            spread = pass_spread_pct(run)
            row["pass_spread_pct"] = spread
            if spread is not None and spread > DRIFT_NOTE_PCT:
                notes.append(f"per-pass medians differ by {spread:.1f} %")
            row["note"] = "; ".join(filter(None, notes)) or None
        rows.append(row)
    fill_speedups(rows)
    return rows


def fill_speedups(rows: list[dict]) -> None:
    """speedup_vs_sdpa = SDPA default latency / this one; speedup_vs_best uses the fastest SDPA
    implementation that ran (default or a backend)."""
    by_impl = {r["impl"]: r for r in rows if r["status"] == "ok" and r["latency_ms"]}
    sdpa = by_impl.get("sdpa")
    sdpa_lat = [r["latency_ms"] for name, r in by_impl.items() if name in SDPA_IMPLS]
    best = min(sdpa_lat) if sdpa_lat else None
    for row in rows:
        if row["status"] != "ok" or not row["latency_ms"]:
            continue
        if sdpa:
            row["speedup_vs_sdpa"] = sdpa["latency_ms"] / row["latency_ms"]
        if best:
            row["speedup_vs_best"] = best / row["latency_ms"]


def csv_row(row: dict) -> dict:
    out = {col: row.get(col) for col in CSV_COLUMNS}
    out["implementation"] = row["impl"]
    return out


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """One line per (implementation, config)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(csv_row(row))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return path


def step_rows(db, step_id: str) -> list[dict]:
    return [dict(r) for r in db.query(
        "SELECT * FROM bench_results WHERE step_id = ? ORDER BY id", [step_id])]


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok" and row["tflops"] is not None:
        return f"{row['tflops']:.0f}"
    return {"wrong": "WRONG", "unsupported": "n/a", "error": "err"}.get(row["status"], "-")


def results_table(rows: list[dict]) -> str:
    """Compact text table: TFLOP/s per implementation for each config, ours' speedup last."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    configs: dict[tuple, dict] = {}
    for r in rows:
        key = (r["dtype"], r["batch_size"], r["num_heads"], r["seq_len_q"], r["seq_len_k"],
               r["head_dim"], r["causal"], r.get("num_heads_k") or r["num_heads"],
               r.get("causal_alignment") or "top_left")
        configs.setdefault(key, {})[r["impl"]] = r
    short = {"ours": "ours", "sdpa": "sdpa", "sdpa_flash": "flash", "sdpa_cudnn": "cudnn",
             "sdpa_efficient": "effic", "sdpa_math": "math"}
    labels = {k: BenchConfig(k[1], k[2], k[3], k[4], k[5], k[0], bool(k[6]), k[7], k[8]).label
              for k in configs}
    width = max([len("config (TFLOP/s)")] + [len(v) for v in labels.values()])
    head = f"{'config (TFLOP/s)':<{width}} " + " ".join(f"{short[i]:>6}" for i in impls)
    if "ours" in impls:
        head += "  ours/sdpa"
    lines = [head]
    for key, by in configs.items():
        line = f"{labels[key]:<{width}} " + " ".join(f"{_cell(by.get(i)):>6}" for i in impls)
        ours = by.get("ours")
        if "ours" in impls:
            ratio = ours.get("speedup_vs_sdpa") if ours else None
            line += f"  {ratio:9.2f}x" if ratio else f"  {'-':>10}"
        lines.append(line)
    return "\n".join(lines)


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
    """The bench step's work (see the module docstring)."""
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
    from . import timing

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


def noise_metrics(rows: list[dict]) -> dict[str, tuple[float | None, str]]:
    """How steady the GPU was over a run, from its result rows: the median per-pass spread, the
    share of samples at a throttle reason and the median SM clock, over the rows that timed."""
    from .stats import median

    ok = [r for r in rows if r["status"] == "ok" and r["samples"]]
    spreads = [r["pass_spread_pct"] for r in ok if r.get("pass_spread_pct") is not None]
    clocks = [r["sm_clock_mhz"] for r in ok if r.get("sm_clock_mhz")]
    samples = sum(r["samples"] for r in ok)
    throttled = sum(r["throttled_samples"] or 0 for r in ok)
    return {
        "pass_spread_median_pct": (median(spreads) if spreads else None, "%"),
        "throttled_sample_share": (throttled / samples if samples else None, "fraction"),
        "sm_clock_median_mhz": (median(clocks) if clocks else None, "MHz"),
    }


def stop_rule(budget_s: float, passes: int = 1) -> StopRule:
    """The sampling rule of one visit to a config given its time budget; the minimum sample
    count (30 per config) is shared by the passes."""
    passes = max(1, passes)
    return StopRule(target_rel=0.002, min_samples=max(10, -(-30 // passes)),
                    max_samples=max(100, 5000 // passes), time_limit_s=budget_s * 0.8,
                    min_time_s=min(1.0, budget_s * 0.4))


def bench_config(timer, torch, config: BenchConfig, impls, rule: StopRule, *, deadline: float,
                 first: bool, known=None):
    """Time ``impls`` on one config: their ImplRuns with the raw samples.

    ``first`` warms the GPU longer (the first config of a run); a later pass over the config
    (``known``: its runs so far) warms briefly, as the GPU is already loaded, and reuses what
    they learned."""
    from . import timing

    guess_ms = config.flops / 300e12 * 1e3
    set_bytes = timing.input_set_bytes(config)
    count = timing.input_sets_for(set_bytes, timing.launches_for(guess_ms))
    sets = timing.make_input_sets(torch, config, timer.device, count)
    if first:
        warm, cap = 0.5, 2.0
    elif known:
        warm, cap = 0.05, 0.2
    else:
        warm, cap = 0.1, 0.3
    try:
        return timer.measure(impls, sets, rule=rule, deadline=deadline, warmup_s=warm,
                             warmup_cap_s=cap, check=timing.make_check(torch, config),
                             memory_set_bytes=set_bytes, known=known)
    finally:
        del sets


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
