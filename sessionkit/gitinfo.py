"""The git commit of a working tree: the one place sessionkit asks git about it."""

from __future__ import annotations

import subprocess
from typing import Callable

# run(argv, *, cwd, timeout) -> (exit status, output); the preflight probe has this shape too.
Runner = Callable[..., tuple[int, str]]
TIMEOUT_S = 5.0


def _run(argv: list[str], *, cwd: str | None = None, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return done.returncode, done.stdout or ""


def git_state(cwd: str | None = None, *, run: Runner | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` for the tree at ``cwd``.

    ``commit`` is ``git rev-parse HEAD`` (None outside a git tree or without git); ``dirty`` is
    whether tracked files have uncommitted changes (None when that could not be read). ``run`` runs
    a command (a stand-in in tests); by default a subprocess with a 5 s timeout.
    """
    run = run or _run
    rc, out = run(["git", "rev-parse", "HEAD"], cwd=cwd, timeout=TIMEOUT_S)
    if rc != 0:
        return {"commit": None, "dirty": None}
    rc2, status = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                      timeout=TIMEOUT_S)
    return {"commit": out.strip(), "dirty": bool(status.strip()) if rc2 == 0 else None}


def git_commit(cwd: str | None = None) -> str | None:
    """The tree's commit, with ``-dirty`` when tracked files have uncommitted changes; None outside
    git."""
    state = git_state(cwd)
    if state["commit"] is None:
        return None
    return state["commit"] + ("-dirty" if state["dirty"] else "")
