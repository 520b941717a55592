"""Finding the packaged templates and patterns.

Installed (editable or not), ``templates/`` and ``patterns/`` ship as the packages
``sessionkit.templates`` and ``sessionkit.patterns``. Run from a plain checkout without installing,
they are the folders at the top of the repository.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def resource_dir(package: str, folder: str):
    """A Traversable for ``package`` (e.g. ``sessionkit.templates``), else the checkout's ``folder``."""
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:
        return _REPO_ROOT / folder


def templates_dir():
    return resource_dir("sessionkit.templates", "templates")


def patterns_dir():
    return resource_dir("sessionkit.patterns", "patterns")
