"""The one FLOP count for attention forward, shared by the bench step, reports and profiles."""

from __future__ import annotations


def causal_pairs(seq_len_q: int, seq_len_k: int) -> int:
    """Unmasked (query, key) pairs of a top-left aligned causal mask.

    Query row ``i`` sees keys ``0..i`` (PyTorch ``is_causal=True``, ``tril`` of the Sq x Sk scores),
    so row ``i`` keeps ``min(i + 1, Sk)`` keys.
    """
    if seq_len_q < 0 or seq_len_k < 0:
        raise ValueError("sequence lengths must be >= 0")
    full = min(seq_len_q, seq_len_k)  # rows 0..full-1 keep i+1 keys
    pairs = full * (full + 1) // 2
    if seq_len_q > seq_len_k:  # later rows keep every key
        pairs += (seq_len_q - seq_len_k) * seq_len_k
    return pairs


def causal_pairs_bottom_right(seq_len_q: int, seq_len_k: int) -> int:
    """Unmasked pairs of a bottom-right aligned causal mask: row ``i`` keeps keys
    ``0..i + Sk - Sq``, i.e. ``clamp(i + Sk - Sq + 1, 0, Sk)`` of them (FlashAttention 2+)."""
    if seq_len_q < 0 or seq_len_k < 0:
        raise ValueError("sequence lengths must be >= 0")
    offset = seq_len_k - seq_len_q
    first = max(0, -offset)  # rows before this one see no key
    total = 0
    # rows first..Sq-1 keep i + offset + 1 keys, between 1 and Sk
    n = seq_len_q - first
    if n > 0:
        lo = first + offset + 1
        hi = seq_len_q - 1 + offset + 1
        total = (lo + hi) * n // 2
    return total


def attention_pairs(seq_len_q: int, seq_len_k: int, causal: bool,
                    bottom_right: bool = False) -> int:
    if not causal:
        return seq_len_q * seq_len_k
    if bottom_right:
        return causal_pairs_bottom_right(seq_len_q, seq_len_k)
    return causal_pairs(seq_len_q, seq_len_k)


def attention_flops(batch_size: int, num_heads: int, seq_len_q: int, seq_len_k: int,
                    head_dim: int, causal: bool, *, bottom_right: bool = False) -> int:
    """Forward FLOPs: two matmuls (Q K^T and P V), 2 * head_dim each, per unmasked pair.

    Softmax and scaling are not counted, the usual convention for attention TFLOP/s.
    """
    return 4 * batch_size * num_heads * head_dim * attention_pairs(seq_len_q, seq_len_k, causal,
                                                                   bottom_right)


def tflops(flops: float, latency_ms: float | None) -> float | None:
    if not latency_ms or latency_ms <= 0:
        return None
    return flops / (latency_ms * 1e-3) / 1e12
