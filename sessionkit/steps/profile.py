"""``sessionkit step profile``: Nsight Compute on one call of a kernel, and what to change next.

How the profile is taken, read and classified is :mod:`sessionkit.profile`; this module is the step:
its options, running ``ncu`` inside a session and recording what it found.
"""

from __future__ import annotations

import operator
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import profile as prof
from ..attention import CONFIG_FIELDS, CONFIG_FORMAT, IMPLS, AttentionConfig
from . import Metric, Step, StepResult
from .typed import StepOptions, StepSummary, fact, option


HOTTEST = 10  # hottest SASS instructions kept in the summary (--source)
METRIC_OPCODES = 10  # opcodes with most warp samples recorded as metrics (--source)


@dataclass(frozen=True)
class ProfileOptions(StepOptions):
    config: AttentionConfig = option(prof.parse_profile_config(prof.DEFAULT_CONFIG),
                                     parse=prof.parse_profile_config,
                                     dump=operator.attrgetter("spec"),
                                     metavar="B,H,Sq,Sk,D,DTYPE,CAUSAL[,H_KV]",
                                     help=f"{CONFIG_FORMAT} to profile: {CONFIG_FIELDS}.")
    kernel: str = option("ours", choices=IMPLS,
                         help="Our kernel, or torch SDPA (default dispatch or one backend).")
    kernel_regex: str | None = option(None, help="Profile only the first launch whose name "
                                                 "matches (ncu --kernel-name).")
    warmup: int = option(3, unit="count", min=0, max=100, help="Calls before the profiled one.")
    source: bool = option(False, help="Also sample warp stalls per SASS instruction (ncu section "
                                      "SourceCounters) and record where the warps stall, per "
                                      "opcode and for the hottest instructions.")


@dataclass
class ProfileSummary(StepSummary):
    """What a profile step stored in ``steps.summary``; the kernel's numbers are metrics (subject:
    the kernel profiled)."""

    verdict: str | None = fact(None, help="The decision tree's verdict (patterns/profile-tree.toml).")
    config: str | None = fact(None, help="The config profiled, as B,H,Sq,Sk,D,dtype,causal.")
    kernel: str | None = fact(None, help="What was profiled: ours, sdpa or an SDPA backend.")
    kernel_name: str | None = fact(None, help="The name of the profiled CUDA kernel.")
    stalls: list | None = fact(None, help="The top stall reasons: [[name, % of stalls], ...].")
    suggestions: list[dict] | None = fact(None, help="Next moves: [{text, pattern}, ...].")
    verdict_summary: str | None = fact(None, help="The verdict in one sentence.")
    ceilings: dict | None = fact(None, help="{matmul_tflops (TFLOP/s), matmul_source, dram_tbs "
                                            "(TB/s), dram_source}.")
    achieved: dict | None = fact(None, help="{tflops (TFLOP/s), tflops_pct (%), bandwidth_tbs "
                                            "(TB/s), bandwidth_pct (%), traffic_ratio}.")
    occupancy_limiters: list | None = fact(None, help="What limits occupancy, per ncu.")
    kernels_profiled: int | None = fact(None, unit="count", help="Kernels in the profiled call.")
    gpu: str | None = fact(None, help="The GPU profiled on.")
    torch: str | None = fact(None, help="The torch release of the profiled process.")
    ncu: str | None = fact(None, help="Path of the ncu that profiled.")
    metrics: list[str] | None = fact(None, help="The ncu metrics asked for.")
    sections: list[str] | None = fact(None, help="The ncu sections asked for.")
    tree: str | None = fact(None, help="Path of the decision tree used.")
    permission_error: bool | None = fact(None, help="True when ncu had no access to the GPU's "
                                                    "performance counters.")
    # --source: ncu's warp samples per SASS instruction (sessionkit.profile.source)
    sass_kernel: str | None = fact(None, help="The kernel whose SASS was sampled (--source).")
    sass_samples: int | None = fact(None, unit="count", help="Warp samples taken in that kernel, "
                                                             "issuing or stalled (--source).")
    sass_instructions: int | None = fact(None, unit="count",
                                         help="SASS instructions in the kernel's listing (--source).")
    sass_opcodes: list[dict] | None = fact(None, help=(
        "Warp samples per opcode (mnemonic without predicate or modifiers), most first, opcodes "
        "without samples left out (--source): [{opcode, samples (count), share_pct (% of the "
        "kernel's samples), not_issued (count), instructions (count in the listing), executed "
        "(warp-level instructions executed), reasons: [[reason, % of the opcode's samples], "
        "...]}]. Reasons are ncu's stall reasons; 'selected' is a warp that was issuing, "
        "'unlisted' samples that ncu gives no reason column for."))
    sass_hottest: list[dict] | None = fact(None, help=(
        "The instructions with most warp samples (--source): [{index (row of the listing), "
        "offset (bytes from the kernel's first instruction), sass, opcode, samples (count), "
        "share_pct (% of the kernel's samples), reasons: [[reason, % of its samples], ...]}]."))
    source_error: str | None = fact(None, help="Why --source recorded no SASS breakdown (the "
                                               "kernel-level profile is recorded all the same).")


class ProfileStep(Step):
    name = "profile"
    description = ("Profile one call of a kernel with Nsight Compute. Records SM/DRAM/tensor "
                   "throughput, occupancy, stalls and L2 hit rate, gives a verdict and next moves.")
    budget_s = 120.0
    options_type = ProfileOptions
    summary_type = ProfileSummary
    template = "steps/profile.md.j2"
    report_when_absent = True

    def run(self, context) -> StepResult:
        opts: ProfileOptions = context.options
        cfg, kernel = opts.config, opts.kernel
        tree = prof.load_tree()  # a broken tree fails before the GPU time is spent

        from ..toolchain import find_cuda_tool

        found = find_cuda_tool("ncu")
        if found.path is None:
            return StepResult("skipped", message="ncu not found on PATH, in $CUDA_HOME/bin or "
                              "/usr/local/cuda*/bin: install Nsight Compute or put ncu on PATH")
        skip, gpu_name = prof.gpu_facts()
        if skip:
            return StepResult("skipped", message=skip)
        context.progress.note(f"ncu {found.path} ({found.where}); GPU {gpu_name}")

        workdir = Path(context.workdir)
        log_path = workdir / "ncu.log"
        context.artifact(log_path, "log")
        available = prof.query_metric_names(found.path)
        metrics = prof.choose_metrics(available)
        if available is None:
            context.progress.note("ncu --query-metrics gave no list: sections only")
        report_base = workdir / "profile"
        target = prof.target_command(cfg, kernel, opts.warmup)
        cmd = prof.ncu_command(found.path, target, report_base, metrics, opts.kernel_regex,
                               source=opts.source)
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        context.progress.note(f"profiling {kernel} {cfg.spec}: one call after "
                              f"{opts.warmup} warm-up calls")
        code, output = prof.run_logged(cmd, log_path, env, prof.NCU_TIMEOUT_S)
        context.artifact(log_path, "log")
        reason = prof.ncu_failure(output, code)
        if reason:
            return StepResult("failed", message=reason,
                              exit_code=code or 1,
                              summary=ProfileSummary(
                                  kernel=kernel, config=cfg.spec,
                                  permission_error=prof.permission_denied(output)))
        rep = report_base.with_suffix(".ncu-rep")
        if not rep.is_file():
            raise prof.ProfileError(f"ncu wrote no report {rep} (log: {log_path})")
        context.artifact(rep, "ncu-rep")

        csv_path = workdir / "profile.csv"
        proc = subprocess.run([found.path, "--import", str(rep), "--csv", "--page", "raw",
                               "--print-units", "base"], capture_output=True, text=True,
                              timeout=prof.NCU_TIMEOUT_S)
        csv_path.write_text(proc.stdout)
        context.artifact(csv_path, "csv")
        if proc.returncode != 0:
            raise prof.ProfileError(
                f"ncu --import failed: {(proc.stderr or proc.stdout).strip()[:200]}")
        records = prof.parse_ncu_csv(proc.stdout)
        record = prof.main_kernel(records)
        if len(records) > 1:
            context.progress.note(f"{len(records)} kernels in the call; the longest is classified")
        numbers = prof.kernel_numbers(record)
        info = prof.target_info(output)
        ceilings = prof.find_ceilings(context.db, context.session, info.get("gpu_name") or gpu_name)
        facts = prof.make_facts(numbers, cfg, kernel, ceilings)
        result = prof.classify(facts, tree)
        self._record(context, numbers, facts, kernel)

        context.progress.note(f"kernel {record.name[:160]}")
        for line in prof.numbers_table(numbers, facts, ceilings):
            context.progress.note(line)
        context.progress.note(f"{'verdict':<20} {result.verdict}: {result.summary}")
        context.progress.note("next:")
        for move in result.suggestions:
            context.progress.note(f"  - {move['text']} [{move['pattern']}]")
        source, source_error = None, None
        if opts.source:
            source, source_error = self._source(context, found.path, rep, record.name, kernel)
        stalls = [[n, round(p, 1)] for n, p in numbers.top_stalls(3)]
        summary = ProfileSummary(
            verdict=result.verdict, config=cfg.spec, kernel=kernel, kernel_name=record.name,
            stalls=stalls,
            suggestions=[{"text": m["text"], "pattern": m["pattern"]} for m in result.suggestions],
            verdict_summary=result.summary,
            ceilings={"matmul_tflops": ceilings.tflops, "matmul_source": ceilings.tflops_source,
                      "dram_tbs": ceilings.tbs, "dram_source": ceilings.tbs_source},
            achieved={"tflops": facts["tflops"], "tflops_pct": facts["tflops_pct"],
                      "bandwidth_tbs": facts["bandwidth_tbs"],
                      "bandwidth_pct": facts["bandwidth_pct"],
                      "traffic_ratio": facts["traffic_ratio"]},
            occupancy_limiters=numbers.occupancy_limiters, kernels_profiled=len(records),
            gpu=info.get("gpu_name") or gpu_name, torch=info.get("torch"), ncu=found.path,
            metrics=metrics,
            sections=list(prof.SECTIONS) + ([prof.SOURCE_SECTION] if opts.source else []),
            tree=tree.path, source_error=source_error)
        if source is not None:
            summary.sass_kernel = source.kernel_name or record.name
            summary.sass_samples = source.total_samples
            summary.sass_instructions = len(source.instructions)
            summary.sass_opcodes = prof.opcode_rows(source)
            summary.sass_hottest = prof.hottest_rows(source, HOTTEST)
        top = f", top stall {stalls[0][0]}" if stalls else ""
        message = (f"{result.verdict}: {prof.fmt_value(numbers.duration_ms, 'ms', 3)}, tensor pipe "
                   f"{prof.fmt_value(numbers.tensor_pipe_pct, '%', 0)}, DRAM "
                   f"{prof.fmt_value(numbers.dram_throughput_pct, '%', 0)}{top}")
        if source_error:
            message += f"; no SASS breakdown: {source_error}"
        elif summary.sass_opcodes:
            hot = summary.sass_opcodes[0]
            message += f"; SASS: {hot['opcode']} {hot['share_pct']:.0f} % of warp samples"
        elif source is not None:
            message += "; SASS: no warp samples in the kernel"
        return StepResult("passed", message=message, summary=summary)

    @staticmethod
    def _source(context, ncu: str, rep: Path, kernel_name: str, kernel: str
                ) -> tuple[prof.SourceProfile | None, str | None]:
        """Read the report's SASS page back: (the table of the CUDA kernel ``kernel_name``, None),
        or (None, the one-line reason there is none). The CSV is kept as an artifact either way;
        the metrics are ``sass_samples`` (subject: ``kernel``, what was profiled) and
        ``sass_samples_pct`` per opcode (subject: the opcode)."""
        csv_path = Path(context.workdir) / "profile-source.csv"
        context.progress.note("reading the warp samples per SASS instruction (ncu --page source)")
        try:
            try:
                text = prof.export_source(ncu, rep, csv_path, prof.SOURCE_TIMEOUT_S)
            finally:
                if csv_path.is_file():
                    context.artifact(csv_path, "csv")
            source = prof.pick_kernel(prof.parse_source_csv(text), kernel_name)
        except prof.SourceError as exc:
            context.progress.note(f"no SASS breakdown: {exc}")
            return None, str(exc)
        metrics = [Metric("sass_samples", source.total_samples, "count", kernel)]
        opcodes = source.by_opcode()
        metrics += [Metric("sass_samples_pct", o.share_pct, "%", o.opcode)
                    for o in opcodes[:METRIC_OPCODES] if o.samples > 0]
        context.metrics(metrics)
        context.progress.note(f"where the warps stall: {source.total_samples:,} warp samples "
                              f"over {len(source.instructions):,} SASS instructions")
        for o in opcodes[:5]:
            if o.samples:
                reasons = ", ".join(f"{r} {p:.0f} %" for r, p in o.reasons)
                context.progress.note(f"  {o.opcode:<12} {o.share_pct:5.1f} % ({reasons})")
        return source, None

    @staticmethod
    def _record(context, numbers: prof.KernelNumbers, facts: dict, kernel: str) -> None:
        rows = [
            ("sm_throughput_pct", numbers.sm_throughput_pct, "%"),
            ("dram_throughput_pct", numbers.dram_throughput_pct, "%"),
            ("tensor_pipe_pct", numbers.tensor_pipe_pct, "%"),
            ("achieved_occupancy_pct", numbers.achieved_occupancy_pct, "%"),
            ("registers_per_thread", numbers.registers_per_thread, "count"),
            ("smem_per_block_bytes", numbers.smem_per_block_bytes, "bytes"),
            ("l2_hit_rate_pct", numbers.l2_hit_rate_pct, "%"),
            ("duration_ms", numbers.duration_ms, "ms"),
            ("memory_throughput_pct", numbers.memory_throughput_pct, "%"),
            ("theoretical_occupancy_pct", numbers.theoretical_occupancy_pct, "%"),
            ("dram_bytes", numbers.dram_bytes, "bytes"),
            ("achieved_tflops", facts.get("tflops"), "TFLOP/s"),
            ("tflops_pct_of_ceiling", facts.get("tflops_pct"), "%"),
            ("dram_tbs", facts.get("bandwidth_tbs"), "TB/s"),
            ("dram_pct_of_ceiling", facts.get("bandwidth_pct"), "%"),
        ]
        metrics = [Metric(k, v, u, kernel) for k, v, u in rows if v is not None]
        metrics += [Metric("stall_pct", p, "%", n) for n, p in numbers.top_stalls(3)]
        context.metrics(metrics)
