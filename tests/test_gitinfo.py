"""The one git reader: a real repository in a temporary folder."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sessionkit.errors import first_line
from sessionkit.gitinfo import git_commit, git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_commit_then_dirty_then_outside_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    assert git_state(str(repo)) == {"commit": head, "dirty": False}
    assert git_commit(str(repo)) == head
    (repo / "untracked.txt").write_text("not tracked\n")  # untracked files do not count
    assert git_commit(str(repo)) == head
    (repo / "a.txt").write_text("two\n")
    assert git_state(str(repo)) == {"commit": head, "dirty": True}
    assert git_commit(str(repo)) == head + "-dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(str(outside)) == {"commit": None, "dirty": None}
    assert git_commit(str(outside)) is None


def test_first_line_of_an_exception():
    assert first_line(ValueError("bad value\nsecond line")) == "bad value"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(OSError("no such file"), named=True) == "OSError: no such file"
    assert first_line(KeyError(), named=True) == "KeyError"
    cut = first_line(RuntimeError("x" * 50), limit=10)
    assert cut == "xxxxxxx..." and len(cut) == 10
