"""The GPU-only scripts of benchmarks/ on a machine without a CUDA device: one line that says what
they need and exit status 2, before any session, database or timer is made (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("args", [["bench_agreement.py", "agree"], ["bench_agreement.py", "repeat"],
                                  ["bench_placement.py"], ["telemetry_overhead.py"],
                                  ["attention_speed.py"],
                                  ["launch_profile.py", "--config", "2,2,128,128,64,bf16,1"],
                                  ["sanitize_run.py"]])
def test_gpu_scripts_without_a_gpu_say_so_in_one_line(args, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run")
    out = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("needs a CUDA GPU"), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, args", [("gpu_check.sh", []), ("gpu_check.sh", ["validate"]),
                                          ("gpu_sessions.sh", [])])
def test_gpu_shell_scripts_without_a_gpu_say_so_and_exit_2(script, args, tmp_path):
    """The shell drivers (every stage needs a GPU) stop at once: one line naming what they need,
    exit status 2 (they exited 0 after a page of tracebacks), and nothing written, in the working
    folder or in $OUT."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run")
    out_dir = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(out_dir),
           "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(BENCHMARKS / script), *args], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: needs a CUDA GPU"), lines
    assert list(tmp_path.iterdir()) == []
