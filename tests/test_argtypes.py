"""sessionkit.argtypes: the benchmark scripts' argparse types."""

from __future__ import annotations

import argparse

import pytest

from sessionkit.argtypes import config_text, positive_int


def test_a_config_is_returned_as_given():
    assert config_text("2,4,128,128,64,bf16,1") == "2,4,128,128,64,bf16,1"


@pytest.mark.parametrize("text", ["2,4,128", "2,4,128,128,64,int8,1", "0,4,128,128,64,bf16,1", ""])
def test_a_bad_config_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError):
        config_text(text)


@pytest.mark.parametrize("text, value", [("1", 1), ("20", 20)])
def test_positive_int(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "2.5", "x", ""])
def test_not_a_positive_int(text):
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of at least 1"):
        positive_int(text)


def test_scripts_say_a_bad_config_in_one_usage_line(capsys):
    from scripts import load_script

    module = load_script("benchmarks/launch_profile.py")
    with pytest.raises(SystemExit) as exc:
        module.main(["--config", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("usage:") is False and "argument --config" in err[-1]
