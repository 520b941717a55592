"""Loading a repository script (benchmarks/*.py, csrc/generate_kernels.py) as a module, for tests
that call its functions directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str | Path):
    """The module of the script at ``path`` (relative to the checkout's root, or absolute)."""
    path = Path(path)
    path = path if path.is_absolute() else ROOT / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
