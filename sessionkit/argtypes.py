"""argparse types shared by the scripts in benchmarks/ (the CLI's own types are click's, in
:mod:`sessionkit.paramtypes`): each returns the parsed value or raises
``argparse.ArgumentTypeError`` with a one-line reason, which argparse prints as a usage error."""

from __future__ import annotations

import argparse


def config_text(text: str) -> str:
    """A ``B,H,Sq,Sk,D,dtype,causal[,H_kv]`` config, returned as given once
    :func:`sessionkit.attention.parse_config` accepts it."""
    from .attention import parse_config
    from .errors import UsageError

    try:
        parse_config(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
