"""The command that installs an optional extra (``plots``, ``mlflow``, ``browse``, ``kernel``), as it
fits the way this sessionkit was installed.

sessionkit is usually installed from a clone of its repository (``pip install -e .``); it is not on
PyPI, so ``pip install 'sessionkit[plots]'`` would fail or fetch something else. Where the package
came from is read from the files pip leaves behind (PEP 610's ``direct_url.json``, in the
distribution's ``.dist-info``) and from where the imported package lives:

- a checkout (the package folder sits next to a ``pyproject.toml`` naming sessionkit: an editable
  install, or ``PYTHONPATH``): ``pip install -e '<checkout>[plots]'``;
- installed from a local folder, not editable: ``pip install '<folder>[plots]'``;
- installed from a VCS URL or an archive URL: ``pip install 'sessionkit[plots] @ <url>'``;
- anything else (an index): ``pip install 'sessionkit[plots]'``.

The folder is ``.`` when it is the working directory, else its absolute path.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from urllib.parse import unquote, urlparse

EXTRAS = ("kernel", "plots", "mlflow", "browse", "test")


def _checkout_of_package() -> Path | None:
    """The repository folder the imported package lives in, or None when it lives elsewhere
    (site-packages)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    import tomllib

    try:
        name = tomllib.loads(text).get("project", {}).get("name")
    except tomllib.TOMLDecodeError:
        return None
    return root if name == "sessionkit" else None


def _direct_url() -> dict | None:
    """The ``direct_url.json`` of an installed sessionkit distribution (PEP 610), or None (installed
    from an index, or not installed)."""
    from importlib import metadata

    for dist in metadata.distributions(name="sessionkit"):
        text = dist.read_text("direct_url.json")
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _shown_path(path: Path, cwd: Path) -> str:
    try:
        if path.resolve() == cwd.resolve():
            return "."
    except OSError:
        pass
    return str(path)


def install_command(extra: str, *, checkout: Path | None = None, direct_url: dict | None = None,
                    cwd: Path | None = None) -> str:
    """The ``pip install`` command line that adds ``extra`` to this installation.

    ``checkout`` and ``direct_url`` describe the installation (see the module docstring); left out,
    they are found as this process has it (:func:`install_hint`). Raises ``ValueError`` for an extra
    that sessionkit does not declare.
    """
    if extra not in EXTRAS:
        raise ValueError(f"sessionkit has no extra {extra!r}; it has {', '.join(EXTRAS)}")
    cwd = cwd or Path(os.getcwd())
    if checkout is not None:
        return f"pip install -e {shlex.quote(_shown_path(checkout, cwd) + f'[{extra}]')}"
    url = (direct_url or {}).get("url")
    if isinstance(url, str) and url:
        parsed = urlparse(url)
        dir_info = direct_url.get("dir_info")
        if parsed.scheme == "file" and isinstance(dir_info, dict):
            folder = _shown_path(Path(unquote(parsed.path)), cwd) + f"[{extra}]"
            editable = "-e " if dir_info.get("editable") else ""
            return f"pip install {editable}{shlex.quote(folder)}"
        vcs = direct_url.get("vcs_info")
        if isinstance(vcs, dict) and vcs.get("vcs"):
            url = f"{vcs['vcs']}+{url}" + (f"@{vcs['commit_id']}" if vcs.get("commit_id") else "")
        return f"pip install {shlex.quote(f'sessionkit[{extra}] @ {url}')}"
    return f"pip install {shlex.quote(f'sessionkit[{extra}]')}"


def install_hint(extra: str) -> str:
    """The ``pip install`` command that adds ``extra`` to the running sessionkit, for the hints of
    errors and reports, e.g. ``pip install -e '/home/me/sessionkit[plots]'`` for a checkout.
    Raises ``ValueError`` for an unknown extra."""
    checkout = _checkout_of_package()
    return install_command(extra, checkout=checkout,
                           direct_url=None if checkout is not None else _direct_url())
