"""Domain packages stay light: importing them pulls in neither click nor the step machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["sessionkit.kernels", "sessionkit.schema", "sessionkit.db"])
def test_import_leaves_click_and_steps_unimported(module):
    code = (f"import sys, {module}; "
            "print(','.join(m for m in ('click', 'sessionkit.steps', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_only_the_nvml_module_imports_pynvml():
    """One NVML reader: every other module reads GPUs through sessionkit.nvml."""
    from pathlib import Path

    import sessionkit

    root = Path(sessionkit.__file__).parent
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if "import pynvml" in p.read_text())
    assert importers == ["nvml.py"]
