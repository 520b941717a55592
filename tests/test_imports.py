"""Domain packages stay light: importing them pulls in neither click nor the step machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after_import(module: str, watched: tuple[str, ...]) -> str:
    """The ``watched`` modules that a fresh interpreter has loaded after ``import module``."""
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {watched!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("module", ["sessionkit.attention", "sessionkit.kernels", "sessionkit.bench",
                                    "sessionkit.preflight",
                                    "sessionkit.profile", "sessionkit.schema", "sessionkit.db"])
def test_import_leaves_click_and_steps_unimported(module):
    loaded = _loaded_after_import(module, ("click", "sessionkit.steps", "torch"))
    assert loaded == "", f"import {module} loaded {loaded}"


def _domain_modules() -> list[str]:
    from pathlib import Path

    import sessionkit

    root = Path(sessionkit.__file__).parent
    names = []
    for package in ("kernels", "bench", "preflight", "profile"):
        names += [f"sessionkit.{package}.{p.stem}" for p in sorted((root / package).glob("*.py"))
                  if p.stem != "__init__"]
    return names


@pytest.mark.parametrize("module", _domain_modules())
def test_domain_modules_hold_no_step(module):
    """Every module of the domain packages imports without click and without the step machinery:
    the step classes (and their click options) live in sessionkit/steps/."""
    loaded = _loaded_after_import(module, ("click", "sessionkit.steps"))
    assert loaded == "", f"import {module} loaded {loaded}"


def test_only_the_nvml_module_imports_pynvml():
    """One NVML reader: every other module reads GPUs through sessionkit.nvml."""
    from pathlib import Path

    import sessionkit

    root = Path(sessionkit.__file__).parent
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if "import pynvml" in p.read_text())
    assert importers == ["nvml.py"]
