"""Preflight checks: is this machine ready to build, check and time the kernel?

``sessionkit doctor`` runs them anywhere (no session, no database); ``sessionkit step preflight``
(:mod:`sessionkit.steps.preflight`) runs them in a session, records the environment snapshot and fails
the step when a check fails.

Everything the checks learn about the machine goes through a :class:`Probe` (``which``, ``run``,
``import_torch``, ``nvml``, ``disk_usage``, ``env``, ...), so tests hand in a fake one. The facts are
gathered lazily and once each (:class:`Facts`): torch is imported once, nvcc runs once. A check never
raises: an exception inside one becomes a ``fail`` with the exception's text.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import toolchain
from .envinfo import Redactor, relevant_env
from .gitinfo import git_state
from .nvml import NvmlUnavailable, read_facts

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
# CUDA 13.0 removed offline compilation for GPUs older than Turing (cc 7.5).
NVCC13_MIN_CC = (7, 5)

# Oldest driver branch per CUDA major version (CUDA toolkit release notes, "minimum required driver
# version for CUDA minor version compatibility"), only for the fix line.
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

DISK_WARN_GIB = 5.0  # a few builds, ncu reports and logs fit with room to spare
DISK_FAIL_GIB = 1.0  # one extension build with its object files needs a few hundred MiB

_MIB = 1024 * 1024
_GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------
# Probes


_TORCH_FACTS = """
import json, torch
facts = {"version": str(torch.__version__), "cuda": getattr(torch.version, "cuda", None),
         "hip": getattr(torch.version, "hip", None), "available": False, "devices": [], "cudnn": None}
if torch.cuda.is_available():
    facts["available"] = True
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        facts["devices"].append({"name": p.name, "major": p.major, "minor": p.minor,
                                 "total_memory": p.total_memory, "uuid": str(getattr(p, "uuid", ""))})
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
print(json.dumps(facts))
"""


def _torch_stand_in(facts: dict):
    """The few attributes of the torch module that the checks read, from a child's report."""
    from types import SimpleNamespace as NS

    devices = [NS(**d) for d in facts["devices"]]
    return NS(
        __version__=facts["version"],
        version=NS(cuda=facts["cuda"], hip=facts["hip"]),
        cuda=NS(is_available=lambda: facts["available"], device_count=lambda: len(devices),
                get_device_properties=lambda i: devices[i]),
        backends=NS(cudnn=NS(version=lambda: facts["cudnn"])),
    )


class Probe:
    """The machine as the checks see it. Tests subclass it and answer with canned facts."""

    def env(self) -> Mapping[str, str]:
        return os.environ

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env().get("PATH"))

    def find_cuda_tool(self, name: str) -> toolchain.Found:
        return toolchain.find_cuda_tool(name)

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern))

    def is_file(self, path: str | Path) -> bool:
        return Path(path).is_file()

    def read_text(self, path: str | Path, limit: int = 1 << 20) -> str:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)

    def run(self, argv: list[str], *, timeout: float = 10.0, cwd: str | None = None) -> tuple[int, str]:
        """Exit status and output (stdout then stderr) of a command; (-1, reason) when it cannot run."""
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                  env=dict(self.env()), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return -1, f"{argv[0]} did not answer within {timeout:g} s"
        except OSError as exc:
            return -1, f"{argv[0]}: {exc.strerror or exc}"
        return done.returncode, (done.stdout or "") + (done.stderr or "")

    def import_torch(self):
        """torch's facts, read in a child process and returned as a small stand-in module.

        Importing torch takes seconds; in a child process it runs beside the other checks instead of
        holding this process's interpreter lock, and this process never loads CUDA.
        """
        code, out = self.run([sys.executable, "-c", _TORCH_FACTS], timeout=120)
        lines = out.strip().splitlines()
        if code != 0 or not lines:
            last = lines[-1] if lines else f"exit status {code}"
            raise ImportError(f"cannot import torch: {last}")
        return _torch_stand_in(json.loads(lines[-1]))

    def nvml(self) -> dict:
        """Driver and GPU facts from NVML (see :func:`sessionkit.nvml.read_facts`); raises
        :class:`~sessionkit.nvml.NvmlUnavailable`."""
        return read_facts(self.env().get("CUDA_VISIBLE_DEVICES"), own_pid=os.getpid())

    def disk_usage(self, path: str | Path):
        return shutil.disk_usage(path)

    def module_version(self, name: str, dist: str | None = None) -> str | None:
        """The installed version of a module (``""`` when importable but unversioned), None if absent."""
        if importlib.util.find_spec(name) is None:
            return None
        from importlib import metadata

        try:
            return metadata.version(dist or name)
        except metadata.PackageNotFoundError:
            return ""

    def python(self) -> dict:
        return {"version": platform.python_version(), "executable": sys.executable,
                "implementation": platform.python_implementation()}

    def cache_root(self) -> Path:
        return toolchain.build_cache_root()

    def cwd(self) -> str:
        return os.getcwd()

    def hostname(self) -> str:
        return socket.gethostname()

    def platform(self) -> str:
        return platform.platform()


# --------------------------------------------------------------------------------------------
# Facts: each gathered once, on first use, possibly from a worker thread


def _version_tuple(text: str | None, n: int = 2) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = re.findall(r"\d+", str(text).split("+")[0])
    if len(parts) < 1:
        return None
    return tuple(int(p) for p in parts[:n])


def _cc_tuple(cc: str | None) -> tuple[int, int] | None:
    t = _version_tuple(cc, 2)
    return (t[0], t[1] if len(t) > 1 else 0) if t else None


def _one_line(text) -> str:
    return " ".join(str(text).split())


_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+)")


def parse_compiler_version(output: str) -> tuple[str, str] | None:
    """``("gcc", "12.2.0")`` or ``("clang", "18.1.3")`` from a compiler's ``--version`` output."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    if "clang" in first.lower():
        m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", first)
        return ("clang", m.group(1)) if m else None
    bare = re.sub(r"\([^)]*\)", " ", first)  # drop "(Debian 12.2.0-14)" and "(GCC)"
    m = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", bare)
    if m and ("gcc" in first.lower() or "g++" in first.lower() or "c++" in first.lower()
              or "free software foundation" in output.lower()):
        return "gcc", m.group(1)
    return None


def max_gcc_for(nvcc: tuple[int, int]) -> int | None:
    best = None
    for since, limit in NVCC_MAX_GCC:
        if nvcc >= since:
            best = limit
    return best


class Facts:
    """Lazily gathered, memoised facts about the machine. A failure is remembered and raised again."""

    def __init__(self, probe: Probe):
        self.probe = probe
        self._memo: dict[str, tuple[bool, object]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str):
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._memo:
                try:
                    self._memo[name] = (True, getattr(self, f"_{name}")())
                except Exception as exc:
                    self._memo[name] = (False, exc)
        ok, value = self._memo[name]
        if not ok:
            raise value
        return value

    def maybe(self, name: str, default=None):
        """The fact, or ``default`` when gathering it failed."""
        try:
            return self.get(name)
        except Exception:
            return default

    def error(self, name: str) -> str | None:
        """One line saying why a fact could not be gathered, or None when it was."""
        try:
            self.get(name)
        except Exception as exc:
            return _one_line(f"{type(exc).__name__}: {exc}") if not isinstance(exc, NvmlUnavailable) \
                else _one_line(exc)
        return None

    def prefetch(self, names: list[str]) -> ThreadPoolExecutor:
        """Start gathering ``names`` in the background (subprocess and NVML facts)."""
        pool = ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="preflight")
        for name in names:
            pool.submit(self.maybe, name)
        return pool

    # --- gatherers ---

    def _env(self) -> dict:
        return dict(self.probe.env())

    def _python(self) -> dict:
        return self.probe.python()

    def _torch(self) -> dict:
        torch = self.probe.import_torch()
        version = getattr(torch, "version", None)
        cuda = getattr(version, "cuda", None)
        info = {"version": str(torch.__version__), "cuda": cuda, "hip": getattr(version, "hip", None),
                "cuda_available": False, "device_count": 0}
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["device_count"] = int(torch.cuda.device_count())
            cudnn = getattr(getattr(torch, "backends", None), "cudnn", None)
            try:
                info["cudnn"] = cudnn.version() if cudnn is not None else None
            except Exception:  # noqa: BLE001 - cuDNN missing or broken: say nothing about it
                info["cudnn"] = None
        return info

    def _torch_devices(self) -> list[dict]:
        """GPUs as torch sees them; only used when NVML is unavailable."""
        torch = self.probe.import_torch()
        out = []
        for i in range(self.get("torch")["device_count"]):
            props = torch.cuda.get_device_properties(i)
            out.append({"index": i, "name": props.name, "cc": f"{props.major}.{props.minor}",
                        "memory_mib": round(props.total_memory / _MIB), "uuid": str(getattr(props, "uuid", ""))})
        return out

    def _nvml(self) -> dict:
        return self.probe.nvml()

    def _gpus(self) -> list[dict]:
        nvml = self.maybe("nvml")
        if nvml is not None:
            return nvml["gpus"]
        torch = self.maybe("torch")
        if torch and torch["cuda_available"]:
            return self.get("torch_devices")
        return []

    def _capability(self):
        gpus = self.get("gpus")
        return _cc_tuple(gpus[0]["cc"]) if gpus and gpus[0].get("cc") else None

    def _driver(self) -> dict:
        """Driver version and the newest CUDA it supports; /proc is read when NVML is missing."""
        nvml = self.maybe("nvml")
        if nvml is not None:
            return {"version": nvml["driver"], "cuda": nvml["cuda_driver"], "source": "NVML"}
        path = "/proc/driver/nvidia/version"
        if self.probe.is_file(path):
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", self.probe.read_text(path))
            if m:
                return {"version": m.group(1), "cuda": None, "source": path}
        return {"version": None, "cuda": None, "source": None}

    def _nvcc(self) -> dict:
        found = self.probe.find_cuda_tool("nvcc")
        info = {"path": found.path, "on_path": found.on_path, "where": found.where, "version": None,
                "output": None, "cuda_home": None}
        if not found.path:
            return info
        rc, out = self.probe.run([found.path, "--version"], timeout=20.0)
        m = _NVCC_RELEASE.search(out)
        info["version"] = f"{m.group(1)}.{m.group(2)}" if m else None
        info["output"] = _one_line(out)[:200] if not m else None
        info["cuda_home"] = self._cuda_home_for(found.path)
        return info

    def _cuda_home_for(self, nvcc_path: str) -> str:
        """The toolkit folder of an nvcc, read through the probe (see toolchain.cuda_home_for)."""
        return toolchain.cuda_home_for(
            nvcc_path, read_text=lambda path: self.probe.read_text(path, limit=4096),
            is_file=self.probe.is_file, env=self.get("env"))

    def _host_limits(self) -> dict:
        """Host compiler limits from the toolkit's include/crt/host_config.h, when readable."""
        home = self.get("nvcc").get("cuda_home")
        if not home:
            return {}
        candidates = [Path(home) / "include" / "crt" / "host_config.h"]
        candidates += [Path(p) for p in self.probe.glob(str(Path(home) / "targets" / "*" / "include" / "crt" / "host_config.h"))]
        for path in candidates:
            if self.probe.is_file(path):
                text = self.probe.read_text(path)
                out = {"source": str(path)}
                m = re.search(r"#if\s+__GNUC__\s*>\s*(\d+)", text)
                if m:
                    out["gcc_max"] = int(m.group(1))
                m = re.search(r"unsupported clang version! clang version must be less than (\d+)", text)
                if m:
                    out["clang_max"] = int(m.group(1)) - 1
                return out
        return {}

    def _compiler(self, command: str) -> dict:
        path = command
        if os.sep in command and not self.probe.is_file(command) and Path(command).is_dir():
            path = str(Path(command) / "gcc")  # -ccbin also takes the compiler's folder
        resolved = path if os.sep in path else self.probe.which(path)
        info = {"command": command, "path": resolved, "kind": None, "version": None}
        if not resolved:
            return info
        rc, out = self.probe.run([resolved, "--version"], timeout=10.0)
        parsed = parse_compiler_version(out) if rc == 0 else None
        if parsed:
            info["kind"], info["version"] = parsed
        else:
            info["output"] = _one_line(out)[:200]
        return info

    def _host_compiler(self) -> dict:
        """The compiler nvcc uses for host code: torch passes $CC as -ccbin; else $NVCC_CCBIN; else gcc."""
        env = self.get("env")
        for var in ("CC", "NVCC_CCBIN"):
            if env.get(var):
                info = self._compiler(env[var].split()[0])
                info["from"] = var
                return info
        info = self._compiler("gcc")
        info["from"] = "default"
        return info

    def _cxx(self) -> dict:
        """The compiler torch uses for .cpp files: $CXX, else c++."""
        env = self.get("env")
        return self._compiler(env["CXX"].split()[0] if env.get("CXX") else "c++")

    def _ninja(self) -> dict:
        path = self.probe.which("ninja")
        if not path:
            return {"path": None, "version": None}
        rc, out = self.probe.run([path, "--version"], timeout=10.0)
        return {"path": path, "version": out.strip() if rc == 0 else None}

    def _packages(self) -> dict:
        names = {"pip": "pip", "pybind11": "pybind11", "triton": "triton", "numpy": "numpy",
                 "pynvml": "nvidia-ml-py", "sqlite_utils": "sqlite-utils", "click": "click",
                 "jinja2": "jinja2", "ninja": "ninja"}
        return {dist: self.probe.module_version(mod, dist) for mod, dist in names.items()}

    def _arch(self) -> dict:
        cc = self.get("capability")
        return {"arch": toolchain.arch_label(cc), "flags": toolchain.arch_flags(cc),
                "cc": None if cc is None else f"{cc[0]}.{cc[1]}"}

    def _cache(self) -> dict:
        root = Path(self.probe.cache_root())
        entries = []
        for path in self.probe.glob(str(root / "*" / "manifest.json")):
            try:
                data = json.loads(self.probe.read_text(path))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                entries.append({"path": path, "manifest": data})
            except (OSError, ValueError) as exc:
                entries.append({"path": path, "error": _one_line(exc)})
        return {"root": str(root), "entries": entries}

    def _disk(self) -> dict:
        root = Path(self.probe.cache_root())
        where = root
        while not where.exists() and where != where.parent:
            where = where.parent
        usage = self.probe.disk_usage(where)
        return {"path": str(where), "free_gib": round(usage.free / _GIB, 2),
                "total_gib": round(usage.total / _GIB, 2)}

    def _git(self) -> dict:
        return git_state(self.probe.cwd(), run=self.probe.run)


# --------------------------------------------------------------------------------------------
# Checks


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


def check_gpu_processes(f: Facts):
    err = f.error("nvml")
    if err:
        return warn("other processes on the GPU not checked (NVML unavailable)", "see the nvml check above")
    gpus = f.get("gpus")
    if not gpus:
        return warn("other processes not checked: no GPU visible", "see the gpu check above")
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
    from .nvml import THROTTLE_MASK, reason_names

    err = f.error("nvml")
    if err:
        return warn("clocks and throttling not checked (NVML unavailable)", "see the nvml check above")
    gpus = f.get("gpus")
    if not gpus:
        return warn("clocks not checked: no GPU visible", "see the gpu check above")
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


def check_arch(f: Facts):
    a = f.get("arch")
    cc = f.get("capability")
    flags = " ".join(a["flags"])
    if cc is None:
        return warn(f"no GPU to read a compute capability from; builds target {a['arch']} ({flags})",
                    "run on the GPU that will time the kernel (an H100 for sm_90a)")
    n = f.maybe("nvcc") or {}
    nvcc_v = _version_tuple(n.get("version"))
    if nvcc_v:
        need = ARCH_MIN_NVCC.get(cc)
        if need and nvcc_v < need:
            return fail(f"{a['arch']} for cc {a['cc']} needs nvcc {need[0]}.{need[1]}+, have {n['version']}",
                        f"install CUDA {need[0]}.{need[1]} or newer")
        if nvcc_v[0] >= 13 and cc < NVCC13_MIN_CC:
            return fail(f"cc {a['cc']} is older than Turing; nvcc {n['version']} cannot build for it",
                        "use a CUDA 12.x toolkit or a newer GPU")
    if a["arch"] == "sm_90a":
        return ok(f"Hopper (cc {a['cc']}): {flags}")
    return warn(f"cc {a['cc']} is not Hopper: builds use {flags}; the Hopper paths (wgmma, TMA) "
                "of the kernel are not available", "time the kernel on an H100 or H200 (cc 9.0)")


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

# Facts that wait on subprocesses or NVML: gathered in threads while torch imports.
PREFETCH = ["torch", "nvml", "nvcc", "host_compiler", "cxx", "ninja", "git", "packages"]


def run_check(name: str, fn, facts: Facts) -> Check:
    try:
        status, finding, fix = fn(facts)
        return Check(name, status, finding, fix)
    except Exception as exc:
        return Check(name, "fail", f"the check raised {type(exc).__name__}: {exc}",
                     "fix what the message names, then run it again")


# --------------------------------------------------------------------------------------------
# The whole run


@dataclass
class Report:
    checks: list[Check]
    snapshot: dict
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def failed(self) -> int:
        return self.count("fail")

    @property
    def warned(self) -> int:
        return self.count("warn")

    @property
    def passed(self) -> int:
        return self.count("pass")

    def to_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "passed": self.passed,
                "warned": self.warned, "failed": self.failed,
                "elapsed_s": round(self.elapsed_s, 3), "snapshot": self.snapshot}


def build_snapshot(f: Facts) -> dict:
    """The environment snapshot (see the env snapshot contract); momentary readings under ``state``."""
    t = f.maybe("torch")
    n = f.maybe("nvcc") or {}
    hc = f.maybe("host_compiler") or {}
    cxx = f.maybe("cxx") or {}
    ninja = f.maybe("ninja") or {}
    packages = f.maybe("packages") or {}
    arch = f.maybe("arch") or {}
    drv = f.maybe("driver") or {}
    gpus = f.maybe("gpus") or []
    static = ("index", "name", "cc", "memory_mib", "uuid")
    cache = f.maybe("cache") or {"root": None, "entries": []}
    disk = f.maybe("disk") or {}
    snap = {
        "host": f.probe.hostname(),
        "platform": f.probe.platform(),
        "python": {**f.get("python"), "pip": packages.get("pip")},
        "torch": {"version": None, "cuda": None, "cuda_available": False,
                  "error": f.error("torch")} if t is None else {
            "version": t["version"], "cuda": t["cuda"], "cuda_available": t["cuda_available"],
            "device_count": t["device_count"], "cudnn": t.get("cudnn")},
        "packages": {k: v for k, v in packages.items() if k != "pip"},
        "gpus": [{k: g.get(k) for k in static} for g in gpus],
        "driver": drv.get("version"),
        "driver_cuda": drv.get("cuda"),
        "nvml": f.error("nvml") is None,
        "toolchain": {
            "nvcc": n.get("path"), "nvcc_version": n.get("version"), "nvcc_on_path": n.get("on_path"),
            "nvcc_where": n.get("where"), "cuda_home": n.get("cuda_home"),
            "host_compiler": hc.get("path"), "host_compiler_kind": hc.get("kind"),
            "host_compiler_version": hc.get("version"),
            "cxx": cxx.get("path"), "cxx_version": cxx.get("version"),
            "ninja": ninja.get("path"), "ninja_version": ninja.get("version"),
            "pybind11": packages.get("pybind11"),
            "arch_flags": arch.get("flags"), "arch": arch.get("arch"),
        },
        "build_cache": {"root": cache["root"], "builds": len(cache["entries"])},
        "env": relevant_env(f.get("env")),
        "git": f.maybe("git") or {"commit": None, "dirty": None},
        "state": {
            "gpus": [{k: v for k, v in g.items() if k not in static} for g in gpus],
            "disk_free_gib": disk.get("free_gib"),
        },
    }
    return snap


def run_checks(probe: Probe | None = None, *, on_check: Callable[[int, int, Check], None] | None = None,
               prefetch: bool = True) -> Report:
    """Run every check; never raises for what it finds. Secrets are scrubbed from the whole report."""
    started = time.perf_counter()
    probe = probe or Probe()
    facts = Facts(probe)
    pool = facts.prefetch(PREFETCH) if prefetch else None
    redactor = Redactor(probe.env())
    checks = []
    try:
        for i, (name, fn) in enumerate(CHECKS, 1):
            check = run_check(name, fn, facts)
            check.finding = redactor.text(check.finding)
            check.fix = redactor.text(check.fix) if check.fix else None
            checks.append(check)
            if on_check:
                on_check(i, len(CHECKS), check)
        try:
            snapshot = build_snapshot(facts)
        except Exception as exc:  # a broken probe must not lose the checks
            snapshot = {"error": _one_line(f"{type(exc).__name__}: {exc}")}
    finally:
        if pool:
            pool.shutdown(wait=True)
    snapshot["elapsed_s"] = round(time.perf_counter() - started, 3)
    return Report(checks, redactor.scrub(snapshot), time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Text


_STYLE = {"pass": ("PASS", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "red")}


def format_check(check: Check, width: int, *, color: bool = False) -> list[str]:
    word, fg = _STYLE[check.status]
    if color:
        import click  # only a terminal wants colour; the checks themselves never import click

        tag = click.style(word, fg=fg, bold=True)
    else:
        tag = word
    lines = [f"{tag}  {check.name.ljust(width)}  {check.finding}"]
    if check.fix:
        lines.append(f"{' ' * (6 + width + 2)}fix: {check.fix}")
    return lines


def summary_line(report: Report) -> str:
    def n(count, one, many):
        return f"{count} {one if count == 1 else many}"

    return (f"{n(report.passed, 'passed', 'passed')}, {n(report.warned, 'warning', 'warnings')}, "
            f"{n(report.failed, 'failed', 'failed')}")


def format_report(report: Report, *, color: bool = False) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = []
    for check in report.checks:
        lines += format_check(check, width, color=color)
    lines.append(summary_line(report))
    return "\n".join(lines)
