"""``sessionkit step build``: compile (or load the cached build of) the FlashAttention kernels and
record registers, shared memory and spills per kernel. The building itself is
:mod:`sessionkit.kernels.build`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..kernels import build as kbuild
from . import Step, StepResult
from .typed import StepOptions, StepSummary, fact, option


@dataclass(frozen=True)
class BuildOptions(StepOptions):
    force: bool = option(False, help="Rebuild even when a cached build matches.")


@dataclass
class BuildSummary(StepSummary):
    """What a build step stored in ``steps.summary``. Per-kernel registers, shared memory and
    spills are metrics (subject: the kernel's name), not summary fields."""

    nvcc_version: str | None = fact(None, help="The nvcc release that compiled the kernels.")
    flags: list[str] | None = fact(None, help="The nvcc flags of the build.")
    cached: bool | None = fact(None, help="True when a cached build was loaded, nothing compiled.")
    key: str | None = fact(None, help="The build cache key (sources, torch, CUDA, Python, arch, "
                                      "flags).")
    library: str | None = fact(None, help="Path of the loaded extension library.")
    arch: str | None = fact(None, help="The GPU architecture compiled for, e.g. sm_90a.")
    load_time_s: float | None = fact(None, unit="s", help="Time to load the library.")
    build_time_s: float | None = fact(None, unit="s", help="Compile time; None when cached.")
    log: str | None = fact(None, help="Path of the build log of a failed build.")
    sources_sha256: str | None = fact(None, help="SHA-256 over every source file under csrc/ (paths "
                                      "and contents): names the kernels' sources even where the "
                                      "git commit of the session is stale or dirty.")
    sources_files: int | None = fact(None, unit="count", help="Source files under csrc/ in that digest.")


class BuildStep(Step):
    name = "build"
    description = ("Compile the FlashAttention kernels (cached by sources, toolchain and GPU arch) "
                   "and record registers, shared memory and spills per kernel; name the kernels "
                   "that spill or whose wgmma ptxas serialized.")
    budget_s = 120.0
    options_type = BuildOptions
    summary_type = BuildSummary
    template = "steps/build.md.j2"
    report_when_absent = True

    def run(self, context) -> StepResult:
        env = context.latest_env()
        nvcc = ((env.get("toolchain") or {}).get("nvcc")) if env else None
        try:
            kbuild._torch_cuda()
        except kbuild.NoCudaError as exc:
            return StepResult("skipped", message=str(exc))
        try:
            info = kbuild.build_extension(progress=context.progress, nvcc=nvcc,
                                          capability=kbuild._capability_from_env(env),
                                          force=context.options.force)
        except kbuild.BuildError as exc:
            if exc.log_path is not None and Path(exc.log_path).is_file():
                context.artifact(exc.log_path, "log")
            return StepResult("failed", message=exc.first_error or str(exc),
                              summary=BuildSummary(log=str(exc.log_path) if exc.log_path else None))
        if info.log_path and Path(info.log_path).is_file():
            context.artifact(info.log_path, "log")
        if not info.cached and info.build_time_s is not None:
            context.metric("build_time_s", info.build_time_s, unit="s")
        context.metric("load_time_s", info.load_time_s, unit="s")
        for name, row in sorted(info.kernels.items()):
            context.metric("registers", row.get("registers"), unit="count", subject=name)
            context.metric("smem_bytes", row.get("smem_bytes"), unit="bytes", subject=name)
            context.metric("spill_store_bytes", row.get("spill_store_bytes"), unit="bytes",
                           subject=name)
            context.metric("spill_load_bytes", row.get("spill_load_bytes"), unit="bytes", subject=name)
        spills = sorted(n for n, r in info.kernels.items()
                        if (r.get("spill_store_bytes") or 0) + (r.get("spill_load_bytes") or 0) > 0)
        serialized = sorted(n for n, r in info.kernels.items() if r.get("wgmma_serialized"))
        regs = [r["registers"] for r in info.kernels.values() if r.get("registers") is not None]
        how = "cached build loaded" if info.cached else f"built in {info.build_time_s:.1f} s"
        detail = f"{len(info.kernels)} kernels for {info.arch}"
        if regs:
            detail += f", {min(regs)}-{max(regs)} registers"
        if spills:
            detail += f", SPILLS in {', '.join(spills)}"
        if serialized:
            # ptxas made every wgmma of these kernels wait for the one before (a large slowdown)
            detail += f", WGMMA SERIALIZED in {', '.join(serialized)}"
            for name in serialized:
                context.progress.note(f"{name}: ptxas serialized its wgmma "
                                      f"({info.kernels[name]['wgmma_serialized']})")
        context.progress.note(f"library {info.library}")
        summary = BuildSummary(nvcc_version=info.nvcc_version, flags=info.flags, cached=info.cached,
                               key=info.key, library=info.library, arch=info.arch,
                               load_time_s=info.load_time_s, build_time_s=info.build_time_s,
                               sources_sha256=info.sources_sha256 or None,
                               sources_files=info.sources_files or None)
        return StepResult("passed", message=f"{how} in {info.load_time_s:.2f} s: {detail}"
                          if info.cached else f"{how}: {detail}", summary=summary)
