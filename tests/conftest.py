"""Shared fixtures. Every test runs in its own folder with its own database.

GPU tests carry ``@pytest.mark.gpu``; without a CUDA device they are skipped here, in one place, with
the reason shown in the summary (``-ra``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import pytest

try:  # hypothesis is a test extra; tests that need it import it themselves
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover
    _hypothesis_settings = None
else:
    # The fuzz tests check what a function does, not how fast: no per-example deadline, which a
    # loaded 2-core CI machine missed now and then (hypothesis' default is 200 ms).
    _hypothesis_settings.register_profile("sessionkit", deadline=None)
    _hypothesis_settings.load_profile("sessionkit")

# The checkout's root: child processes (``python -m sessionkit``) import this sessionkit too, also
# where it is not installed (a run of the tests straight from a clone).
ROOT = str(Path(__file__).resolve().parent.parent)


# sessionkit's own dependencies (pyproject's [project] dependencies that every command needs):
# where this Python lacks one (the checkout run with a Python the project was never installed
# in), every test is skipped with the reason and the fix, as tests of the extras are.
_MISSING_CORE = [name for name in ("click", "jinja2", "sqlite_utils")
                 if importlib.util.find_spec(name) is None]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in tmp_path with the DB, build cache and config all pointing inside it."""
    if _MISSING_CORE:
        pytest.skip(f"needs sessionkit's dependencies ({', '.join(_MISSING_CORE)} missing): "
                    "pip install -e '.[test]' in the checkout")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("SESSIONKIT_DB", str(tmp_path / "sessions.db"))
    monkeypatch.setenv("SESSIONKIT_PROGRESS_EVERY", "30")
    monkeypatch.delenv("SESSIONKIT_TELEMETRY_INTERVAL", raising=False)
    if not _gpu_reason():  # GPU runs keep the real build cache so the kernel builds once
        monkeypatch.setenv("SESSIONKIT_BUILD_DIR", str(tmp_path / "build-cache"))
    return tmp_path


@pytest.fixture
def db(tmp_path):
    """A new database in tmp_path; its connection is closed after the test."""
    from sessionkit.db import open_db

    handle = open_db(tmp_path / "sessions.db", create=True)
    yield handle
    handle.conn.close()


@pytest.fixture
def session(db):
    from sessionkit.sessions import start_session

    return start_session(db, "fixture", objective="test the library", plan=["preflight", "build"])


@pytest.fixture
def make_context(db, session):
    """``make_context(options=None, name="x")`` -> a StepContext on a real running step row.

    ``options`` (a mapping) are parsed into the options of the registered step ``name``, as the
    runner does; for a name no step has, they are kept as given."""
    import os
    import socket
    import uuid

    from sessionkit.progress import Progress
    from sessionkit.runner import artifacts_dir
    from sessionkit.steps import REGISTRY, StepContext, get_step
    from sessionkit.timefmt import now_iso

    def make(options=None, name="x"):
        step_id = str(uuid.uuid4())
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE session_id = ?",
                         [session["id"]]).fetchone()[0]
        db["steps"].insert({"id": step_id, "session_id": session["id"], "seq": seq, "name": name,
                            "started_at": now_iso(), "host": socket.gethostname(), "pid": os.getpid()})
        workdir = artifacts_dir(db, session, seq, name)
        workdir.mkdir(parents=True, exist_ok=True)
        if name in REGISTRY:
            options = get_step(name).parse_options(options)
        return StepContext(db=db, session=session, step_id=step_id, seq=seq,
                           progress=Progress(f"[{seq}]", name), options=options or {},
                           workdir=workdir)

    return make


@functools.lru_cache(maxsize=1)
def _gpu_reason() -> str | None:
    """None when a CUDA GPU is usable, else why not."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA (torch is not installed)"
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__}, cuda {torch.version.cuda}: none available)"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
