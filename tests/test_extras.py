"""Install hints for the optional extras fit how sessionkit was installed (it is installed from a
checkout, not from PyPI)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sessionkit.extras import install_command, install_hint

ROOT = Path(__file__).resolve().parent.parent


def test_from_this_checkout_the_hint_is_an_editable_install_of_it(tmp_path, monkeypatch):
    assert install_hint("plots") == f"pip install -e '{ROOT}[plots]'"
    monkeypatch.chdir(ROOT)
    assert install_hint("mlflow") == "pip install -e '.[mlflow]'"


@pytest.mark.parametrize("direct_url, expected", [
    # the shapes pip writes to direct_url.json (PEP 610)
    ({"url": "file:///opt/src/sessionkit", "dir_info": {}}, "pip install '/opt/src/sessionkit[plots]'"),
    ({"url": "file:///opt/my%20src/sk", "dir_info": {"editable": True}},
     "pip install -e '/opt/my src/sk[plots]'"),
    ({"url": "https://github.com/acme/sessionkit.git",
      "vcs_info": {"vcs": "git", "commit_id": "ab12cd"}},
     "pip install 'sessionkit[plots] @ git+https://github.com/acme/sessionkit.git@ab12cd'"),
    ({"url": "file:///wheels/sessionkit-0.1.0-py3-none-any.whl", "archive_info": {}},
     "pip install 'sessionkit[plots] @ file:///wheels/sessionkit-0.1.0-py3-none-any.whl'"),
    (None, "pip install 'sessionkit[plots]'"),
])
def test_the_hint_follows_the_recorded_origin(direct_url, expected, tmp_path):
    assert install_command("plots", direct_url=direct_url, cwd=tmp_path) == expected


def test_unknown_extra_is_an_error():
    with pytest.raises(ValueError, match="no extra 'plot'"):
        install_hint("plot")


def test_an_installed_copy_reads_its_direct_url(tmp_path):
    """A non-editable install from a folder (``pip install /path``): the installed package is not in
    a checkout, and pip's direct_url.json names the folder."""
    import shutil

    source = tmp_path / "src"  # a copy, so that the build leaves nothing in this checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("sessionkit", "templates", "patterns", "csrc"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    # offline where setuptools is here to build with; else pip fetches it for an isolated build
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *offline,
                    "--target", str(target), str(source)], check=True,
                   cwd=tmp_path, capture_output=True, timeout=300)
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import sessionkit.extras as e; print(e.__file__); print(e.install_hint('browse'))",
         str(target)], check=True, cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    where, hint = out.splitlines()
    assert where.startswith(str(target))
    assert hint == f"pip install '{source}[browse]'"


def test_missing_extras_name_the_command_for_this_install(monkeypatch, tmp_path):
    from sessionkit.errors import SessionkitError
    from sessionkit.mlflow_push import _client
    from sessionkit.serve import datasette_command

    monkeypatch.setitem(sys.modules, "datasette", None)  # find_spec and import find nothing
    with pytest.raises(SessionkitError) as err:
        datasette_command(tmp_path / "s.db", tmp_path / "m.yaml")
    assert str(err.value) == f"datasette is not installed: pip install -e '{ROOT}[browse]'"
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SessionkitError) as err:
        _client("http://127.0.0.1:5000")
    assert str(err.value) == f"the MLflow client is not installed: pip install -e '{ROOT}[mlflow]'"


def test_serve_without_datasette_is_the_error_alone(monkeypatch, tmp_path):
    """`sessionkit serve` says nothing about serving when it cannot: the one Error line, exit 1."""
    from click.testing import CliRunner

    from sessionkit.cli import cli

    db = str(tmp_path / "s.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", db, "start", "--objective", "x"]).exit_code == 0
    monkeypatch.setitem(sys.modules, "datasette", None)
    out = runner.invoke(cli, ["--db", db, "serve", "--port", "0"])
    assert out.exit_code == 1
    assert out.output == f"Error: datasette is not installed: pip install -e '{ROOT}[browse]'\n"


def test_no_hint_names_a_package_index_install():
    """Every install hint comes from sessionkit.extras."""
    package = ROOT / "sessionkit"
    found = [str(p.relative_to(ROOT)) for p in package.rglob("*.py")
             if p.name != "extras.py" and "install 'sessionkit[" in p.read_text(encoding="utf-8")]
    assert found == []
