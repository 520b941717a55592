"""The softmax's software exp2 (``poly_exp2`` in csrc/common/utils.cuh), compiled from the kernels'
own header into a host program with nvcc: accurate to well below the rounding of P to fp16/bf16 on
every exponent the softmax produces, exactly 1 at 0, and 0 for masked (-inf) or tiny scores, as
MUFU.EX2 with flush-to-zero gives."""

from __future__ import annotations

import math

import pytest
from host_check import run_host_check


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return run_host_check("poly_exp2_check.cu", tmp_path_factory.mktemp("poly"))


def test_relative_error_is_below_the_rounding_of_p(output):
    worst = float(output.split("max_rel_err ")[1].split()[0])
    # fp16 keeps 11 significant bits (half an ulp: 2^-11 = 4.9e-4); the fit's bound is 7.5e-5
    assert worst < 8e-5
    assert worst < 2.0 ** -11 / 4


def test_edges(output):
    edges = {float(x): float(y) for x, y in
             (line.split()[1:] for line in output.splitlines() if line.startswith("edge"))}
    assert abs(edges[0.0] - 1.0) < 8e-5 and abs(edges[-1.0] - 0.5) < 4e-5
    assert edges[-125.0] == pytest.approx(2.0 ** -125, rel=1e-4)
    for x in (-125.5, -126.0, -200.0, -math.inf):
        assert edges[x] == 0.0
