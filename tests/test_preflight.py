"""Preflight checks, ``sessionkit doctor`` and ``sessionkit step preflight``.

GPU-only situations (a Hopper GPU, throttling, NVML missing, an nvcc off the PATH...) are played by a
fake :class:`~sessionkit.preflight.Probe`; the real probe runs in the CLI tests on whatever machine the
tests run on.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionkit import preflight
from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.preflight import (Check, Probe, format_report,
                                  parse_compiler_version, run_checks)
from sessionkit.steps.preflight import PreflightStep
from sessionkit.nvml import REASON_GPU_IDLE, REASON_HW_SLOWDOWN, REASON_SW_THERMAL, NvmlUnavailable
from sessionkit.toolchain import Found

CUDA13 = "/opt/fake/cuda-13.0"
GCC13 = "gcc (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0\nCopyright (C) 2023 Free Software Foundation, Inc.\n"


def fake_torch(version="2.11.0+cu130", cuda="13.0", available=True, devices=1):
    def props(i):
        return types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0,
                                     total_memory=80 * 1024 ** 3, uuid=f"uuid-{i}")

    return types.SimpleNamespace(
        __version__=version,
        version=types.SimpleNamespace(cuda=cuda, hip=None),
        cuda=types.SimpleNamespace(is_available=lambda: available,
                                   device_count=lambda: devices if available else 0,
                                   get_device_properties=props),
        backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 91300)),
    )


def h100(index=0, **over):
    gpu = {"index": index, "name": "NVIDIA H100 80GB HBM3", "cc": "9.0", "memory_mib": 81559,
           "memory_used_mib": 1, "uuid": f"GPU-aaaa-{index}", "sm_clock_mhz": 1980,
           "sm_clock_max_mhz": 1980, "mem_clock_mhz": 2619, "temp_c": 31, "power_w": 71.5,
           "clock_reasons": REASON_GPU_IDLE, "processes": []}
    gpu.update(over)
    return gpu


class FakeProbe(Probe):
    """A healthy H100 machine with torch 2.11+cu130, nvcc 13.0 on PATH and gcc 13.3, unless told."""

    def __init__(self, tmp_path: Path, **over):
        self.tmp = Path(tmp_path)
        self.environ = {"PATH": f"/usr/bin:{CUDA13}/bin", "HOME": "/home/u"}
        self.tools = {"gcc": "/usr/bin/gcc", "c++": "/usr/bin/c++", "ninja": "/usr/bin/ninja"}
        self.nvcc = Found(f"{CUDA13}/bin/nvcc", True, "PATH")
        self.outputs = {
            f"{CUDA13}/bin/nvcc": (0, "nvcc: NVIDIA (R) Cuda compiler driver\n"
                                      "Cuda compilation tools, release 13.0, V13.0.88\n"),
            "/usr/bin/gcc": (0, GCC13),
            "/usr/bin/c++": (0, GCC13.replace("gcc", "c++", 1)),
            "/usr/bin/ninja": (0, "1.11.1\n"),
            "git": (0, "0123456789abcdef0123456789abcdef01234567\n"),
        }
        self.files = {f"{CUDA13}/include/cuda_runtime.h": ""}
        self.globs: dict[str, list[str]] = {}
        self.torch = fake_torch()
        self.nvml_data = {"driver": "580.65.06", "cuda_driver": "13.0", "physical_gpus": 1,
                          "gpus": [h100()]}
        self.modules = {"pip": "24.0", "pybind11": "2.13.6"}
        self.free_gib = 200.0
        self.calls: list[str] = []
        for key, value in over.items():
            setattr(self, key, value)

    def env(self):
        return self.environ

    def which(self, name):
        return self.tools.get(name)

    def find_cuda_tool(self, name):
        return self.nvcc if name == "nvcc" else Found(None, False, "nowhere")

    def _ours(self, path) -> bool:
        return str(path).startswith(str(self.tmp))

    def glob(self, pattern):
        if self._ours(pattern):
            return super().glob(pattern)
        return self.globs.get(pattern, [])

    def is_file(self, path):
        return str(path) in self.files or (self._ours(path) and Path(path).is_file())

    def read_text(self, path, limit=1 << 20):
        if str(path) in self.files:
            return self.files[str(path)]
        if self._ours(path):
            return super().read_text(path, limit)
        raise FileNotFoundError(path)

    def run(self, argv, *, timeout=10.0, cwd=None):
        self.calls.append(argv[0])
        if argv[0] == "git":
            return (0, "") if argv[1] == "status" else self.outputs["git"]
        return self.outputs.get(argv[0], (-1, f"{argv[0]}: No such file or directory"))

    def import_torch(self):
        self.calls.append("import torch")
        if isinstance(self.torch, Exception):
            raise self.torch
        return self.torch

    def nvml(self):
        if isinstance(self.nvml_data, Exception):
            raise self.nvml_data
        return self.nvml_data

    def disk_usage(self, path):
        return types.SimpleNamespace(total=int(500 * 1024 ** 3), used=0,
                                     free=int(self.free_gib * 1024 ** 3))

    def module_version(self, name, dist=None):
        return self.modules.get(name)

    def python(self):
        return {"version": "3.12.3", "executable": "/usr/bin/python3", "implementation": "CPython"}

    def cache_root(self):
        return self.tmp / "cache"

    def cwd(self):
        return str(self.tmp)

    def hostname(self):
        return "gpu-host"

    def platform(self):
        return "Linux-x86_64"


def by_name(report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def write_manifest(root: Path, key: str, **over) -> Path:
    folder = root / key
    folder.mkdir(parents=True)
    lib = folder / "flash_fwd.so"
    lib.write_bytes(b"\x7fELF")
    data = {"key": key, "torch": "2.11.0+cu130", "torch_cuda": "13.0", "python": "3.12.3",
            "arch": "sm_90a", "flags": ["-O3"], "sources_sha256": "ab" * 32, "nvcc": "13.0",
            "built_at": "2025-01-01T00:00:00+00:00", "library": str(lib)}
    data.update(over)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


# --------------------------------------------------------------------------------------------
# The checks, one situation at a time


def test_healthy_hopper_machine_passes_every_check(tmp_path):
    probe = FakeProbe(tmp_path)
    report = run_checks(probe)
    bad = [(c.name, c.finding) for c in report.checks if c.status != "pass"]
    assert bad == []
    assert report.failed == report.warned == 0 and report.passed == len(preflight.CHECKS)
    checks = by_name(report)
    assert "NVIDIA H100 80GB HBM3 (cc 9.0, 80 GiB)" in checks["gpu"].finding
    assert "compute_90a,code=sm_90a" in checks["arch"].finding
    assert "up to 15" in checks["host_compiler"].finding  # NVIDIA's table for nvcc 13.0
    # torch imported once, nvcc run once, whatever the number of checks that use them
    assert probe.calls.count("import torch") == 1
    assert probe.calls.count(f"{CUDA13}/bin/nvcc") == 1

    snap = report.snapshot
    assert snap["torch"] == {"version": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True,
                             "device_count": 1, "cudnn": 91300}
    assert snap["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "cc": "9.0",
                             "memory_mib": 81559, "uuid": "GPU-aaaa-0"}]
    assert snap["driver"] == "580.65.06"
    tc = snap["toolchain"]
    assert (tc["nvcc"], tc["nvcc_version"], tc["nvcc_on_path"], tc["cuda_home"]) == (
        f"{CUDA13}/bin/nvcc", "13.0", True, CUDA13)
    assert (tc["arch"], tc["arch_flags"]) == ("sm_90a", ["-gencode=arch=compute_90a,code=sm_90a"])
    assert (tc["host_compiler"], tc["host_compiler_version"], tc["ninja"]) == (
        "/usr/bin/gcc", "13.3.0", "/usr/bin/ninja")
    assert snap["git"] == {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}
    assert snap["state"]["gpus"][0]["sm_clock_mhz"] == 1980
    assert snap["python"]["version"] == "3.12.3"


def test_nvcc_major_mismatch_fails_and_points_at_a_matching_toolkit(tmp_path):
    probe = FakeProbe(tmp_path)
    probe.outputs[f"{CUDA13}/bin/nvcc"] = (0, "Cuda compilation tools, release 12.8, V12.8.93")
    probe.globs["/usr/local/cuda-*/bin/nvcc"] = ["/usr/local/cuda-12.8/bin/nvcc",
                                                 "/usr/local/cuda-13.0/bin/nvcc"]
    check = by_name(run_checks(probe))["nvcc_torch"]
    assert check.status == "fail"
    assert "nvcc 12.8 vs torch built for CUDA 13.0" in check.finding
    assert "export CUDA_HOME=/usr/local/cuda-13.0" in check.fix

    probe = FakeProbe(tmp_path)
    probe.outputs[f"{CUDA13}/bin/nvcc"] = (0, "Cuda compilation tools, release 13.1, V13.1.1")
    check = by_name(run_checks(probe))["nvcc_torch"]
    assert check.status == "warn" and "same major version" in check.finding


def test_nvcc_off_the_path_warns_and_later_steps_get_it(tmp_path):
    probe = FakeProbe(tmp_path, nvcc=Found(f"{CUDA13}/bin/nvcc", False, CUDA13))
    probe.environ["PATH"] = "/usr/bin"
    report = run_checks(probe)
    check = by_name(report)["nvcc"]
    assert check.status == "warn"
    assert "not on PATH" in check.finding and "later steps of this session use it" in check.finding
    assert check.fix == f"export PATH={CUDA13}/bin:$PATH to use it outside sessionkit too"
    tc = report.snapshot["toolchain"]
    assert tc["nvcc"] == f"{CUDA13}/bin/nvcc" and tc["nvcc_on_path"] is False
    assert tc["cuda_home"] == CUDA13


def test_missing_nvcc_fails(tmp_path):
    probe = FakeProbe(tmp_path, nvcc=Found(None, False, "nowhere"))
    checks = by_name(run_checks(probe))
    assert checks["nvcc"].status == "fail" and "CUDA 13.0 toolkit" in checks["nvcc"].fix
    assert checks["nvcc_torch"].status == "warn"
    assert checks["host_compiler"].status == "warn"


def test_nvcc_wrapper_script_resolves_to_its_toolkit(tmp_path):
    probe = FakeProbe(tmp_path, nvcc=Found("/usr/local/bin/nvcc", True, "PATH"))
    probe.outputs["/usr/local/bin/nvcc"] = probe.outputs[f"{CUDA13}/bin/nvcc"]
    probe.files["/usr/local/bin/nvcc"] = f'#!/bin/sh\nexec {CUDA13}/bin/nvcc "$@"\n'
    report = run_checks(probe)
    assert report.snapshot["toolchain"]["cuda_home"] == CUDA13


def test_stale_build_warns_will_rebuild(tmp_path):
    probe = FakeProbe(tmp_path)
    write_manifest(probe.cache_root(), "old", torch="2.10.0+cu128", torch_cuda="12.8")
    check = by_name(run_checks(probe))["build_cache"]
    assert check.status == "warn"
    assert "torch 2.10.0+cu128 -> 2.11.0+cu130" in check.finding
    assert "CUDA 12.8 -> 13.0" in check.finding
    assert "will rebuild" in check.finding

    write_manifest(probe.cache_root(), "current")
    check = by_name(run_checks(probe))["build_cache"]
    assert check.status == "pass" and "1 cached build(s)" in check.finding
    assert "1 older build(s) will not be used" in check.finding


@pytest.mark.parametrize("over, reason", [
    ({"python": "3.11.9"}, "Python 3.11.9 -> 3.12.3"),
    ({"arch": "sm_80"}, "arch sm_80 -> sm_90a"),
    ({"library": "/nowhere/x.so"}, "library /nowhere/x.so missing"),
])
def test_stale_build_reasons(tmp_path, over, reason):
    probe = FakeProbe(tmp_path)
    write_manifest(probe.cache_root(), "k", **over)
    check = by_name(run_checks(probe))["build_cache"]
    assert check.status == "warn" and reason in check.finding


def test_unreadable_manifest_warns_instead_of_raising(tmp_path):
    probe = FakeProbe(tmp_path)
    folder = probe.cache_root() / "broken"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{not json")
    check = by_name(run_checks(probe))["build_cache"]
    assert check.status == "warn" and "unreadable manifest" in check.finding


def test_nvml_missing_turns_telemetry_off_and_uses_torch_for_the_gpu(tmp_path):
    probe = FakeProbe(tmp_path, nvml_data=NvmlUnavailable("NVML did not initialise (Driver Not Loaded)"))
    report = run_checks(probe)
    checks = by_name(report)
    assert checks["nvml"].status == "warn"
    assert "telemetry (power, clocks, throttling) will be off" in checks["nvml"].finding
    assert "Driver Not Loaded" in checks["nvml"].finding
    assert checks["clocks"].status == "warn" and checks["gpu_processes"].status == "warn"
    assert checks["gpu"].status == "pass" and "cc 9.0" in checks["gpu"].finding  # from torch
    assert checks["arch"].status == "pass"
    assert report.snapshot["nvml"] is False


def test_throttling_warns_but_idle_does_not(tmp_path):
    hot = h100(clock_reasons=REASON_SW_THERMAL | REASON_HW_SLOWDOWN, sm_clock_mhz=1200, temp_c=88)
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [hot]}
    check = by_name(run_checks(probe))["clocks"]
    assert check.status == "warn"
    assert "sw_thermal" in check.finding and "hw_slowdown" in check.finding
    assert "1200/1980 MHz" in check.finding and "88 C" in check.finding
    assert "before timing" in check.fix

    idle = FakeProbe(tmp_path)  # REASON_GPU_IDLE alone is not throttling
    check = by_name(run_checks(idle))["clocks"]
    assert check.status == "pass" and "idle" in check.finding


def test_other_processes_on_the_gpu_warn(tmp_path):
    busy = h100(processes=[{"pid": 4242, "used_mib": 30000, "name": "python3"}])
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [busy]}
    check = by_name(run_checks(probe))["gpu_processes"]
    assert check.status == "warn" and "pid 4242 python3 30000 MiB on GPU 0" in check.finding


def test_old_driver_for_torch_cuda_fails(tmp_path):
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "driver": "570.86.15", "cuda_driver": "12.8"}
    check = by_name(run_checks(probe))["driver"]
    assert check.status == "fail" and "supports CUDA up to 12.8" in check.finding
    assert "580.65.06" in check.fix


@pytest.mark.parametrize("version, header, status, limit", [
    ("16.1.0", None, "fail", "up to 15"),  # NVIDIA's table for nvcc 13.0
    ("14.2.0", "#if __GNUC__ > 13\n#error", "fail", "up to 13"),  # the toolkit's own header wins
    ("13.3.0", "#if __GNUC__ > 13\n#error", "pass", "up to 13"),
    ("8.5.0", None, "fail", "gcc 9 or newer"),
])
def test_host_compiler_against_nvcc(tmp_path, version, header, status, limit):
    probe = FakeProbe(tmp_path)
    probe.outputs["/usr/bin/gcc"] = (0, f"gcc (GCC) {version} 20240912 (Red Hat {version}-3)\n")
    if header:
        probe.files[f"{CUDA13}/include/crt/host_config.h"] = header
    check = by_name(run_checks(probe))["host_compiler"]
    assert check.status == status and limit in check.finding
    if status == "fail":
        assert "CC" in check.fix


def test_cc_environment_variable_picks_the_host_compiler(tmp_path):
    probe = FakeProbe(tmp_path)
    probe.environ["CC"] = "/opt/gcc-12/bin/gcc"
    probe.outputs["/opt/gcc-12/bin/gcc"] = (0, "gcc (GCC) 12.4.0\n")
    check = by_name(run_checks(probe))["host_compiler"]
    assert check.status == "pass" and "gcc 12.4.0 at /opt/gcc-12/bin/gcc ($CC)" in check.finding


def test_torch_missing_or_cpu_only_fails_with_a_fix(tmp_path):
    probe = FakeProbe(tmp_path, torch=ModuleNotFoundError("No module named 'torch'"))
    report = run_checks(probe)
    checks = by_name(report)
    assert checks["torch"].status == "fail" and "No module named 'torch'" in checks["torch"].finding
    assert "pip install torch" in checks["torch"].fix
    assert checks["cuda_device"].status == "fail"
    assert report.snapshot["torch"]["version"] is None

    probe = FakeProbe(tmp_path, torch=fake_torch("2.13.0+cpu", cuda=None, available=False))
    checks = by_name(run_checks(probe))
    assert "CPU-only build" in checks["torch"].finding
    assert checks["cuda_device"].status == "fail" and "CPU-only" in checks["cuda_device"].finding


def test_hidden_gpus_are_named_in_the_fix(tmp_path):
    probe = FakeProbe(tmp_path, torch=fake_torch(available=False))
    probe.environ["CUDA_VISIBLE_DEVICES"] = ""
    probe.nvml_data = {**probe.nvml_data, "gpus": []}
    check = by_name(run_checks(probe))["cuda_device"]
    assert check.status == "fail" and "CUDA_VISIBLE_DEVICES" in check.fix


def test_non_hopper_gpu_gets_its_own_arch_with_a_warning(tmp_path):
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [h100(name="NVIDIA A100-SXM4-80GB", cc="8.0")]}
    report = run_checks(probe)
    check = by_name(report)["arch"]
    assert check.status == "warn" and "-gencode=arch=compute_80,code=sm_80" in check.finding
    assert report.snapshot["toolchain"]["arch"] == "sm_80"


def test_arch_check_names_the_kernel_family_each_gpu_runs(tmp_path):
    """cc 9.0 runs the sm90 family (TMA + wgmma) and every other GPU from 8.0 the sm80 family
    (mma.sync), with the head dims of the shipped instantiations; neither is promised where it
    does not run."""
    from sessionkit.kernels.api import head_dims_by_family

    dims = {fam: ", ".join(map(str, d)) for fam, d in head_dims_by_family().items()}
    hopper = by_name(run_checks(FakeProbe(tmp_path)))["arch"]
    assert hopper.status == "pass"
    assert f"calls run the sm90 kernels (TMA + wgmma, head dims {dims['sm90']})" in hopper.finding
    assert f"run the sm80 kernels (mma.sync, head dims {dims['sm80']})" in hopper.finding

    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [h100(name="NVIDIA L40S", cc="8.9")]}
    other = by_name(run_checks(probe))["arch"]
    assert other.status == "warn" and "calls run the sm80 kernels (mma.sync" in other.finding
    assert "calls run the sm90" not in other.finding and "need cc 9.0" in other.finding
    assert "sm_89" in other.finding and "H100 or H200" in other.fix


def test_arch_check_fails_below_ampere_and_names_a_forced_family(tmp_path):
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [h100(name="Tesla T4", cc="7.5")]}
    old = by_name(run_checks(probe))["arch"]
    assert old.status == "fail" and "cc 7.5 is older than 8.0" in old.finding
    assert "cc 8.0+" in old.fix

    probe = FakeProbe(tmp_path)
    probe.environ["SESSIONKIT_KERNEL_FAMILY"] = "sm80"
    forced = by_name(run_checks(probe))["arch"]
    assert forced.status == "warn" and "SESSIONKIT_KERNEL_FAMILY=sm80" in forced.finding
    assert "unset SESSIONKIT_KERNEL_FAMILY" in forced.fix


@pytest.mark.parametrize("free, status", [(0.5, "fail"), (3.0, "warn"), (50.0, "pass")])
def test_free_disk_where_the_build_cache_lives(tmp_path, free, status):
    check = by_name(run_checks(FakeProbe(tmp_path, free_gib=free)))["disk"]
    assert check.status == status and f"{free:.1f} GiB free" in check.finding


def test_a_check_that_raises_becomes_a_fail_and_the_rest_still_run(tmp_path, monkeypatch):
    def boom(facts):
        raise RuntimeError("probe exploded\nsecond line")

    checks = list(preflight.CHECKS)
    checks[1] = ("pip", boom)
    monkeypatch.setattr(preflight.checks, "CHECKS", checks)
    report = run_checks(FakeProbe(tmp_path))
    check = by_name(report)["pip"]
    assert check.status == "fail"
    assert check.finding == "the check raised RuntimeError: probe exploded second line"
    assert check.fix
    assert len(report.checks) == len(preflight.CHECKS) and report.failed == 1


def test_a_probe_that_raises_everywhere_still_gives_a_report(tmp_path):
    class Broken(FakeProbe):
        def run(self, *a, **k):
            raise OSError("no processes left")

        def disk_usage(self, path):
            raise OSError("stat failed")

    report = run_checks(Broken(tmp_path))
    checks = by_name(report)
    assert checks["nvcc"].status == "fail" and "no processes left" in checks["nvcc"].finding
    assert checks["disk"].status == "fail" and "stat failed" in checks["disk"].finding
    assert report.snapshot["git"] == {"commit": None, "dirty": None}


def test_secret_in_env_never_reaches_output_or_db(tmp_path, db, session, capsys):
    secret = "hf_Zq8sUPERsecretVALUE123"
    probe = FakeProbe(tmp_path)
    probe.environ.update({
        "HF_TOKEN": secret,
        "NVIDIA_API_KEY": "nvapi-" + secret,
        "TORCH_HOME": f"/data/{secret}/torch",  # a relevant variable that carries the secret
        "PYTORCH_DB_PASSWORD": "hunter2-long",
        "CUDA_CACHE_PATH": f"https://user:{secret}@cache.example/x",
    })
    probe.nvcc = Found(f"/tmp/{secret}/bin/nvcc", False, "CUDA_HOME")  # it even reaches a finding
    probe.outputs[f"/tmp/{secret}/bin/nvcc"] = probe.outputs[f"{CUDA13}/bin/nvcc"]

    step_row = _run_step(db, session, probe)
    out = capsys.readouterr()
    report = run_checks(probe)
    text = format_report(report) + json.dumps(report.to_dict())
    dump = "\n".join(db.conn.iterdump())
    for where in (out.out, out.err, text, dump):
        assert secret not in where
        assert "hunter2-long" not in where
    env = report.snapshot["env"]
    assert env["HF_TOKEN"] == env["NVIDIA_API_KEY"] == env["PYTORCH_DB_PASSWORD"] == "<redacted>"
    assert env["TORCH_HOME"] == "/data/<redacted>/torch"
    assert "<redacted>" in by_name(report)["nvcc"].finding
    assert step_row["status"] == "passed"  # an off-PATH nvcc is a warning only


# --------------------------------------------------------------------------------------------
# The step


def _run_step(db, session, probe):
    from sessionkit.runner import run_step

    step = PreflightStep()
    step.probe_factory = lambda: probe
    return run_step(db, session, step, {})


def test_step_records_snapshot_metrics_and_summary(tmp_path, db, session):
    probe = FakeProbe(tmp_path)
    probe.nvml_data = {**probe.nvml_data, "gpus": [h100(clock_reasons=REASON_SW_THERMAL)]}
    row = _run_step(db, session, probe)
    assert row["status"] == "passed"
    summary = json.loads(row["summary"]) if isinstance(row["summary"], str) else row["summary"]
    assert (summary["failed"], summary["warned"]) == (0, 1)
    assert {c["name"] for c in summary["checks"]} == {name for name, _ in preflight.CHECKS}
    assert set(summary["checks"][0]) == {"name", "status", "finding", "fix"}
    metrics = {r["key"]: r["value"] for r in db.query(
        "SELECT key, value FROM metrics WHERE step_id = ? AND key LIKE 'checks_%'", [row["id"]])}
    assert metrics == {"checks_passed": len(preflight.CHECKS) - 1, "checks_warned": 1,
                       "checks_failed": 0}
    snap = list(db.query("SELECT * FROM env_snapshots WHERE step_id = ?", [row["id"]]))
    assert len(snap) == 1
    s = snap[0]
    assert (s["session_id"], s["torch_version"], s["torch_cuda"], s["nvcc_version"]) == (
        session["id"], "2.11.0+cu130", "13.0", "13.0")
    assert (s["gpu_name"], s["gpu_cc"], s["driver_version"], s["python_version"]) == (
        "NVIDIA H100 80GB HBM3", "9.0", "580.65.06", "3.12.3")
    assert s["git_commit"] == "0123456789abcdef0123456789abcdef01234567"

    from sessionkit.steps import StepContext

    ctx = StepContext(db=db, session=session, step_id=row["id"], seq=row["seq"], progress=None,
                      options={}, workdir=tmp_path)
    assert ctx.latest_env()["toolchain"]["nvcc"] == f"{CUDA13}/bin/nvcc"


def test_step_fails_when_a_check_fails(tmp_path, db, session):
    probe = FakeProbe(tmp_path, torch=fake_torch("2.13.0+cpu", cuda=None, available=False))
    row = _run_step(db, session, probe)
    assert row["status"] == "failed" and row["exit_code"] == 1
    assert "failed (torch, cuda_device" in row["message"]


def test_cli_step_preflight_exit_status(tmp_path, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(cli, ["start", "--objective", "preflight test"])
    assert r.exit_code == 0, r.output
    probe = FakeProbe(tmp_path, torch=fake_torch("2.13.0+cpu", cuda=None, available=False))
    monkeypatch.setattr(PreflightStep, "probe_factory", staticmethod(lambda: probe))
    r = runner.invoke(cli, ["step", "preflight"])
    assert r.exit_code == 1
    assert "FAIL  torch" in r.output and "fix: pip install torch" in r.output
    assert "Traceback" not in r.output

    monkeypatch.setattr(PreflightStep, "probe_factory", staticmethod(lambda: FakeProbe(tmp_path)))
    r = runner.invoke(cli, ["step", "preflight"])
    assert r.exit_code == 0, r.output
    assert f"{len(preflight.CHECKS)} passed, 0 warnings, 0 failed" in r.output


# --------------------------------------------------------------------------------------------
# doctor on the real machine


def test_doctor_real_checks_text_and_json():
    runner = CliRunner()
    r = runner.invoke(cli, ["doctor", "--json"])
    data = json.loads(r.output)
    assert [c["name"] for c in data["checks"]] == [name for name, _ in preflight.CHECKS]
    for c in data["checks"]:
        assert c["status"] in ("pass", "warn", "fail") and c["finding"]
        assert (c["fix"] is None) == (c["status"] == "pass")
    assert data["failed"] == sum(c["status"] == "fail" for c in data["checks"])
    assert r.exit_code == (1 if data["failed"] else 0)
    assert {"python", "torch", "gpus", "driver", "toolchain", "env", "git"} <= set(data["snapshot"])

    r = runner.invoke(cli, ["doctor"])
    lines = r.output.strip().splitlines()
    assert lines[-1] == preflight.summary_line(types.SimpleNamespace(
        passed=data["passed"], warned=data["warned"], failed=data["failed"]))
    assert lines[0].split()[1] == "python"
    assert "Traceback" not in r.output


def test_doctor_without_cuda_fails_with_fix_lines(monkeypatch):
    """The real checks, with torch seen as a CPU-only build: a fail, exit 1, fix lines shown."""
    monkeypatch.setattr(Probe, "import_torch", lambda self: fake_torch("2.13.0+cpu", cuda=None,
                                                                       available=False))
    r = CliRunner().invoke(cli, ["doctor"])
    assert r.exit_code == 1
    assert "FAIL  cuda_device    torch.cuda.is_available() is False" in r.output
    cuda_line = r.output.splitlines().index(next(
        line for line in r.output.splitlines() if line.startswith("FAIL  cuda_device")))
    assert r.output.splitlines()[cuda_line + 1].lstrip().startswith("fix: ")


def test_doctor_needs_no_database(tmp_path, monkeypatch):
    monkeypatch.setenv("SESSIONKIT_DB", str(tmp_path / "nowhere" / "x.db"))
    r = CliRunner().invoke(cli, ["doctor", "--json"])
    assert "checks" in json.loads(r.output)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("output, expected", [
    (GCC13, ("gcc", "13.3.0")),
    ("gcc (Debian 12.2.0-14+deb12u1) 12.2.0\n", ("gcc", "12.2.0")),
    ("gcc (GCC) 14.2.1 20240912 (Red Hat 14.2.1-3)\n", ("gcc", "14.2.1")),
    ("Ubuntu clang version 18.1.3 (1ubuntu1)\nTarget: x86_64-pc-linux-gnu\n", ("clang", "18.1.3")),
    ("", None),
    ("icx: command not found", None),
])
def test_parse_compiler_version(output, expected):
    assert parse_compiler_version(output) == expected


@pytest.mark.gpu
def test_doctor_passes_on_a_gpu_machine():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = run_checks()
    failed = [(c.name, c.finding) for c in report.checks if c.status == "fail"]
    assert failed == []
    checks = by_name(report)
    major, minor = torch.cuda.get_device_capability(0)
    assert f"cc {major}.{minor}" in checks["gpu"].finding
    assert report.snapshot["toolchain"]["arch"] == ("sm_90a" if (major, minor) == (9, 0)
                                                    else f"sm_{major}{minor}")
