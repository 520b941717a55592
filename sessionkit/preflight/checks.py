"""The preflight checks: each reads :class:`~sessionkit.preflight.facts.Facts` and returns
``(status, finding, fix)``, a pass, a warning or a failure, with one fix line for anything but a pass.
A check never raises out of :func:`run_check`: an exception inside one becomes a ``fail`` with the
exception's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .facts import Facts, _one_line, _version_tuple

STATUSES = ("pass", "warn", "fail")

MIN_PYTHON = (3, 11)  # pyproject's requires-python

# Highest GCC major version each nvcc release accepts: the ``#if __GNUC__ > N`` guard in that release's
# include/crt/host_config.h (the same figures as the host-compiler table in NVIDIA's CUDA installation
# guide for Linux). Keys are the first nvcc (major, minor) with that limit. When the toolkit's own
# host_config.h can be read, its guard wins over this table.
NVCC_MAX_GCC = [
    ((11, 0), 9),
    ((11, 1), 10),
    ((11, 4), 11),
    ((12, 0), 12),
    ((12, 4), 13),
    ((12, 8), 14),
    ((13, 0), 15),
]
# torch's C++ extensions are C++17 and torch documents GCC 9 as its oldest supported compiler.
MIN_GCC = 9

# Oldest nvcc that can compile for a compute capability (CUDA release notes, "new architecture
# support"). Hopper gets sm_90a (wgmma, setmaxnreg), which needs CUDA 12.0.
ARCH_MIN_NVCC = {
    (8, 0): (11, 0), (8, 6): (11, 1), (8, 7): (11, 4), (8, 9): (11, 8), (9, 0): (12, 0),
    (10, 0): (12, 8), (10, 3): (12, 9), (12, 0): (12, 8),
}
# The kernel's oldest family (sm80: cp.async, bf16 mma.sync) needs Ampere.
MIN_KERNEL_CC = (8, 0)

# Oldest driver branch per CUDA major version (CUDA toolkit release notes, "minimum required driver
# version for CUDA minor version compatibility"), only for the fix line.
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

DISK_WARN_GIB = 5.0  # a few builds, ncu reports and logs fit with room to spare
DISK_FAIL_GIB = 1.0  # one extension build with its object files needs a few hundred MiB


def max_gcc_for(nvcc: tuple[int, int]) -> int | None:
    best = None
    for since, limit in NVCC_MAX_GCC:
        if nvcc >= since:
            best = limit
    return best

@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail
    finding: str
    fix: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"bad check status {self.status!r}")
        self.finding = _one_line(self.finding)
        self.fix = _one_line(self.fix) if self.fix else None
        if self.status != "pass" and not self.fix:
            raise ValueError(f"check {self.name!r} is {self.status} without a fix line")


def ok(finding: str):
    return "pass", finding, None


def warn(finding: str, fix: str):
    return "warn", finding, fix


def fail(finding: str, fix: str):
    return "fail", finding, fix


CUDA_WHEEL_HINT = "pip install torch --index-url https://download.pytorch.org/whl/cu130 (pick the CUDA build for your driver)"


def check_python(f: Facts):
    py = f.get("python")
    v = _version_tuple(py["version"], 3)
    text = f"Python {py['version']} ({py['implementation']}) at {py['executable']}"
    if v[:2] < MIN_PYTHON:
        return fail(f"{text}: sessionkit needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer",
                    f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ (e.g. a venv made with python3.12)")
    return ok(text)


def check_pip(f: Facts):
    version = f.get("packages").get("pip")
    if version is None:
        return warn("the pip module is missing: 'python3 -m pip' will not work",
                    "python3 -m ensurepip --upgrade")
    return ok(f"pip {version or '(unknown version)'} importable (python3 -m pip works)")


def check_torch(f: Facts):
    err = f.error("torch")
    if err:
        return fail(f"torch is not importable ({err})", CUDA_WHEEL_HINT)
    t = f.get("torch")
    if t.get("hip"):
        return fail(f"torch {t['version']} is a ROCm build (HIP {t['hip']}); the kernel is CUDA",
                    CUDA_WHEEL_HINT)
    if not t["cuda"]:
        return fail(f"torch {t['version']} is a CPU-only build (torch.version.cuda is None)",
                    CUDA_WHEEL_HINT)
    return ok(f"torch {t['version']}, built for CUDA {t['cuda']}")


def check_cuda_device(f: Facts):
    err = f.error("torch")
    if err:
        return fail("torch.cuda.is_available() not checked: torch does not import",
                    "see the torch check above")
    t = f.get("torch")
    if t["cuda_available"]:
        n = t["device_count"]
        return ok(f"torch.cuda.is_available() is True: {n} CUDA device{'s' if n != 1 else ''} visible")
    visible = f.get("env").get("CUDA_VISIBLE_DEVICES")
    finding = "torch.cuda.is_available() is False: no CUDA device"
    if not t["cuda"]:
        return fail(f"{finding} (torch is a CPU-only build)", CUDA_WHEEL_HINT)
    nvml = f.maybe("nvml") or {}
    if visible is not None and not f.maybe("gpus") and (visible.strip() in ("", "-1")
                                                         or nvml.get("physical_gpus")):
        return fail(f"{finding}: CUDA_VISIBLE_DEVICES={visible!r} hides the GPUs",
                    "unset CUDA_VISIBLE_DEVICES or set it to a GPU index (nvidia-smi -L lists them)")
    drv = f.get("driver")
    if drv["cuda"] and _version_tuple(drv["cuda"]) < _version_tuple(t["cuda"]):
        return fail(f"{finding}: the driver supports CUDA {drv['cuda']}, torch needs {t['cuda']}",
                    _driver_fix(t["cuda"]))
    return fail(f"{finding} visible to torch {t['version']}",
                "run on a machine with an NVIDIA GPU and driver ('nvidia-smi' must list the GPU)")


def check_gpu(f: Facts):
    gpus = f.get("gpus")
    if not gpus:
        why = f.error("nvml")
        return fail("no NVIDIA GPU found" + (f" ({why})" if why else ""),
                    "run on a machine with an NVIDIA GPU and driver ('nvidia-smi' must list the GPU)")
    g = gpus[0]
    mem = f"{g['memory_mib'] / 1024:.0f} GiB" if g.get("memory_mib") else "memory unknown"
    more = f"; {len(gpus)} GPUs visible, timing uses GPU {g['index']}" if len(gpus) > 1 else ""
    return ok(f"{g['name']} (cc {g.get('cc') or '?'}, {mem}){more}")


def _driver_fix(cuda: str) -> str:
    major = _version_tuple(cuda, 1)[0]
    floor = MIN_DRIVER_FOR_CUDA.get(major)
    hint = f" (driver {floor} or newer)" if floor else ""
    return f"install an NVIDIA driver that supports CUDA {cuda}{hint}, or a torch built for an older CUDA"


def check_driver(f: Facts):
    drv = f.get("driver")
    if not drv["version"]:
        return fail("no NVIDIA driver found (NVML and /proc/driver/nvidia/version are missing)",
                    "install the NVIDIA driver; 'nvidia-smi' must work")
    t = f.maybe("torch") or {}
    text = f"driver {drv['version']}"
    if not drv["cuda"]:
        return warn(f"{text}; the newest CUDA it supports is unknown (NVML unavailable)",
                    "see the nvml check below; NVML reports the driver's CUDA version")
    text += f", supports CUDA up to {drv['cuda']}"
    if t.get("cuda"):
        have, need = _version_tuple(drv["cuda"]), _version_tuple(t["cuda"])
        if have[0] < need[0]:
            return fail(f"{text}; torch is built for CUDA {t['cuda']} (a newer major version)",
                        _driver_fix(t["cuda"]))
        if have < need:
            return warn(f"{text}; torch is built for CUDA {t['cuda']} (runs by minor-version "
                        "compatibility; PTX built for the newer release will not load)",
                        _driver_fix(t["cuda"]))
        text += f" (torch needs {t['cuda']})"
    return ok(text)


def check_nvml(f: Facts):
    err = f.error("nvml")
    if err:
        return warn(f"NVML unavailable ({err}): telemetry (power, clocks, throttling) will be off",
                    "install nvidia-ml-py and the NVIDIA driver (libnvidia-ml.so must load)")
    n = f.get("nvml")
    return ok(f"NVML works: driver {n['driver']}, {len(n['gpus'])} GPU(s); telemetry on")


def _nvml_gpus(f: Facts, what: str):
    """(GPUs as NVML reads them, None), or (None, the warning that ``what`` was not checked)."""
    if f.error("nvml"):
        return None, warn(f"{what} not checked (NVML unavailable)", "see the nvml check above")
    gpus = f.get("gpus")
    if not gpus:
        return None, warn(f"{what} not checked: no GPU visible", "see the gpu check above")
    return gpus, None


def check_gpu_processes(f: Facts):
    gpus, unchecked = _nvml_gpus(f, "other processes on the GPU")
    if unchecked:
        return unchecked
    busy = [(g, p) for g in gpus for p in g.get("processes") or []]
    if not busy:
        return ok(f"no other processes on {_gpu_list(gpus)}")
    listed = ", ".join(f"pid {p['pid']}" + (f" {p['name']}" if p.get("name") else "")
                       + (f" {p['used_mib']} MiB" if p.get("used_mib") is not None else "")
                       + f" on GPU {g['index']}" for g, p in busy[:4])
    more = f" and {len(busy) - 4} more" if len(busy) > 4 else ""
    return warn(f"{len(busy)} other process{'es' if len(busy) != 1 else ''} use the GPU: {listed}{more}",
                "stop them, or pick an idle GPU with CUDA_VISIBLE_DEVICES, before timing anything")


def _gpu_list(gpus) -> str:
    return "GPU " + ", ".join(str(g["index"]) for g in gpus)


def check_clocks(f: Facts):
    from ..nvml import THROTTLE_MASK, reason_names

    gpus, unchecked = _nvml_gpus(f, "clocks and throttling")
    if unchecked:
        return unchecked
    parts, throttled = [], []
    for g in gpus:
        reasons = g.get("clock_reasons")
        names = reason_names(reasons)
        temp = f", {g['temp_c']} C" if g.get("temp_c") is not None else ""
        power = f", {g['power_w']:.0f} W" if g.get("power_w") is not None else ""
        sm = g.get("sm_clock_mhz")
        sm_max = g.get("sm_clock_max_mhz")
        clock = f"SM {sm if sm is not None else '?'}/{sm_max if sm_max is not None else '?'} MHz"
        label = f"GPU {g['index']}: {clock}{temp}{power}"
        if reasons is not None and int(reasons) & THROTTLE_MASK:
            bad = reason_names(int(reasons) & THROTTLE_MASK)
            throttled.append(f"{label}, held down by {'+'.join(bad)}")
        else:
            reason_text = "no clock limits" if reasons is not None and not names else (
                "reasons unknown" if reasons is None else "+".join(names))
            parts.append(f"{label} ({reason_text})")
    if throttled:
        return warn("throttling now: " + "; ".join(throttled),
                    "let the GPU cool and check power caps and other load (nvidia-smi -q -d "
                    "PERFORMANCE) before timing; timings taken now read low")
    return ok("; ".join(parts))


def check_nvcc(f: Facts):
    n = f.get("nvcc")
    t = f.maybe("torch") or {}
    want = f"CUDA {t['cuda']} toolkit" if t.get("cuda") else "the CUDA toolkit"
    if not n["path"]:
        return fail("nvcc not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda*/bin",
                    f"install {want} and put its bin/ on PATH, or set CUDA_HOME")
    if not n["version"]:
        return fail(f"nvcc at {n['path']} did not report a version: {n['output'] or 'no output'}",
                    "check that the CUDA toolkit is complete; 'nvcc --version' must print its release")
    text = f"nvcc {n['version']} at {n['path']} (CUDA_HOME {n['cuda_home']})"
    if not n["on_path"]:
        bindir = str(Path(n["path"]).parent)
        return warn(f"{text}: not on PATH, found in {n['where']}; the later steps of this session use it",
                    f"export PATH={bindir}:$PATH to use it outside sessionkit too")
    return ok(text)


def _other_toolkits(f: Facts, major: int) -> list[str]:
    homes = []
    for path in f.probe.glob("/usr/local/cuda-*/bin/nvcc"):
        home = str(Path(path).parent.parent)
        v = _version_tuple(home.rsplit("cuda-", 1)[-1])
        if v and v[0] == major:
            homes.append(home)
    return homes


def check_nvcc_torch(f: Facts):
    n = f.get("nvcc")
    t = f.maybe("torch") or {}
    if not n["version"]:
        return warn("not compared: no working nvcc", "see the nvcc check above")
    if not t.get("cuda"):
        return warn(f"nvcc {n['version']} not compared: torch has no CUDA version",
                    "see the torch check above")
    have, need = _version_tuple(n["version"]), _version_tuple(t["cuda"])
    if have[0] != need[0]:
        others = _other_toolkits(f, need[0])
        fix = (f"use the toolkit at {others[-1]}: export CUDA_HOME={others[-1]} PATH={others[-1]}/bin:$PATH"
               if others else f"install a CUDA {need[0]}.x toolkit and set CUDA_HOME to it, "
                              f"or a torch built for CUDA {have[0]}.x")
        return fail(f"nvcc {n['version']} vs torch built for CUDA {t['cuda']}: different major "
                    "versions, torch.utils.cpp_extension refuses to build", fix)
    if have != need:
        return warn(f"nvcc {n['version']} vs torch built for CUDA {t['cuda']}: same major version, "
                    "builds work (torch warns about the minor mismatch)",
                    f"for identical results use a CUDA {t['cuda']} toolkit")
    return ok(f"nvcc {n['version']} matches torch's CUDA {t['cuda']}")


def check_host_compiler(f: Facts):
    hc = f.get("host_compiler")
    cxx = f.maybe("cxx") or {}
    source = {"CC": "$CC", "NVCC_CCBIN": "$NVCC_CCBIN", "default": "default"}[hc["from"]]
    if not hc["path"]:
        return fail(f"host compiler {hc['command']!r} ({source}) not found",
                    "install g++ (e.g. apt-get install build-essential) or point CC at a gcc")
    if not hc["version"]:
        return fail(f"{hc['path']} ({source}) is not a gcc or clang I can read: {hc.get('output') or ''}",
                    "set CC to a gcc supported by nvcc")
    text = f"{hc['kind']} {hc['version']} at {hc['path']} ({source})"
    if cxx.get("version") and cxx.get("path") != hc["path"]:
        text += f"; .cpp files: {cxx['kind']} {cxx['version']}"
    n = f.maybe("nvcc") or {}
    nvcc_v = _version_tuple(n.get("version"))
    major = _version_tuple(hc["version"], 1)[0]
    if hc["kind"] == "gcc" and major < MIN_GCC:
        return fail(f"{text}: torch's C++17 extensions need gcc {MIN_GCC} or newer",
                    f"install gcc {MIN_GCC}+ and set CC/CXX to it")
    if not nvcc_v:
        return warn(f"{text}; not compared with nvcc (no working nvcc)", "see the nvcc check above")
    limits = f.maybe("host_limits") or {}
    if hc["kind"] == "gcc":
        limit = limits.get("gcc_max") or max_gcc_for(nvcc_v)
        where = "its host_config.h" if limits.get("gcc_max") else "NVIDIA's support table"
    else:
        limit = limits.get("clang_max")
        where = "its host_config.h"
    if limit is None:
        return warn(f"{text}; nvcc {n['version']}'s supported {hc['kind']} range is unknown here",
                    "check the CUDA installation guide's host compiler table for this release")
    if major > limit:
        return fail(f"{text}: nvcc {n['version']} accepts {hc['kind']} up to {limit} ({where})",
                    f"install {hc['kind']} {limit} or older and set CC to it "
                    f"(torch passes CC to nvcc as -ccbin)")
    return ok(f"{text}; nvcc {n['version']} accepts {hc['kind']} up to {limit}")


def check_ninja(f: Facts):
    n = f.get("ninja")
    if not n["path"]:
        return warn("ninja not found: torch.utils.cpp_extension.load cannot build",
                    "pip install ninja")
    return ok(f"ninja {n['version'] or '(version unknown)'} at {n['path']}")


def check_pybind11(f: Facts):
    version = f.get("packages").get("pybind11")
    if version is None:
        return warn("pybind11 is not installed", "pip install pybind11")
    return ok(f"pybind11 {version or '(unknown version)'}")


def _head_dims(family: str) -> str:
    """The head dims a kernel family has kernels for, as text ("?" when the sources are missing)."""
    try:
        from ..kernels.api import head_dims_by_family

        dims = head_dims_by_family().get(family)
    except Exception:  # noqa: BLE001 - no kernel sources shipped: say so, the build check will fail
        dims = None
    return ", ".join(str(d) for d in dims) if dims else "?"


def check_arch(f: Facts):
    """What the kernel runs on this GPU: the sm90 family (TMA + wgmma, built as sm_90a) on compute
    capability 9.0, the sm80 family (mma.sync, built for the GPU's own arch) on every other GPU from
    8.0 on (csrc/flash_api.cpp dispatches the same way); nothing older than 8.0."""
    a = f.get("arch")
    cc = f.get("capability")
    flags = " ".join(a["flags"])
    if cc is None:
        return warn(f"no GPU to read a compute capability from; builds target {a['arch']} ({flags})",
                    "run on the GPU that will time the kernel (an H100 for sm_90a)")
    sm90 = f"the sm90 kernels (TMA + wgmma, head dims {_head_dims('sm90')})"
    sm80 = f"the sm80 kernels (mma.sync, head dims {_head_dims('sm80')})"
    if cc < MIN_KERNEL_CC:
        return fail(f"cc {a['cc']} is older than {MIN_KERNEL_CC[0]}.{MIN_KERNEL_CC[1]}: {sm80} need "
                    f"cc {MIN_KERNEL_CC[0]}.{MIN_KERNEL_CC[1]} or newer (cp.async, bf16 mma) and {sm90} "
                    "cc 9.0", "run on an Ampere or newer GPU (cc 8.0+); an H100 or H200 (cc 9.0) "
                    "runs the sm90 kernels")
    n = f.maybe("nvcc") or {}
    nvcc_v = _version_tuple(n.get("version"))
    need = ARCH_MIN_NVCC.get(cc)
    if nvcc_v and need and nvcc_v < need:
        return fail(f"{a['arch']} for cc {a['cc']} needs nvcc {need[0]}.{need[1]}+, have {n['version']}",
                    f"install CUDA {need[0]}.{need[1]} or newer")
    if a["arch"] == "sm_90a":
        forced = f.get("env").get("SESSIONKIT_KERNEL_FAMILY")
        if forced == "sm80":
            return warn(f"cc {a['cc']} (Hopper), builds {flags}; SESSIONKIT_KERNEL_FAMILY=sm80 makes "
                        f"every call run {sm80} instead of {sm90}",
                        "unset SESSIONKIT_KERNEL_FAMILY to time the sm90 kernels")
        return ok(f"cc {a['cc']} (Hopper), builds {flags}: calls run {sm90}; inputs TMA cannot "
                  f"describe run {sm80}")
    return warn(f"cc {a['cc']}, builds {flags}: calls run {sm80}; {sm90} need cc 9.0",
                "to time the sm90 kernels, run on an H100 or H200 (cc 9.0)")


def _compare_manifest(m: dict, current: dict) -> list[str]:
    """What differs between a cached build's manifest and the current environment."""
    diffs = []
    for key, label in (("torch", "torch"), ("torch_cuda", "CUDA"), ("python", "Python"),
                       ("arch", "arch"), ("nvcc", "nvcc")):
        have, now = m.get(key), current.get(key)
        if now is None:
            continue
        if have is None:
            diffs.append(f"{label} unrecorded")
            continue
        a, b = str(have).split("."), str(now).split(".")
        n = min(len(a), len(b))
        if a[:n] != b[:n]:
            diffs.append(f"{label} {have} -> {now}")
    return diffs


def check_build_cache(f: Facts):
    cache = f.get("cache")
    root = cache["root"]
    if not cache["entries"]:
        return ok(f"no cached builds in {root}; the first build compiles from scratch")
    t = f.maybe("torch") or {}
    current = {"torch": t.get("version"), "torch_cuda": t.get("cuda"),
               "python": f.get("python")["version"], "arch": f.get("arch")["arch"],
               "nvcc": (f.maybe("nvcc") or {}).get("version")}
    fresh, stale = [], []
    for entry in cache["entries"]:
        if "error" in entry:
            stale.append((entry, [f"unreadable manifest ({entry['error']})"]))
            continue
        diffs = _compare_manifest(entry["manifest"], current)
        lib = entry["manifest"].get("library")
        if not diffs and lib and not f.probe.is_file(lib):
            diffs = [f"library {lib} missing"]
        (stale if diffs else fresh).append((entry, diffs))
    if fresh:
        extra = f"; {len(stale)} older build(s) will not be used" if stale else ""
        return ok(f"{len(fresh)} cached build(s) in {root} match this environment{extra}")
    first = stale[0][1]
    return warn(f"{len(stale)} cached build(s) in {root} were made for another environment "
                f"({', '.join(first)}): the build step will rebuild",
                f"nothing to do, the build rebuilds; delete old folders under {root} to free space")


def check_disk(f: Facts):
    d = f.get("disk")
    text = f"{d['free_gib']:.1f} GiB free of {d['total_gib']:.0f} GiB at {d['path']} (build cache)"
    if d["free_gib"] < DISK_FAIL_GIB:
        return fail(text, f"free at least {DISK_WARN_GIB:.0f} GiB there, or set SESSIONKIT_BUILD_DIR "
                          "to a roomier disk")
    if d["free_gib"] < DISK_WARN_GIB:
        return warn(text, f"free up to {DISK_WARN_GIB:.0f} GiB there, or set SESSIONKIT_BUILD_DIR "
                          "to a roomier disk")
    return ok(text)


CHECKS: list[tuple[str, Callable[[Facts], tuple]]] = [
    ("python", check_python),
    ("pip", check_pip),
    ("torch", check_torch),
    ("cuda_device", check_cuda_device),
    ("gpu", check_gpu),
    ("driver", check_driver),
    ("nvml", check_nvml),
    ("gpu_processes", check_gpu_processes),
    ("clocks", check_clocks),
    ("nvcc", check_nvcc),
    ("nvcc_torch", check_nvcc_torch),
    ("host_compiler", check_host_compiler),
    ("ninja", check_ninja),
    ("pybind11", check_pybind11),
    ("arch", check_arch),
    ("build_cache", check_build_cache),
    ("disk", check_disk),
]

def run_check(name: str, fn, facts: Facts) -> Check:
    try:
        status, finding, fix = fn(facts)
        return Check(name, status, finding, fix)
    except Exception as exc:
        return Check(name, "fail", f"the check raised {type(exc).__name__}: {exc}",
                     "fix what the message names, then run it again")
