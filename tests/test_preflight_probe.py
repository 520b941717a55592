"""The real probe reads torch in a child process; its stand-in answers like the torch module."""

from __future__ import annotations

import sys

import pytest

from sessionkit.preflight import Probe


def test_torch_stand_in_matches_the_real_module():
    torch = pytest.importorskip("torch")
    stand_in = Probe().import_torch()
    assert stand_in.__version__ == str(torch.__version__)
    assert stand_in.version.cuda == torch.version.cuda
    assert stand_in.cuda.is_available() == torch.cuda.is_available()
    assert stand_in.cuda.device_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_missing_torch_is_an_import_error(monkeypatch):
    probe = Probe()
    monkeypatch.setattr(probe, "run", lambda argv, timeout=0: (1, "ModuleNotFoundError: No module named 'torch'"))
    with pytest.raises(ImportError, match="cannot import torch: ModuleNotFoundError: No module named 'torch'"):
        probe.import_torch()


def test_wrapper_nvcc_is_followed_to_its_toolkit(tmp_path):
    from sessionkit import toolchain

    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    assert toolchain.cuda_home_for(str(wrapper), env={}) == str(toolkit)
    # no wrapper target with headers: $CUDA_HOME is next
    wrapper.write_text("#!/bin/sh\nexec /nowhere/bin/nvcc\n")
    assert toolchain.cuda_home_for(str(wrapper), env={"CUDA_HOME": str(toolkit)}) == str(toolkit)
