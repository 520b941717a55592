"""The machine as the preflight checks see it: :class:`Probe` answers every question the checks ask
(``which``, ``run``, ``import_torch``, ``nvml``, ``disk_usage``, ``env``, ...), so tests hand in a fake
one that answers with canned facts.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .. import toolchain
from ..nvml import read_facts


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
