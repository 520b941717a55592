"""Running a shell script against a real, small tmpfs (a full disk), in a private mount namespace.

The script gets ``$1`` the empty mount point (it mounts the tmpfs there itself, exiting 77 when it
cannot), ``$2`` this Python, and ``$3`` whatever the test passes. Skips the test, with the reason,
where util-linux's ``unshare`` is missing or the machine allows no mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_on_small_disk(script: str, tmp_path: Path, arg: str, *, timeout: float = 120,
                      env: dict | None = None) -> subprocess.CompletedProcess:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is needed to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)) if env is None else env
    result = subprocess.run([unshare, "-rm", "sh", "-c", script, "sh", str(mnt), sys.executable,
                             arg], capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode == 77 or result.stderr.startswith("unshare:"):
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    return result


def session_on_tmpfs(size: str, objective: str = "full") -> str:
    """The start of a script for :func:`run_on_small_disk`: mount a tmpfs of ``size`` (``4m``) at
    $1, work there with its database, and open a session (exit 77: no mount, 78: no session)."""
    return (f'set -u\n'
            f'mount -t tmpfs -o size={size} tmpfs "$1" || exit 77\n'
            f'cd "$1"\n'
            f'export SESSIONKIT_DB="$1/.sessionkit/sessions.db"\n'
            f'"$2" -m sessionkit start --objective {objective} >/dev/null || exit 78\n')
