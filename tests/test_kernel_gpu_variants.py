"""Grouped-query attention, both causal alignments, head dims, gradients and torch.compile on a GPU.

Correctness rule (fresh random inputs, NaN-poisoned outputs):
max|out - ref_fp32| <= 2 * max|sdpa_same_dtype - ref_fp32| + 1e-5, LSE within 1e-3 of the fp32
logsumexp, and rows that see no key give exactly O = 0 and LSE = -inf. Gradients: the same 2x rule
for dq, dk, dv against SDPA's gradients in the same dtype, both measured from fp32 autograd through
the reference. Skipped (with the reason) without torch+CUDA.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

from sessionkit.kernels import checking  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from sessionkit.kernels import load_extension

    load_extension()


@pytest.fixture(params=["auto", "sm80"])
def family(request, monkeypatch):
    if request.param == "sm80":
        monkeypatch.setenv("SESSIONKIT_KERNEL_FAMILY", "sm80")
    else:
        monkeypatch.delenv("SESSIONKIT_KERNEL_FAMILY", raising=False)
    return request.param


def _head_dims():
    return tuple(int(d) for d in torch.ops.sessionkit.flash_attn_head_dims(
        torch.cuda.current_device()))


def _make(b, hq, hkv, sq, sk, d, dtype, seed, layout="bhsd", requires_grad=False):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def one(h, s):
        if layout == "bshd":
            t = torch.randn(b, s, h, d, device="cuda", generator=gen).to(dtype).transpose(1, 2)
        else:
            t = torch.randn(b, h, s, d, device="cuda", generator=gen).to(dtype)
        return t.detach().requires_grad_(requires_grad)

    return one(hq, sq), one(hkv, sk), one(hkv, sk)


def _check_forward(b, hq, hkv, sq, sk, d, dtype, causal, bottom_right, seed, layout="bhsd"):
    from sessionkit.kernels import flash_attention_into

    q, k, v = _make(b, hq, hkv, sq, sk, d, dtype, seed, layout)
    scale = 1 / math.sqrt(d)
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=dtype)
    lse = torch.full(q.shape[:3], float("nan"), device="cuda", dtype=torch.float32)
    flash_attention_into(q, k, v, out, lse, causal=causal, scale=scale,
                         causal_alignment="bottom_right" if bottom_right else "top_left",
                         enable_gqa=hq != hkv)
    torch.cuda.synchronize()
    ref, ref_lse = checking.reference(q, k, v, causal, scale, bottom_right=bottom_right)
    sdpa = checking.sdpa_same_dtype(q, k, v, causal, scale, bottom_right=bottom_right)
    empty = torch.isneginf(ref_lse)
    sdpa_err = float((sdpa.float() - ref).abs().masked_fill(empty[..., None], 0).max())
    assert torch.isfinite(out.float()).all(), "NaN/Inf (unwritten?) in out"
    err = float((out.float() - ref).abs().max())
    assert err <= 2 * sdpa_err + 1e-5, f"max err {err} > 2 * {sdpa_err} + 1e-5"
    assert torch.equal(torch.isneginf(lse), empty), "LSE -inf exactly on rows that see no key"
    if empty.any():
        assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    fin = ~empty
    assert float((lse[fin] - ref_lse[fin]).abs().max()) <= 1e-3


GQA_CASES = [  # (B, H_q, H_kv, Sq, Sk)
    (2, 32, 8, 1024, 1024), (1, 8, 1, 333, 333), (2, 12, 4, 200, 517), (1, 16, 2, 517, 200),
    (8, 32, 8, 1, 4096), (3, 8, 4, 16, 1000), (2, 6, 3, 129, 64),
]


@pytest.mark.parametrize("case", GQA_CASES)
@pytest.mark.parametrize("mask", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gqa_and_alignments(case, mask, dtype, family):
    b, hq, hkv, sq, sk = case
    for i, d in enumerate(_head_dims()):
        _check_forward(b, hq, hkv, sq, sk, d, dtype, mask != "none", mask == "bottom_right",
                       seed=hash((case, mask, d)) % 10_000, layout="bshd" if i % 2 else "bhsd")


DECODE_CASES = [  # (B, H_q, H_kv, Sk): one query row per head against a long key sequence
    (8, 32, 8, 32768), (1, 4, 4, 8192), (2, 16, 1, 5000), (1, 8, 2, 65600), (3, 6, 3, 2048),
    (1, 8, 1, 2048), (1, 512, 2, 3000),
]


@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("mask", ["none", "bottom_right"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_shapes_with_grouped_heads_as_rows(case, mask, dtype, family):
    """Sq=1 with every key visible runs with the query heads of each key/value head as the rows of
    one tile (csrc/flash_api.cpp, launch_decode): same rule, same LSE."""
    b, hq, hkv, sk = case
    for d in _head_dims():
        _check_forward(b, hq, hkv, 1, sk, d, dtype, mask != "none", mask == "bottom_right",
                       seed=hash((case, mask, d)) % 10_000)


LONG_KEY_CASES = [  # (B, H_q, H_kv, Sq, Sk): from 8192 keys D=128 non-causal runs key blocks of 176
    (1, 2, 2, 300, 8192), (1, 4, 2, 129, 9001), (2, 2, 1, 2, 8200), (1, 2, 2, 1000, 16384),
]


@pytest.mark.parametrize("case", LONG_KEY_CASES)
@pytest.mark.parametrize("mask", ["none", "bottom_right"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_long_key_sequences(case, mask, dtype, family):
    """Long key sequences: without a mask, the long-keys tile shape at D=128 (a ragged last block
    of 176 keys at 9001 and 8200, grouped heads); bottom-right causal runs the causal kernels."""
    b, hq, hkv, sq, sk = case
    for d in _head_dims():
        _check_forward(b, hq, hkv, sq, sk, d, dtype, mask != "none", mask == "bottom_right",
                       seed=hash((case, mask, d)) % 10_000, layout="bshd" if sq % 2 else "bhsd")


TAIL_SPLIT_CASES = [  # (B, H_q, H_kv, Sq, Sk, D): non-causal shapes whose last round is split
    (2, 16, 16, 1100, 2000, 128),  # 288 tiles on 132 SMs: 24 tail tiles of 16 key blocks
    (1, 1, 1, 4096, 4100, 128),    # 32 tiles, none whole; a ragged last key block
    (2, 8, 2, 300, 6000, 128),     # grouped heads, a ragged last query tile
    (1, 4, 4, 1000, 8192, 128),    # the long-keys tile (key blocks of 176)
    (1, 2, 2, 700, 5000, 256),     # key blocks of 80
    (2, 3, 3, 333, 3000, 96),
    (3, 5, 5, 200, 2500, 64),      # D=64 (three consumers, 192-row tiles; split since v20)
    (3, 5, 5, 200, 2000, 64),      # D=64 short keys: every tile split, the 8-row ones with two idle consumers
]


@pytest.mark.parametrize("case", TAIL_SPLIT_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tail_split_is_correct_and_deterministic(case, dtype, family):
    """Non-causal shapes whose last round of tiles is cut into pieces by key blocks on a 132-SM
    H200 (csrc/sm90/tail_split.cuh; the plan itself is checked on the host in
    test_tail_split_plan.py): same rule as every shape, and two runs give the same bits (the
    pieces are merged in a fixed order, whichever finishes last)."""
    from sessionkit.kernels import flash_attention_into

    b, hq, hkv, sq, sk, d = case
    if d not in _head_dims():
        pytest.skip(f"head_dim {d} is not built for this family")
    _check_forward(b, hq, hkv, sq, sk, d, dtype, False, False, seed=hash(case) % 10_000)
    q, k, v = _make(b, hq, hkv, sq, sk, d, dtype, seed=7)
    runs = []
    for _ in range(2):
        out = torch.full(q.shape, float("nan"), device="cuda", dtype=dtype)
        lse = torch.full(q.shape[:3], float("nan"), device="cuda", dtype=torch.float32)
        flash_attention_into(q, k, v, out, lse, causal=False, scale=1 / math.sqrt(d),
                             enable_gqa=hq != hkv)
        runs.append((out, lse))
    torch.cuda.synchronize()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_a_split_shape_takes_its_scratch_memory():
    """The tail split runs only when its scratch memory was had (flash_api.cpp, Scratch); a
    failed allocation falls back to whole tiles, correct but up to 5x slower on few tiles over
    long keys. B1 H1 Sq=1024 Sk=16384 D128 on 132 SMs is 8 tiles of 94 key blocks of 176, split
    into 8 tiles x 17 pieces (tests/test_tail_split_plan.py): the call makes one allocation more
    than the same call over 256 keys, of at least the pieces' float32 partials. (256 keys are 2
    blocks of 128, so a CTA would save 1 block, under SK_SM90_TAIL_MIN_SAVED: no split. 528 keys,
    5 blocks, split too.)"""
    from sessionkit.kernels import flash_attention

    device = torch.cuda.current_device()
    if torch.ops.sessionkit.flash_attn_family(device) != "sm90":
        pytest.skip("the tail split is the sm90 family's")
    if torch.cuda.get_device_properties(device).multi_processor_count != 132:
        pytest.skip("the plan below is for 132 SMs (H100 SXM, H200)")

    def allocations(seq_k):
        q, k, v = _make(1, 1, 1, 1024, seq_k, 128, torch.bfloat16, seed=seq_k)
        flash_attention(q, k, v)  # loaded, and the allocator warm
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats()
        flash_attention(q, k, v)
        torch.cuda.synchronize()
        after = torch.cuda.memory_stats()
        return (after["allocation.all.allocated"] - before["allocation.all.allocated"],
                after["allocated_bytes.all.allocated"] - before["allocated_bytes.all.allocated"])

    whole_count, whole_bytes = allocations(256)  # no split
    split_count, split_bytes = allocations(16384)
    partials = 8 * 17 * 2 * 128 * (128 // 8 + 1) * 16  # tiles x pieces x consumers x threads x bytes
    assert split_count == whole_count + 1, (split_count, whole_count)
    assert split_bytes - whole_bytes >= partials, (split_bytes, whole_bytes, partials)


@pytest.mark.parametrize("case", [(2, 16, 4, 4096), (1, 8, 8, 9000)])
def test_decode_into_strided_out_and_lse(case, family):
    """Decode-shaped calls write out and lse through strided views of the caller's buffers (the
    grouped heads as rows, the split-KV merge): a (B, 1, H, D) buffer seen as (B, H, 1, D)."""
    from sessionkit.kernels import flash_attention_into

    b, hq, hkv, sk = case
    for d in _head_dims():
        q, k, v = _make(b, hq, hkv, 1, sk, d, torch.bfloat16, sk + d)
        out_buf = torch.full((b, 1, hq, d + 8), float("nan"), device="cuda", dtype=torch.bfloat16)
        out = out_buf[..., :d].transpose(1, 2)  # strides (H*(D+8), D+8, H*(D+8), 1)
        lse_buf = torch.full((b, 1, hq, 3), float("nan"), device="cuda", dtype=torch.float32)
        lse = lse_buf[..., 0].transpose(1, 2)
        scale = 1 / math.sqrt(d)
        flash_attention_into(q, k, v, out, lse, scale=scale, enable_gqa=hq != hkv)
        torch.cuda.synchronize()
        ref, ref_lse = checking.reference(q, k, v, False, scale)
        sdpa = checking.sdpa_same_dtype(q, k, v, False, scale)
        bound = 2 * float((sdpa.float() - ref).abs().max()) + 1e-5
        assert float((out.float() - ref).abs().max()) <= bound
        assert float((lse - ref_lse).abs().max()) <= 1e-3
        assert torch.isnan(out_buf[..., d:]).all() and torch.isnan(lse_buf[..., 1:]).all()


@pytest.mark.parametrize("sq,sk", [(9, 4), (300, 100), (128, 1), (1000, 999)])
def test_rows_that_see_no_key_are_zero_and_minus_inf(sq, sk, family):
    for d in _head_dims():
        _check_forward(2, 4, 2, sq, sk, d, torch.bfloat16, True, True, seed=sq + d)


@pytest.mark.parametrize("sq,sk", [(2048, 512), (4096, 256), (4096, 1100)])
def test_many_keyless_tiles_in_a_row(sq, sk, family):
    """Bottom-right causal with seq_len_q - seq_len_k of 1,536 rows or more and more query tiles
    than SMs (16 heads): most tiles see no key, and the persistent CTAs take several of them one
    after the other, which an earlier draft of the staggered consumers (SK_SM90_STAGGER) hung on.
    (4096, 1100) runs D=64's mid-keys kernel: three consumers and four stages, 352 tiles."""
    for d in _head_dims():
        _check_forward(1, 16, 16, sq, sk, d, torch.bfloat16, True, True, seed=sq + sk + d)


@pytest.mark.parametrize("sq,sk", [(4200, 2100), (3000, 2049)])
@pytest.mark.parametrize("bottom_right", [False, True], ids=["top_left", "bottom_right"])
def test_long_key_causal_with_more_queries_than_keys(sq, sk, bottom_right, family):
    """seq_len_q > seq_len_k > 2048, causal: the long-keys kernels (at D=64 three consumers on
    192-row tiles since v21), whose last rows see every key (top-left) or whose first
    seq_len_q - seq_len_k rows see none (bottom-right), with grouped heads."""
    for d in _head_dims():
        _check_forward(1, 4, 2, sq, sk, d, torch.bfloat16, True, bottom_right, seed=sq + sk + d)


@pytest.mark.parametrize("sq,sk,dtype", [
    (1025, 1025, torch.bfloat16), (2048, 1100, torch.bfloat16), (1537, 1999, torch.bfloat16),
    (4000, 1500, torch.bfloat16), (2048, 2048, torch.float16),
    # fewer than 1025 queries: the short-keys kernel up to 2048 keys (sm90/dispatch.h)
    (1024, 2048, torch.bfloat16), (700, 2048, torch.bfloat16), (64, 1300, torch.float16)])
@pytest.mark.parametrize("bottom_right", [False, True], ids=["top_left", "bottom_right"])
def test_mid_key_causal(sq, sk, dtype, bottom_right, family):
    """1024 < seq_len_k <= 2048, causal: at D=64 the sm90 family's mid-keys kernel (the short-keys
    tile on three consumers, v22) where seq_len_q > 1024, at both ends of its range, with as many
    and more queries than keys, partial last key and query blocks, grouped heads and both
    alignments (bottom-right with seq_len_q > seq_len_k leaves whole 192-row tiles without a key);
    and the short-keys kernel on the same key lengths with fewer queries."""
    for d in _head_dims():
        _check_forward(1, 4, 2, sq, sk, d, dtype, True, bottom_right, seed=sq * 3 + sk + d)


def test_correctness_step_configs_pass():
    """The correctness step's own random configs (GQA, both alignments, Sq != Sk, every head dim
    of the family) through its checker."""
    from sessionkit.kernels.correctness import load_kernel

    loaded = load_kernel()
    configs = checking.generate_configs(64, 12345, head_dims=loaded.head_dims)
    assert any(c.num_heads_k != c.num_heads for c in configs)
    assert any(c.bottom_right for c in configs)
    results = checking.run_checks(loaded.fn, configs, loaded.device)
    failed = [checking.failure_line(r) for r in results if not r.passed]
    assert not failed, "\n".join(failed[:5])


def test_gqa_reads_kv_in_place():
    """No copy of k or v: a GQA call allocates about O and the LSE only."""
    from sessionkit.kernels import flash_attention

    q, k, v = _make(2, 32, 8, 2048, 2048, 128, torch.bfloat16, 1)
    flash_attention(q, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    flash_attention(q, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    kv_copy = k.numel() * k.element_size() * 4  # repeat_interleave of k and v
    assert extra < q.numel() * q.element_size() * 1.1 + kv_copy / 8


def test_bad_head_ratio_is_a_clear_error():
    from sessionkit.kernels import flash_attention

    q, k, v = _make(1, 6, 4, 16, 16, 64, torch.float16, 0)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        flash_attention(q, k, v, enable_gqa=True)
    with pytest.raises(RuntimeError, match="must be a multiple of the number of key/value heads"):
        torch.ops.sessionkit.flash_attn_fwd(q, k, v, False, 0.1, False)


def test_unsupported_head_dim_error_lists_the_family_dims():
    q = torch.randn(1, 2, 16, 72, device="cuda", dtype=torch.float16)
    dims = _head_dims()
    with pytest.raises(RuntimeError, match="supported head dims are " + ".*".join(map(str, dims))):
        torch.ops.sessionkit.flash_attn_fwd(q, q, q, False, 0.1, False)


# -- gradients ------------------------------------------------------------------------------------

GRAD_CASES = [  # (B, H_q, H_kv, Sq, Sk, causal, bottom_right)
    (2, 8, 8, 256, 256, True, False), (2, 8, 2, 200, 333, True, True),
    (1, 8, 1, 333, 200, True, False), (2, 4, 2, 128, 128, False, False),
    (1, 4, 4, 100, 40, True, True),
]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gradients_within_2x_of_sdpa(case, dtype):
    from sessionkit.kernels import flash_attention

    b, hq, hkv, sq, sk, causal, br = case
    for d in _head_dims():
        q, k, v = _make(b, hq, hkv, sq, sk, d, dtype, seed=sq * d, requires_grad=True)
        out = flash_attention(q, k, v, causal=causal, enable_gqa=hq != hkv,
                              causal_alignment="bottom_right" if br else "top_left")
        grad = torch.randn(out.shape, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(d))
        (out.float() * grad).sum().backward()
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref, _ = checking.reference(q32, k32, v32, causal, 1 / math.sqrt(d), bottom_right=br)
        (ref * grad).sum().backward()
        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
        sdpa = checking.sdpa_same_dtype(qs, ks, vs, causal, 1 / math.sqrt(d), bottom_right=br)
        rows = torch.isfinite(sdpa.float()).all(-1, keepdim=True)
        (sdpa.float().nan_to_num(0.0) * grad * rows).sum().backward()
        for name, ours, r, theirs in zip("qkv", (q, k, v), (q32, k32, v32), (qs, ks, vs)):
            assert ours.grad is not None and torch.isfinite(ours.grad.float()).all()
            err = float((ours.grad.float() - r.grad).abs().max())
            bound = 2 * float((theirs.grad.float().nan_to_num(0.0) - r.grad).abs().max()) + 1e-5
            assert err <= bound, f"d{name} (D={d}): {err} > {bound}"


def test_opcheck_with_gradients():
    for b, hq, hkv, sq, sk, causal, br in GRAD_CASES[:3]:
        q, k, v = _make(b, hq, hkv, sq, sk, 64, torch.bfloat16, seed=3, requires_grad=True)
        torch.library.opcheck(torch.ops.sessionkit.flash_attn_fwd.default,
                              (q, k, v, causal, 0.125, br))


# -- torch.compile ----------------------------------------------------------------------------------

class Block(torch.nn.Module):
    """Projection, view, transpose, attention (GQA), output projection."""

    def __init__(self, hidden=1024, heads=8, kv_heads=2, alignment="top_left"):
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, hidden // heads
        self.q = torch.nn.Linear(hidden, hidden, bias=False)
        self.kv = torch.nn.Linear(hidden, 2 * kv_heads * self.dim, bias=False)
        self.o = torch.nn.Linear(hidden, hidden, bias=False)
        self.alignment = alignment

    def forward(self, x):
        from sessionkit.kernels import flash_attention

        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.dim).transpose(1, 2)
        kv = self.kv(x).view(b, s, 2, self.kv_heads, self.dim)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        out, lse = flash_attention(q, k, v, causal=True, return_lse=True, enable_gqa=True,
                                   causal_alignment=self.alignment)
        return self.o(out.transpose(1, 2).reshape(b, s, -1)), lse


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    torch.manual_seed(0)
    block = Block().cuda().bfloat16()
    compiled = torch.compile(block, fullgraph=True, dynamic=dynamic)
    for s in (256, 384, 1000):
        x = torch.randn(2, s, 1024, device="cuda", dtype=torch.bfloat16)
        y, lse = block(x)
        y.float().square().mean().backward()
        eager = [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        yc, lsec = compiled(x)
        yc.float().square().mean().backward()
        comp = [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        assert torch.allclose(y.float(), yc.float(), atol=2e-2, rtol=2e-2)
        assert torch.allclose(lse, lsec, atol=1e-3)
        for a, c in zip(eager, comp):
            assert torch.allclose(a.float(), c.float(), atol=2e-2, rtol=5e-2)


def _within_rule(q, k, v, causal, out, lse):
    """The 2x rule and the LSE tolerance for one finished call (top-left mask, default scale)."""
    scale = 1 / math.sqrt(q.shape[-1])
    ref, ref_lse = checking.reference(q, k, v, causal, scale)
    sdpa = checking.sdpa_same_dtype(q, k, v, causal, scale)
    sdpa_err = float((sdpa.float() - ref).abs().max())
    assert torch.isfinite(out.float()).all(), "NaN/Inf (unwritten?) in out"
    err = float((out.float() - ref).abs().max())
    assert err <= 2 * sdpa_err + 1e-5, f"max err {err} > 2 * {sdpa_err} + 1e-5"
    assert float((lse - ref_lse).abs().max()) <= 1e-3


# Causal shapes of different tile counts, most of them several times the number of SMs, so that
# the sm90 causal kernels hand out most tiles from their stream's counter (which each launch
# leaves at 0 for the next one on that stream): (B, H, S, D).
STREAM_SHAPES = [(4, 16, 2048, 128), (8, 16, 1024, 64), (2, 4, 1000, 64), (2, 8, 4097, 128),
                 (4, 16, 1536, 64)]


def _sm90_causal_counters():
    """Whether this device runs the sm90 family, whose causal kernels use stream counters."""
    return torch.ops.sessionkit.flash_attn_family(torch.cuda.current_device()) == "sm90"


def _prepared_call(i, shape):
    b, h, s, d = shape
    q, k, v = _make(b, h, h, s, s, d, torch.bfloat16, seed=100 + i)
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=q.dtype)
    lse = torch.full(q.shape[:3], float("nan"), device="cuda", dtype=torch.float32)
    return q, k, v, out, lse


def test_causal_calls_back_to_back_on_streams_and_in_graphs():
    """Causal calls queued without a host sync in between, on the current stream and on two side
    streams at once, and a captured CUDA graph replayed between eager calls: every output within
    the rule, and every stream's tile counter back at 0 afterwards (a launch that left it off 0
    would make the next launch on that stream skip tiles: NaN rows in a poisoned out)."""
    from sessionkit.kernels import flash_attention_into

    device = torch.cuda.current_device()
    counters = _sm90_causal_counters()

    # One stream, back to back, twice over.
    calls = [_prepared_call(i, shape) for i, shape in enumerate(STREAM_SHAPES * 2)]
    torch.cuda.synchronize()
    for q, k, v, out, lse in calls:
        flash_attention_into(q, k, v, out, lse, causal=True)
    torch.cuda.synchronize()
    for q, k, v, out, lse in calls:
        _within_rule(q, k, v, True, out, lse)
    if counters:
        assert torch.ops.sessionkit._stream_tile_counter(device) == 0

    # Two side streams, concurrently.
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    calls = [_prepared_call(10 + i, shape) for i, shape in enumerate(STREAM_SHAPES * 2)]
    torch.cuda.synchronize()
    for i, (q, k, v, out, lse) in enumerate(calls):
        with torch.cuda.stream(streams[i % 2]):
            flash_attention_into(q, k, v, out, lse, causal=True)
    torch.cuda.synchronize()
    for q, k, v, out, lse in calls:
        _within_rule(q, k, v, True, out, lse)
    if counters:
        for stream in streams:
            with torch.cuda.stream(stream):
                assert torch.ops.sessionkit._stream_tile_counter(device) == 0

    # A CUDA graph of one causal call, replayed on fresh inputs between eager calls.
    q, k, v, out, lse = _prepared_call(20, STREAM_SHAPES[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        flash_attention_into(q, k, v, out, lse, causal=True)  # warm up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        flash_attention_into(q, k, v, out, lse, causal=True)
    for i in range(3):
        fresh = _prepared_call(30 + i, STREAM_SHAPES[0])
        q.copy_(fresh[0]), k.copy_(fresh[1]), v.copy_(fresh[2])
        out.fill_(float("nan")), lse.fill_(float("nan"))
        graph.replay()
        eager = _prepared_call(40 + i, STREAM_SHAPES[1 + i % 3])
        flash_attention_into(*eager, causal=True)
        torch.cuda.synchronize()
        _within_rule(q, k, v, True, out, lse)
        _within_rule(*eager[:3], True, *eager[3:])
    if counters:
        assert torch.ops.sessionkit._stream_tile_counter(device) == 0


def test_a_counter_left_off_zero_is_seen():
    """The checks above can fail: with the stream's counter set to 5 before a launch, the launch
    either leaves tiles unwritten or leaves the counter off 0."""
    from sessionkit.kernels import flash_attention_into

    if not _sm90_causal_counters():
        pytest.skip("the sm80 family has no tile counter (this device runs it)")
    device = torch.cuda.current_device()
    q, k, v, out, lse = _prepared_call(50, STREAM_SHAPES[0])
    flash_attention_into(q, k, v, out, lse, causal=True)  # the stream has its counter now
    torch.cuda.synchronize()
    assert torch.ops.sessionkit._stream_tile_counter(device, 5) == 0
    out.fill_(float("nan"))
    flash_attention_into(q, k, v, out, lse, causal=True)
    torch.cuda.synchronize()
    left = torch.ops.sessionkit._stream_tile_counter(device, 0)  # and back to 0
    assert torch.isnan(out).any() or left != 0, "a counter of 5 at launch went unnoticed"
    out.fill_(float("nan"))
    flash_attention_into(q, k, v, out, lse, causal=True)
    torch.cuda.synchronize()
    _within_rule(q, k, v, True, out, lse)


def test_first_causal_call_on_a_side_stream_behind_a_busy_default_stream():
    """In a fresh process, the first causal call (the stream's counter is made and zeroed then)
    runs on a side stream while the default stream is still busy: the zeroing is ordered on the
    side stream, before the kernel, so the output is within the rule."""
    import subprocess
    import sys

    code = """
import math, torch
from sessionkit.kernels import checking, flash_attention_into, load_extension
load_extension()
gen = torch.Generator(device="cuda").manual_seed(7)
q, k, v = (torch.randn(4, 16, 2048, 128, device="cuda", generator=gen).to(torch.bfloat16)
           for _ in range(3))
torch.cuda.synchronize()
torch.cuda._sleep(500_000_000)  # the default stream stays busy for a while
side = torch.cuda.Stream()
with torch.cuda.stream(side):
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=q.dtype)
    lse = torch.full(q.shape[:3], float("nan"), device="cuda")
    flash_attention_into(q, k, v, out, lse, causal=True)
side.synchronize()
torch.cuda.synchronize()
scale = 1 / math.sqrt(128)
ref, _ = checking.reference(q, k, v, True, scale)
sdpa = checking.sdpa_same_dtype(q, k, v, True, scale)
err = float((out.float() - ref).abs().max())
bound = 2 * float((sdpa.float() - ref).abs().max()) + 1e-5
print("ok" if torch.isfinite(out.float()).all() and err <= bound else f"bad {err} > {bound}")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok", proc.stdout
