"""What the preflight checks know about the machine: each fact gathered once, on first use, possibly
from a worker thread, through a :class:`~sessionkit.preflight.probe.Probe`. A fact that could not be
gathered is remembered with its exception and raised again to every check that asks for it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import toolchain
from ..gitinfo import git_state
from ..nvml import NvmlUnavailable
from .probe import Probe

_MIB = 1024 * 1024
_GIB = 1024 ** 3

# Facts that wait on subprocesses or NVML: gathered in threads while torch imports.
PREFETCH = ["torch", "nvml", "nvcc", "host_compiler", "cxx", "ninja", "git", "packages"]


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
