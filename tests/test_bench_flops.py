"""The shared attention FLOP count, checked against brute-force mask counting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.bench.flops import attention_flops, attention_pairs, causal_pairs, tflops


def brute_force_pairs(sq: int, sk: int) -> int:
    # top-left aligned causal mask: query i sees key j when j <= i (torch.tril of Sq x Sk)
    return sum(1 for i in range(sq) for j in range(sk) if j <= i)


@pytest.mark.parametrize("sq, sk", [(1, 1), (4, 4), (3, 7), (7, 3), (1, 9), (9, 1), (16, 5)])
def test_causal_pairs_match_brute_force(sq, sk):
    assert causal_pairs(sq, sk) == brute_force_pairs(sq, sk)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_causal_pairs_match_brute_force_fuzzed(sq, sk):
    assert causal_pairs(sq, sk) == brute_force_pairs(sq, sk)


def test_torch_tril_agrees_when_torch_is_present():
    torch = pytest.importorskip("torch")
    for sq, sk in [(5, 12), (12, 5), (8, 8)]:
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=0)
        assert int(mask.sum()) == causal_pairs(sq, sk)


def test_flops_formula():
    # 4 * B * H * D per pair: Q K^T and P V each cost 2 * D per (query, key) pair
    assert attention_flops(1, 1, 2, 3, 8, False) == 4 * 8 * 6
    assert attention_flops(2, 3, 4, 4, 64, True) == 4 * 2 * 3 * 64 * 10
    b, h, s, d = 4, 16, 4096, 128
    full = attention_flops(b, h, s, s, d, False)
    assert full == 4 * b * h * s * s * d
    causal = attention_flops(b, h, s, s, d, True)
    assert causal == 4 * b * h * d * s * (s + 1) // 2
    assert attention_pairs(5, 3, False) == 15


def test_tflops():
    assert tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert tflops(1e12, 0) is None and tflops(1e12, None) is None
    with pytest.raises(ValueError):
        causal_pairs(-1, 3)
