"""The checking library on the CPU: configs, reference, rule, poisoning and localization.

Kernels here are small Python functions: correct ones (fp32 math rounded to the dtype, and SDPA in
the dtype) must pass, and deliberately wrong ones must fail with the fault named exactly.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from sessionkit import attention  # noqa: E402
from sessionkit.errors import SessionkitError, UsageError  # noqa: E402
from sessionkit.kernels import checking  # noqa: E402
from sessionkit.kernels.checking import Config  # noqa: E402

SMALL_LENS = (1, 17, 64, 113)
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def cfg(*, dtype="bf16", b=2, h=3, sq=17, sk=33, d=64, causal=False, layout="bhsd", seed=1, idx=0):
    return Config(idx=idx, dtype=dtype, batch_size=b, num_heads=h, seq_len_q=sq, seq_len_k=sk,
                  head_dim=d, causal=causal, layout=layout, seed=seed)


def mask_top_left(sq, sk):
    return torch.ones(sq, sk, dtype=torch.bool).triu(1)  # True = masked (key after the row)


def attention64(q, k, v, causal, scale, mask=None, bottom_right=False):
    """float64 attention written out element-wise in blocks, independent of checking.reference.
    k and v may have fewer heads (grouped-query); rows that see no key give 0 and -inf."""
    ratio = q.shape[1] // k.shape[1]
    qd = q.double()
    kd, vd = (t.double().repeat_interleave(ratio, 1) for t in (k, v))
    s = torch.einsum("bhid,bhjd->bhij", qd, kd) * scale
    if mask is None and causal:
        sq, sk = q.shape[2], k.shape[2]
        mask = (torch.ones(sq, sk, dtype=torch.bool).triu(1 + sk - sq) if bottom_right
                else mask_top_left(sq, sk))
    if mask is not None:
        s = s.masked_fill(mask, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    return torch.einsum("bhij,bhjd->bhid", p, vd), lse


def exact_kernel(q, k, v, out, lse, causal, scale, causal_alignment="top_left",
                 enable_gqa=False):
    """Correct: float64 math, rounded once to the output dtype."""
    o, l = attention64(q, k, v, causal, scale, bottom_right=causal_alignment == "bottom_right")
    out.copy_(o.to(out.dtype))
    lse.copy_(l.float())


def sdpa_kernel(q, k, v, out, lse, causal, scale, causal_alignment="top_left", enable_gqa=False):
    """Correct within the rule: SDPA in the inputs' dtype (0 on rows that see no key), LSE in
    float64."""
    bottom_right = causal_alignment == "bottom_right"
    o = checking.sdpa_same_dtype(q, k, v, causal, scale, bottom_right=bottom_right)
    out.copy_(torch.nan_to_num(o, nan=0.0))
    lse.copy_(attention64(q, k, v, causal, scale, bottom_right=bottom_right)[1].float())


# -------------------------------------------------------------------------------------------------
# configs


@FAST
@given(seed=st.integers(0, 2**63 - 1), count=st.integers(50, 130))
def test_generated_configs_span_the_space(seed, count):
    configs = checking.generate_configs(count, seed)
    assert [c.idx for c in configs] == list(range(count))
    combos = Counter((c.dtype, c.head_dim, c.causal) for c in configs)
    assert set(combos) == {(dt, d, c) for dt in ("fp16", "bf16") for d in (64, 128)
                           for c in (False, True)}
    # every block of 8 consecutive configs has each combination once
    for start in range(0, count - count % 8, 8):
        assert len({(c.dtype, c.head_dim, c.causal) for c in configs[start:start + 8]}) == 8
    assert {c.seq_len_q for c in configs} == set(checking.SEQ_LENS)
    assert {c.seq_len_k for c in configs} == set(checking.SEQ_LENS)
    assert any(c.seq_len_q < c.seq_len_k for c in configs)
    assert any(c.seq_len_q > c.seq_len_k for c in configs)
    assert any(c.seq_len_q == c.seq_len_k for c in configs)
    assert {c.layout for c in configs} == {"bhsd", "bshd"}
    assert len({c.batch_size for c in configs}) >= 2
    assert len({c.num_heads for c in configs}) >= 2
    assert all(c.scores <= checking.MAX_SCORES for c in configs)
    assert checking.generate_configs(count, seed) == configs


@FAST
@given(seed=st.integers(0, 2**63 - 1), count=st.integers(50, 130))
def test_generated_configs_cover_gqa_and_both_alignments(seed, count):
    configs = checking.generate_configs(count, seed)
    gqa = [c for c in configs if c.num_heads_k != c.num_heads]
    assert gqa and any(c.num_heads_k == 1 for c in configs if c.num_heads > 1) or gqa
    assert all(c.num_heads % c.num_heads_k == 0 for c in configs)
    assert {c.causal_alignment for c in configs if c.causal} == {"top_left", "bottom_right"}
    assert all(c.causal_alignment == "top_left" for c in configs if not c.causal)
    assert any(c.bottom_right and c.seq_len_q > c.seq_len_k for c in configs) or count < 60


def test_rows_that_see_no_key_must_be_zero_and_minus_inf():
    config = Config(idx=0, dtype="bf16", batch_size=1, num_heads=4, seq_len_q=20, seq_len_k=5,
                    head_dim=64, causal=True, layout="bhsd", seed=3, num_heads_k=2,
                    causal_alignment="bottom_right")
    assert checking.check_config(exact_kernel, config, "cpu").passed

    def nan_rows(q, k, v, out, lse, causal, scale, **variant):  # what SDPA gives there
        exact_kernel(q, k, v, out, lse, causal, scale, **variant)
        out[:, :, :15] = float("nan")

    result = checking.check_config(nan_rows, config, "cpu")
    assert not result.passed and "NaN" in result.failure

    def finite_lse(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale, **variant)
        lse[:, :, :15] = 0.0

    result = checking.check_config(finite_lse, config, "cpu")
    assert not result.passed and "lse is not -inf on 60 of the 60 row(s)" in result.failure


def test_configs_depend_on_the_seed():
    assert checking.generate_configs(64, 1) != checking.generate_configs(64, 2)


@FAST
@given(seed=st.integers(0, 1000), max_scores=st.integers(1, 1 << 20),
       lens=st.lists(st.integers(1, 300), min_size=1, max_size=5))
def test_configs_respect_the_size_budget(seed, max_scores, lens):
    for c in checking.generate_configs(20, seed, seq_lens=lens, max_scores=max_scores):
        assert c.seq_len_q in lens and c.seq_len_k in lens
        # shrinking stops at B = H = 1
        assert c.scores <= max_scores or c.batch_size * c.num_heads == 1


@pytest.mark.parametrize("kwargs, text", [
    ({"count": 0, "seed": 1}, "at least one config"),
    ({"count": 5, "seed": 1, "seq_lens": ()}, "no sequence lengths"),
    ({"count": 5, "seed": 1, "seq_lens": (0, 4)}, "must be positive"),
    ({"count": 5, "seed": 1, "dtypes": ("fp32",)}, "unknown dtype"),
])
def test_bad_config_requests_are_usage_errors(kwargs, text):
    with pytest.raises(UsageError, match=text):
        checking.generate_configs(**kwargs)


def test_inputs_are_random_seeded_and_strided_for_bshd():
    c = cfg(layout="bshd", b=2, h=3, sq=5, sk=7, d=64, dtype="fp16")
    q, k, v = checking.make_inputs(c, "cpu")
    assert q.shape == (2, 3, 5, 64) and k.shape == (2, 3, 7, 64) and v.shape == (2, 3, 7, 64)
    assert q.dtype == torch.float16
    assert not q.is_contiguous() and q.stride() == (5 * 3 * 64, 64, 3 * 64, 1)
    assert all(t.stride(-1) == 1 for t in (q, k, v))
    for t in (q, k, v):  # randn: mean near 0, spread near 1, no zero tensors
        assert 0.6 < float(t.float().std()) < 1.4 and abs(float(t.float().mean())) < 0.3
    again = checking.make_inputs(c, "cpu")
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), again))
    other = checking.make_inputs(cfg(layout="bshd", b=2, h=3, sq=5, sk=7, d=64, dtype="fp16",
                                     seed=2), "cpu")
    assert not torch.equal(q, other[0])
    flat = checking.make_inputs(cfg(layout="bhsd", sq=5, sk=7), "cpu")[0]
    assert flat.is_contiguous()


# -------------------------------------------------------------------------------------------------
# the reference


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq, sk", [(1, 1), (1, 9), (9, 1), (13, 40), (40, 13), (33, 33)])
def test_reference_matches_float64_even_in_small_blocks(causal, sq, sk):
    q, k, v = checking.make_inputs(cfg(b=2, h=3, sq=sq, sk=sk, layout="bshd"), "cpu")
    scale = 0.125
    want_out, want_lse = attention64(q, k, v, causal, scale)
    for block in (checking.REFERENCE_BLOCK, 7, 64, 3 * sk):  # 1 row, a few rows, one head
        out, lse = checking.reference(q, k, v, causal, scale, block=block)
        assert out.dtype == torch.float32 and lse.dtype == torch.float32
        assert torch.allclose(out.double(), want_out, atol=2e-6, rtol=0)
        assert torch.allclose(lse.double(), want_lse, atol=2e-6, rtol=0)


@pytest.mark.parametrize("sq, sk", [(6, 20), (20, 6)])
def test_reference_causal_is_top_left_aligned(sq, sk):
    q, k, v = checking.make_inputs(cfg(sq=sq, sk=sk, dtype="fp16"), "cpu")
    out, lse = checking.reference(q, k, v, True, 0.1)
    # row 0 sees key 0 only, whatever Sq and Sk
    assert torch.allclose(out[:, :, 0], v[:, :, 0].float(), atol=1e-6)
    assert torch.allclose(lse[:, :, 0], 0.1 * (q[:, :, 0].float() * k[:, :, 0].float()).sum(-1),
                          atol=1e-5)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_bound_rule():
    assert checking.bound_for(0.0) == pytest.approx(1e-5)
    assert checking.bound_for(0.004) == pytest.approx(0.008 + 1e-5)


def test_cpu_sdpa_works_in_half_types():
    for dtype in ("fp16", "bf16"):
        q, k, v = checking.make_inputs(cfg(dtype=dtype, layout="bshd"), "cpu")
        out = checking.sdpa_same_dtype(q, k, v, True, 0.125)
        assert out.dtype == q.dtype and torch.isfinite(out).all()


# -------------------------------------------------------------------------------------------------
# correct kernels pass


@pytest.mark.parametrize("kernel", [exact_kernel, sdpa_kernel])
def test_correct_kernels_pass_on_a_spread_of_configs(kernel):
    configs = checking.generate_configs(24, 11, seq_lens=SMALL_LENS, max_scores=1 << 16)
    results = checking.run_checks(kernel, configs, "cpu")
    failed = [checking.failure_line(r) for r in results if not r.passed]
    assert not failed
    for r in results:
        assert r.max_err <= r.bound and r.lse_err <= checking.LSE_TOLERANCE
        assert r.bound == pytest.approx(2 * r.sdpa_err + 1e-5)
        assert r.ratio <= 1.0
    summary = checking.summarize(results, 11)
    assert summary == {"seed": 11, "configs": 24, "passed": 24, "failed": 0,
                       "worst_ratio": max(r.ratio for r in results), "nonfinite": 0}


def test_bound_comes_from_sdpa_in_the_same_dtype():
    c = cfg(dtype="bf16", sq=40, sk=50, causal=True, layout="bshd")
    result = checking.check_config(exact_kernel, c, "cpu")
    q, k, v = checking.make_inputs(c, "cpu")
    ref, _ = attention64(q, k, v, True, c.scale)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=c.scale)
    assert result.sdpa_err == pytest.approx(float((sdpa.double() - ref).abs().max()), abs=1e-6)
    assert result.sdpa_err > 0


# -------------------------------------------------------------------------------------------------
# wrong kernels fail, and say where


small_configs = st.builds(
    cfg,
    dtype=st.sampled_from(["fp16", "bf16"]), b=st.integers(1, 2), h=st.integers(1, 3),
    sq=st.sampled_from([1, 5, 17, 30]), sk=st.sampled_from([1, 6, 17, 31]),
    d=st.sampled_from([64, 128]), causal=st.booleans(), layout=st.sampled_from(["bhsd", "bshd"]),
    seed=st.integers(0, 2**31 - 1))


@FAST
@given(c=small_configs, data=st.data())
def test_one_wrong_element_is_localized_exactly(c, data):
    b = data.draw(st.integers(0, c.batch_size - 1))
    h = data.draw(st.integers(0, c.num_heads - 1))
    row = data.draw(st.integers(0, c.seq_len_q - 1))
    col = data.draw(st.integers(0, c.head_dim - 1))
    delta = data.draw(st.sampled_from([0.25, -0.5, 3.0]))

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale)
        out[b, h, row, col] += delta

    result = checking.check_config(kernel, c, "cpu")
    assert not result.passed
    assert result.worst_index == (b, h, row, col)
    assert result.row()["worst_index"] == f"{b},{h},{row},{col}"
    q, k, v = checking.make_inputs(c, "cpu")
    ref, _ = attention64(q, k, v, c.causal, c.scale)
    want = float(ref[b, h, row, col])
    assert result.worst_ref == pytest.approx(want, abs=1e-5)
    assert result.worst_out == float(ref[b, h, row, col].to(torch_dtype(c)) + delta)
    assert abs(result.worst_out - result.worst_ref) == pytest.approx(result.max_err, rel=1e-6)
    assert f"b,h,row,col={b},{h},{row},{col}" in result.failure
    assert "ours" in result.failure and "ref" in result.failure
    assert result.lse_err <= checking.LSE_TOLERANCE  # only the output was wrong


def torch_dtype(c):
    return attention.torch_dtype(c.dtype)


@FAST
@given(c=small_configs, data=st.data())
def test_an_unwritten_row_is_caught_by_poisoning(c, data):
    b = data.draw(st.integers(0, c.batch_size - 1))
    h = data.draw(st.integers(0, c.num_heads - 1))
    row = data.draw(st.integers(0, c.seq_len_q - 1))

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        full = torch.empty_like(out)
        lse_full = torch.empty_like(lse)
        exact_kernel(q, k, v, full, lse_full, causal, scale)
        keep = torch.ones(out.shape[:3], dtype=torch.bool)
        keep[b, h, row] = False
        out[keep] = full[keep]  # every row but one
        lse.copy_(lse_full)

    result = checking.check_config(kernel, c, "cpu")
    assert not result.passed
    assert result.max_err == math.inf
    assert result.worst_index == (b, h, row, 0)
    assert math.isnan(result.worst_out)
    assert f"out has {c.head_dim} NaN/Inf element(s)" in result.failure
    assert f"b,h,row,col={b},{h},{row},0" in result.failure


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_outputs_fail(bad):
    c = cfg(sq=9, sk=12)

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale)
        out[1, 2, 8, 63] = bad

    result = checking.check_config(kernel, c, "cpu")
    assert not result.passed and result.worst_index == (1, 2, 8, 63)
    assert "1 NaN/Inf element(s)" in result.failure
    assert checking.summarize([result], 0)["nonfinite"] == 1
    assert checking.summarize([result], 0)["worst_ratio"] is None


def test_an_untouched_kernel_fails_everywhere():
    result = checking.check_config(lambda *args: None, cfg(b=1, h=2, sq=3, sk=4, d=64), "cpu")
    assert not result.passed
    assert "out has 384 NaN/Inf" in result.failure and "lse has 6 NaN/Inf" in result.failure


def test_a_base_2_lse_fails_on_lse_alone():
    c = cfg(sq=20, sk=30, causal=True)

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale)
        lse.mul_(1 / math.log(2))  # log2 instead of ln

    result = checking.check_config(kernel, c, "cpu")
    assert not result.passed
    assert result.max_err <= result.bound  # the output itself is right
    q, k, v = checking.make_inputs(c, "cpu")
    _, ref_lse = attention64(q, k, v, True, c.scale)
    wrong = ref_lse / math.log(2)
    assert result.lse_err == pytest.approx(float((wrong - ref_lse).abs().max()), rel=1e-4)
    b, h, row = result.lse_worst_index
    assert int((wrong - ref_lse).abs().flatten().argmax()) == (b * c.num_heads + h) * 20 + row
    assert result.failure.startswith("lse err") and "b,h,row=" in result.failure


def test_a_slightly_wrong_lse_passes_within_tolerance_and_fails_beyond():
    c = cfg(sq=8, sk=8)

    def shifted(by):
        def kernel(q, k, v, out, lse, causal, scale):
            exact_kernel(q, k, v, out, lse, causal, scale)
            lse.add_(by)
        return kernel

    assert checking.check_config(shifted(5e-4), c, "cpu").passed
    assert not checking.check_config(shifted(2e-3), c, "cpu").passed


def bottom_right_kernel(q, k, v, out, lse, causal, scale):
    """The other causal convention: query row i sees keys up to i + Sk - Sq."""
    sq, sk = q.shape[2], k.shape[2]
    mask = torch.ones(sq, sk, dtype=torch.bool).triu(sk - sq + 1) if causal else None
    o, l = attention64(q, k, v, causal, scale, mask=mask)
    out.copy_(o.to(out.dtype))
    lse.copy_(l.float())


@pytest.mark.parametrize("sq, sk", [(10, 25), (25, 10)])
def test_bottom_right_causal_fails_when_lengths_differ(sq, sk):
    result = checking.check_config(bottom_right_kernel, cfg(sq=sq, sk=sk, causal=True), "cpu")
    assert not result.passed
    assert "lse" in result.failure


def test_bottom_right_causal_agrees_when_lengths_match():
    assert checking.check_config(bottom_right_kernel, cfg(sq=25, sk=25, causal=True), "cpu").passed
    assert checking.check_config(bottom_right_kernel, cfg(sq=10, sk=25), "cpu").passed


def test_a_kernel_that_ignores_strides_fails_on_strided_inputs_only():
    def kernel(q, k, v, out, lse, causal, scale, **variant):
        def as_contiguous_memory(t):  # reads the storage as if it were (B, H, S, D)
            return t.as_strided(t.shape, torch.empty(t.shape).stride())
        exact_kernel(*(as_contiguous_memory(t) for t in (q, k, v)), out, lse, causal, scale)

    assert checking.check_config(kernel, cfg(layout="bhsd"), "cpu").passed
    result = checking.check_config(kernel, cfg(layout="bshd"), "cpu")
    assert not result.passed and "max err" in result.failure


def test_writes_past_the_outputs_are_caught():
    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale)
        # one tile row too many, as a kernel without a tail check would write
        past = out.as_strided((out.shape[-1],), (1,), out.storage_offset() + out.numel())
        past.fill_(1.0)

    result = checking.check_config(kernel, cfg(b=1, h=1, sq=17, sk=17), "cpu")
    assert not result.passed
    assert "wrote outside its outputs (64 element(s) around out, 0 around lse)" in result.failure


def test_a_kernel_that_changes_its_inputs_fails():
    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale)
        k.mul_(0.5)

    result = checking.check_config(kernel, cfg(), "cpu")
    assert not result.passed and result.failure == "modified its input k"


def test_a_raising_kernel_fails_its_config_and_the_rest_still_run():
    def kernel(q, k, v, out, lse, causal, scale, **variant):
        if q.shape[-1] == 128:
            raise RuntimeError("head dim 128 is not supported\nsecond line")
        exact_kernel(q, k, v, out, lse, causal, scale)

    configs = checking.generate_configs(16, 5, seq_lens=SMALL_LENS, max_scores=1 << 14)
    seen = []
    results = checking.run_checks(kernel, configs, "cpu",
                                  on_start=lambda i, c: seen.append(i),
                                  on_result=lambda r: seen.append(r.config.idx))
    assert seen == [x for i in range(16) for x in (i, i)]
    for r in results:
        if r.config.head_dim == 128:
            assert not r.passed
            assert r.failure == "kernel raised RuntimeError: head dim 128 is not supported"
            assert r.row()["max_err"] is None
        else:
            assert r.passed
    assert checking.summarize(results, 5)["failed"] == 8


def test_a_kernel_sessionkit_error_stops_the_run():
    class NotBuilt(SessionkitError):
        pass

    def kernel(*args):
        raise NotBuilt("no kernel built for sm_90a; run 'sessionkit step build'")

    with pytest.raises(NotBuilt):
        checking.run_checks(kernel, [cfg()], "cpu")


def test_a_lost_device_marks_the_remaining_configs_not_run(monkeypatch):
    monkeypatch.setattr(checking, "device_alive", lambda device: False)

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        if q.shape[2] == 17:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        exact_kernel(q, k, v, out, lse, causal, scale)

    configs = [cfg(sq=5, idx=0), cfg(sq=17, idx=1), cfg(sq=5, idx=2), cfg(sq=9, idx=3)]
    results = checking.run_checks(kernel, configs, "cpu")
    assert [r.passed for r in results] == [True, False, False, False]
    assert results[1].context_lost
    assert [r.failure for r in results[2:]] == ["not run: the device was unusable after config #1"] * 2


def test_results_table_has_one_line_per_group():
    configs = checking.generate_configs(16, 3, seq_lens=SMALL_LENS, max_scores=1 << 14)

    def kernel(q, k, v, out, lse, causal, scale, **variant):
        exact_kernel(q, k, v, out, lse, causal, scale, **variant)
        if causal and q.dtype == torch.float16:
            out[0, 0, 0, 0] += 1.0

    results = checking.run_checks(kernel, configs, "cpu")
    lines = checking.results_table(results).splitlines()
    groups = Counter(c.group for c in configs)
    # both alignments of causal configs are drawn: 8 (dtype, dim, causal) combos, some split in two
    assert any(g.endswith("causal-br") for g in groups) and len(groups) > 8
    assert len(lines) == 2 + len(groups)
    name = sorted(g for g in groups if g.startswith("fp16") and not g.endswith(" full"))[0]
    fp16_causal = [line for line in lines if line.startswith(name + " ")]
    assert len(fp16_causal) == 1 and fp16_causal[0].split()[3:5] == [str(groups[name]), "0"]
    failing = [r for r in results if not r.passed]
    assert len(failing) == 4
    assert checking.failure_line(failing[0]).startswith(f"FAIL #{failing[0].config.idx} fp16 d")
