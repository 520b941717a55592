"""Building and loading the FlashAttention kernels (the ``build`` step is :mod:`sessionkit.steps.build`).

The kernels in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` (ninja, all cores) into
``build_cache_root()/<key>/``, where the key hashes the sources, the torch/CUDA/Python versions, the
nvcc version, the arch and the flags. The compile runs in a child Python process whose output (the
ninja log with ``-Xptxas -v`` lines) goes to ``build.log`` in that folder, so that this process can
report progress meanwhile. Each finished folder holds ``manifest.json``; when it and the library are
there, loading is just ``torch.ops.load_library`` (no ninja).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import toolchain
from ..errors import SessionkitError, first_line
from ..timefmt import now_iso
from .ptxas import first_compile_error, parse_ptxas

SOURCE_SUFFIXES = (".cu", ".cpp", ".h", ".cuh")
COMPILED_SUFFIXES = (".cu", ".cpp")
MANIFEST = "manifest.json"
LOG_NAME = "build.log"

CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v", "-DNDEBUG"]
CXX_FLAGS = ["-O2", "-DNDEBUG"]


class BuildError(SessionkitError):
    """The kernels did not compile or load; ``first_error`` is file:line: message."""

    def __init__(self, message: str, *, first_error: str | None = None, log_path: Path | None = None):
        super().__init__(message)
        self.first_error = first_error
        self.log_path = log_path


class NoCudaError(BuildError):
    """torch is missing, is a CPU-only build, or sees no GPU: the kernels cannot be built or
    loaded (a :class:`BuildError`, so that one ``except BuildError`` covers every failure of
    :func:`sessionkit.kernels.load_extension`)."""


@dataclass
class BuildInfo:
    key: str
    folder: str
    library: str
    cached: bool  # True: loaded an earlier build without compiling
    arch: str
    flags: list[str]
    nvcc: str | None
    nvcc_version: str | None
    torch: str
    torch_cuda: str | None
    python: str
    build_time_s: float | None  # compile + link of this build (from the manifest when cached)
    load_time_s: float  # this process: from the cache check to the library being loaded
    built_at: str
    kernels: dict[str, dict] = field(default_factory=dict)
    log_path: str | None = None
    sources_sha256: str = ""  # digest of every source under csrc/ (sources_digest)
    sources_files: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Sources and keys (pure)

def csrc_dir() -> Path:
    """The kernel sources: the installed ``sessionkit.csrc`` package, else the repository's csrc/."""
    try:
        from importlib.resources import files

        root = files("sessionkit.csrc")
        path = Path(str(root))
        if path.is_dir() and any(path.rglob("*.cu")):
            return path
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    repo = Path(__file__).resolve().parent.parent.parent / "csrc"
    if repo.is_dir():
        return repo
    raise BuildError("kernel sources not found: neither the sessionkit.csrc package nor a csrc/ "
                     "folder next to the sessionkit package exists")


def source_files(root: Path) -> list[Path]:
    """Every file that goes into the build, sorted, subfolders included (headers too: they change
    the result)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                  and "__pycache__" not in p.parts)


def kernel_names(root: Path) -> list[str]:
    """Kernel symbols: each generated ``instantiations/flash_fwd_*.cu`` defines the kernel named
    after its file (``flash_fwd_<family>_<dtype>_hdim<D>_<mask>``)."""
    return sorted(p.stem for p in (root / "instantiations").glob("flash_fwd_*.cu"))


def sources_digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def build_key(*, sources_sha256: str, torch_version: str, torch_cuda: str | None, python: str,
              arch: str, flags: list[str], nvcc_version: str | None) -> str:
    """A short, stable hash of everything that changes the built library."""
    facts = {"sources": sources_sha256, "torch": torch_version, "torch_cuda": torch_cuda,
             "python": python, "arch": arch, "flags": list(flags), "nvcc": nvcc_version}
    blob = json.dumps(facts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def extra_nvcc_flags() -> list[str]:
    """Experiment flags from $SESSIONKIT_NVCC_FLAGS (e.g. ``-DSK_FWD_STAGES=3``); part of the key.
    Their ``-D`` and ``-U`` flags also go to the host compiler (the binding, flash_api.cpp)."""
    import shlex

    return shlex.split(os.environ.get("SESSIONKIT_NVCC_FLAGS", ""))


def macro_flags(flags: list[str]) -> list[str]:
    """The macro definitions among nvcc flags (``-DX=1``, ``-UX``, and ``-D X=1`` written as two
    arguments), which the binding's host compile gets too."""
    out: list[str] = []
    take_next = False
    for flag in flags:
        if take_next:
            out.append(flag)
            take_next = False
        elif flag in ("-D", "-U"):
            out.append(flag)
            take_next = True
        elif flag.startswith(("-D", "-U")):
            out.append(flag)
    if take_next:
        out.pop()  # a trailing -D or -U with nothing after it
    return out


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a finished build whose library is present, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    library = manifest.get("library")
    if not isinstance(manifest, dict) or not library or not Path(library).is_file():
        return None
    return manifest


_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def ninja_progress(log_text: str) -> tuple[int, int] | None:
    """The last ``[done/total]`` of a ninja log, or None before the first."""
    last = None
    for line in log_text.splitlines():
        match = _NINJA_STEP.match(line)
        if match:
            last = (int(match.group(1)), int(match.group(2)))
    return last


# --------------------------------------------------------------------------------------------
# Building and loading

_LOADED: BuildInfo | None = None  # the build whose library this process has loaded
_LOAD_LOCK = threading.Lock()


def loaded() -> BuildInfo | None:
    return _LOADED


def _torch_cuda():
    try:
        import torch
    except ImportError:
        raise NoCudaError("torch is not installed; install a CUDA build of torch to build the "
                          "kernels") from None
    if torch.version.cuda is None:
        raise NoCudaError(f"torch {torch.__version__} is a CPU-only build; the kernels need a CUDA "
                          "build of torch")
    if not torch.cuda.is_available():
        raise NoCudaError(f"no CUDA GPU is visible to torch {torch.__version__} (CUDA "
                          f"{torch.version.cuda})")
    return torch


def _capability_from_env(env: dict) -> tuple[int, int] | None:
    gpus = (env or {}).get("gpus") or []
    if gpus and isinstance(gpus[0], dict) and gpus[0].get("cc"):
        try:
            major, minor = str(gpus[0]["cc"]).split(".")
            return int(major), int(minor)
        except ValueError:
            return None
    return None


def _resolve_nvcc(nvcc: str | None) -> str:
    if nvcc and Path(nvcc).is_file():
        return nvcc
    found = toolchain.find_cuda_tool("nvcc")
    if not found.path:
        raise BuildError("nvcc not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda*/bin; "
                         "install the CUDA toolkit or set CUDA_HOME")
    return found.path


def _cuda_home(nvcc: str) -> str:
    """The toolkit folder for a build (torch's builder runs ``$CUDA_HOME/bin/nvcc`` with
    ``$CUDA_HOME/include``), following a wrapper nvcc to the toolkit it runs."""
    home = toolchain.cuda_home_for(nvcc)
    if (Path(home) / "bin" / "nvcc").is_file() and (Path(home) / "include" / "cuda_runtime.h").is_file():
        return home
    raise BuildError(f"no CUDA toolkit with headers found for {nvcc} (looked in {home}, "
                     "$CUDA_HOME, $CUDA_PATH and /usr/local/cuda); set CUDA_HOME")


def _library_smem(library: str, names: list[str]) -> dict[str, int]:
    """Dynamic shared memory per kernel, read from the ``NAME_smem_bytes`` constants of the library."""
    import ctypes

    out: dict[str, int] = {}
    try:
        lib = ctypes.CDLL(library)
    except OSError:
        return out
    for name in names:
        try:
            out[name] = ctypes.c_int.in_dll(lib, f"{name}_smem_bytes").value
        except ValueError:
            continue
    return out


def _kernel_table(log_text: str, library: str, names: list[str]) -> dict[str, dict]:
    resources = parse_ptxas(log_text)
    dynamic = _library_smem(library, names)
    table = {}
    for name in names:
        res = resources.get(name)
        row = res.to_dict() if res else {"name": name, "registers": None, "static_smem_bytes": 0,
                                         "stack_frame_bytes": 0, "spill_store_bytes": 0,
                                         "spill_load_bytes": 0, "wgmma_serialized": None}
        row["dynamic_smem_bytes"] = dynamic.get(name)
        row["smem_bytes"] = row["static_smem_bytes"] + (dynamic.get(name) or 0)
        table[name] = row
    return table


def _compile(*, name: str, sources: list[Path], include: Path, folder: Path, cflags: list[str],
             cuda_flags: list[str], nvcc: str, log_path: Path, progress) -> float:
    """Run the compile in a child process with its output in log_path; return its wall time."""
    env = dict(os.environ)
    cuda_home = _cuda_home(nvcc)
    env["CUDA_HOME"] = cuda_home
    env["PATH"] = str(Path(cuda_home) / "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    spec = {"name": name, "sources": [str(s) for s in sources], "include": str(include),
            "folder": str(folder), "cflags": cflags, "cuda_flags": cuda_flags}
    cmd = [sys.executable, "-c", "import sys; from sessionkit.kernels.build import _child_main; "
           "sys.exit(_child_main(sys.argv[1:]))", json.dumps(spec)]
    # The child must import this very package, wherever it was imported from here.
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        last = None
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if progress is not None:
                    step = ninja_progress(log_path.read_text(errors="replace"))
                    if step and step != last:
                        last = step
                        progress.update(step[0], step[1], "compiling")
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        first = first_compile_error(text) or f"build exited with status {proc.returncode}"
        raise BuildError(f"kernel build failed: {first} (full log: {log_path})", first_error=first,
                         log_path=log_path)
    return elapsed


def build_extension(progress=None, *, nvcc: str | None = None,
                    capability: tuple[int, int] | None = None, force: bool = False) -> BuildInfo:
    """Build the kernels if no cached build matches, then load the library into this process.

    ``progress`` (optional) gets ``note(text)`` and ``update(done, total, label)`` calls. Raises
    :class:`NoCudaError` without a CUDA torch and GPU, :class:`BuildError` when compiling fails.
    """
    global _LOADED
    started = time.perf_counter()
    torch = _torch_cuda()
    nvcc = _resolve_nvcc(nvcc)
    if capability is None:
        capability = tuple(torch.cuda.get_device_capability())
    arch = toolchain.arch_label(capability)
    experiment = extra_nvcc_flags()
    cuda_flags = CUDA_FLAGS + toolchain.arch_flags(capability) + experiment
    cflags = CXX_FLAGS + macro_flags(experiment)
    root = csrc_dir()
    files = source_files(root)
    sources_sha = sources_digest(files, root)
    nvcc_ver = toolchain.nvcc_version(nvcc)
    python = platform.python_version()
    flags = cflags + cuda_flags
    key = build_key(sources_sha256=sources_sha, torch_version=torch.__version__,
                    torch_cuda=torch.version.cuda, python=python, arch=arch, flags=flags,
                    nvcc_version=nvcc_ver)
    with _LOAD_LOCK:
        if _LOADED is not None:
            if _LOADED.key == key and not force:
                return _LOADED
            raise BuildError(f"another build of the kernels ({_LOADED.key}) is already loaded in "
                             "this process; start a new Python process to load a rebuilt one")
        folder = toolchain.build_cache_root() / key
        folder.mkdir(parents=True, exist_ok=True)
        names = kernel_names(root)
        with _FolderLock(folder):
            manifest = None if force else read_manifest(folder)
            if manifest is None:
                name = f"sessionkit_flash_{key[:12]}"
                log_path = folder / LOG_NAME
                if progress is not None:
                    progress.note(f"building {len(names)} kernels for {arch} with nvcc {nvcc_ver} "
                                  f"({os.environ.get('MAX_JOBS', os.cpu_count())} jobs) in {folder}")
                build_s = _compile(
                    name=name, sources=[f for f in files if f.suffix in COMPILED_SUFFIXES],
                    include=root, folder=folder, cflags=cflags, cuda_flags=cuda_flags, nvcc=nvcc,
                    log_path=log_path, progress=progress)
                library = folder / f"{name}.so"
                if not library.is_file():
                    raise BuildError(f"the build finished but {library} is missing (log: {log_path})",
                                     log_path=log_path)
                manifest = {
                    "key": key, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                    "python": python, "arch": arch, "flags": flags, "sources_sha256": sources_sha,
                    "nvcc": nvcc_ver, "nvcc_path": nvcc, "built_at": now_iso(),
                    "library": str(library), "build_time_s": round(build_s, 3),
                    "log": str(log_path), "kernels": {},
                }
                cached = False
            else:
                cached = True
            try:
                torch.ops.load_library(manifest["library"])
            except (OSError, RuntimeError) as exc:
                raise BuildError(f"cannot load {manifest['library']}: {first_line(exc)}; "
                                 "rebuild with --force") from None
            if not cached:
                manifest["kernels"] = _kernel_table(Path(manifest["log"]).read_text(errors="replace"),
                                                    manifest["library"], names)
                tmp = folder / (MANIFEST + ".tmp")
                tmp.write_text(json.dumps(manifest, indent=2))
                tmp.replace(folder / MANIFEST)
        info = BuildInfo(
            key=key, folder=str(folder), library=manifest["library"], cached=cached, arch=arch,
            flags=flags, nvcc=nvcc, nvcc_version=nvcc_ver, torch=torch.__version__,
            torch_cuda=torch.version.cuda, python=python,
            build_time_s=manifest.get("build_time_s"),
            load_time_s=round(time.perf_counter() - started, 3), built_at=manifest.get("built_at", ""),
            kernels=manifest.get("kernels", {}), log_path=manifest.get("log"),
            sources_sha256=sources_sha, sources_files=len(files))
        _LOADED = info
        return info


class _FolderLock:
    """An exclusive lock on a build folder, so that two processes never build into it at once."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.fh = None

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        return False


# --------------------------------------------------------------------------------------------
# The child process that compiles (run by _compile with the spec as JSON)

def _child_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    from torch.utils import cpp_extension

    # cpp_extension read CUDA_HOME at import; make it follow the nvcc chosen by the parent.
    if os.environ.get("CUDA_HOME"):
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    cpp_extension.load(
        name=spec["name"], sources=spec["sources"], extra_cflags=spec["cflags"],
        extra_cuda_cflags=spec["cuda_flags"], extra_include_paths=[spec["include"]],
        build_directory=spec["folder"], verbose=True, with_cuda=True, is_python_module=False)
    sys.stdout.flush()
    return 0


