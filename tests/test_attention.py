"""The attention vocabulary: FLOP and byte counts against hand-computed figures and brute-force mask
counting, the config text's parser (round trip, one-line errors, fuzzed), the dtype table and the
registry of implementations."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit import attention
from sessionkit.attention import (DTYPES, IMPLS, REGISTRY, SDPA_IMPLS, AttentionConfig,
                                  ImplementationUnavailable, attended_pairs, parse_causal,
                                  parse_config, parse_dtype, tflops)
from sessionkit.errors import UsageError


def brute_force_pairs(sq: int, sk: int, causal: bool, alignment: str = "top_left") -> int:
    """Count the kept (query, key) pairs one by one: key j is masked for row i when j > i + offset."""
    offset = sk - sq if alignment == "bottom_right" else 0
    return sum(1 for i in range(sq) for j in range(sk) if not causal or j <= i + offset)


# ---- FLOPs and bytes ----------------------------------------------------------------------------

@pytest.mark.parametrize("sq, sk, alignment, pairs", [
    (4, 5, None, 20),                 # non-causal: every pair
    (4, 4, "top_left", 10),           # 1 + 2 + 3 + 4
    (4, 4, "bottom_right", 10),       # equal lengths: both alignments are the same mask
    (3, 5, "top_left", 6),            # rows see 1, 2, 3 keys
    (3, 5, "bottom_right", 12),       # rows see 3, 4, 5 keys (the last query sees all)
    (5, 3, "top_left", 12),           # 1, 2, 3, then 3 and 3
    (5, 3, "bottom_right", 6),        # rows 0, 1 see none; then 1, 2, 3
    (1, 32768, "top_left", 1),        # a single query sees key 0 only
    (1, 32768, "bottom_right", 32768),  # decoding: a single query sees the whole cache
])
def test_flops_against_hand_computed_values(sq, sk, alignment, pairs):
    causal = alignment is not None
    cfg = AttentionConfig(2, 3, sq, sk, 8, "bf16", causal, causal_alignment=alignment or "top_left")
    assert cfg.pairs == pairs
    assert cfg.flops == 4 * 2 * 3 * 8 * pairs  # 2 matmuls x 2*D FLOPs per kept pair, B * H of them


def test_flops_of_the_standard_shapes():
    b, h, s, d = 4, 16, 4096, 128
    assert AttentionConfig(b, h, s, s, d, "bf16", False).flops == 4 * b * h * s * s * d
    assert AttentionConfig(b, h, s, s, d, "bf16", True).flops == 4 * b * h * d * s * (s + 1) // 2
    # grouped-query heads do not change the work: every query head attends
    gqa = AttentionConfig(8, 32, 1, 32768, 128, "bf16", True, 8, "bottom_right")
    assert gqa.flops == 4 * 8 * 32 * 128 * 32768


@settings(max_examples=120, deadline=None)
@given(sq=st.integers(0, 40), sk=st.integers(0, 40), causal=st.booleans(),
       alignment=st.sampled_from(["top_left", "bottom_right"]))
def test_attended_pairs_match_the_mask_counted_one_by_one(sq, sk, causal, alignment):
    assert attended_pairs(sq, sk, causal, alignment) == brute_force_pairs(sq, sk, causal, alignment)


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
def test_pairs_match_torch_masks_when_torch_is_present():
    torch = pytest.importorskip("torch")
    from torch.nn.attention.bias import causal_lower_right

    for sq, sk in [(5, 12), (12, 5), (8, 8), (1, 9)]:
        assert int(torch.ones(sq, sk, dtype=torch.bool).tril().sum()) == attended_pairs(sq, sk, True)
        lower_right = causal_lower_right(sq, sk)._materialize()
        assert int(lower_right.sum()) == attended_pairs(sq, sk, True, "bottom_right")


def test_negative_lengths_are_refused():
    with pytest.raises(ValueError):
        attended_pairs(-1, 3, True)


def test_min_bytes_reads_q_k_v_and_writes_o_once():
    cfg = AttentionConfig(2, 4, 3, 5, 8, "bf16", False, 2)
    q = o = 2 * 4 * 3 * 8
    k = v = 2 * 2 * 5 * 8  # two key/value heads
    assert cfg.input_bytes == 2 * (q + k + v)
    assert cfg.min_bytes == 2 * (q + k + v + o)
    assert AttentionConfig(4, 16, 4096, 4096, 128, "fp32", True).min_bytes == 4 * 16 * 4 * 4096 * 128 * 4


def test_tflops():
    assert tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert tflops(1e12, 0) is None and tflops(1e12, None) is None


# ---- the config and its text --------------------------------------------------------------------

def test_label_spec_and_row():
    c = parse_config("4,16,4096,2048,128,bfloat16,causal")
    assert c == AttentionConfig(4, 16, 4096, 2048, 128, "bf16", True)
    assert c.spec == "4,16,4096,2048,128,bf16,1"
    assert c.label == "bf16 B4 H16 Sq4096 Sk2048 D128 causal"
    assert AttentionConfig.from_row(c.as_row()) == c
    old_row = {k: v for k, v in c.as_row().items() if k not in ("num_heads_k", "causal_alignment")}
    assert AttentionConfig.from_row(old_row) == c  # rows stored before H_kv and alignments
    assert parse_config(" 1, 8, 512, 512, 64, fp16, 0 ").causal is False
    assert parse_config("1,8,512,512,64,half,full").label == "fp16 B1 H8 S512 D64 full"


@pytest.mark.parametrize("text, want", [
    ("8,32,1,32768,128,bf16,br,8", AttentionConfig(8, 32, 1, 32768, 128, "bf16", True, 8,
                                                   "bottom_right")),
    ("2,32,4096,4096,128,bf16,1,8", AttentionConfig(2, 32, 4096, 4096, 128, "bf16", True, 8)),
    ("2,32,4096,4096,128,bf16,0", AttentionConfig(2, 32, 4096, 4096, 128, "bf16", False)),
])
def test_config_specs_with_gqa_and_alignment_round_trip(text, want):
    got = parse_config(text)
    assert got == want and parse_config(got.spec) == got
    assert ("/8kv" in got.label) == got.gqa and ("causal-br" in got.label) == got.bottom_right


@pytest.mark.parametrize("text, words", [
    ("1,2,3", "expected B,H,Sq,Sk,D,dtype,causal[,H_kv]"),
    ("2,32,64,64,128,bf16,1,8,9", "expected B,H,Sq,Sk,D,dtype,causal"),
    ("0,8,512,512,64,fp16,0", "batch_size must be a positive integer"),
    ("1,x,512,512,64,fp16,0", "num_heads must be a positive integer"),
    ("1,8,512,-3,64,fp16,0", "seq_len_k must be a positive integer"),
    ("1,8,512,512,99999999999,fp16,0", "head_dim must be a positive integer up to 2147483647"),
    ("1,8,512,512,64,int8,0", "unknown dtype 'int8' (use fp16, bf16 or fp32)"),
    ("1,8,512,512,64,fp16,maybe", "bad causal value 'maybe'"),
    ("2,32,64,64,128,bf16,1,5", "H 32 is not a multiple of H_kv 5"),
    ("2,32,64,64,128,bf16,1,0", "H_kv must be a positive integer"),
    ("1,8,\n512,x,64,fp16,0\n", "bad config '1,8,\\n512,x"),
])
def test_bad_configs_get_one_line_errors_that_quote_the_text(text, words):
    with pytest.raises(UsageError) as err:
        parse_config(text)
    assert words in str(err.value) and str(err.value).startswith("bad config ")
    assert "\n" not in str(err.value)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_gets_a_one_line_usage_error(text):
    try:
        cfg = parse_config(text)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("bad config ")
        return
    assert parse_config(cfg.spec) == cfg


_FIELD = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(
    ["fp16", "BF16", "float", "int8", "1", "0", "br", "causal", "full", "maybe", "", " 7 ", "1e3"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_FIELD, min_size=6, max_size=9))
def test_near_miss_configs_parse_or_get_a_one_line_usage_error(fields):
    text = ",".join(fields)
    try:
        cfg = parse_config(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert parse_config(cfg.spec) == cfg
    assert cfg.pairs <= cfg.seq_len_q * cfg.seq_len_k


_CONFIGS = st.builds(
    lambda b, hk, group, sq, sk, d, dtype, causal, br: AttentionConfig(
        b, hk * group, sq, sk, d, dtype, causal, hk, "bottom_right" if br else "top_left"),
    st.integers(1, 64), st.integers(1, 16), st.sampled_from([1, 2, 4, 8]), st.integers(1, 1 << 17),
    st.integers(1, 1 << 17), st.sampled_from([32, 64, 96, 128, 256]), st.sampled_from(list(DTYPES)),
    st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(_CONFIGS)
def test_every_config_round_trips_through_its_spec(cfg):
    assert parse_config(cfg.spec) == cfg
    assert AttentionConfig.from_row(cfg.as_row()) == cfg
    assert re.fullmatch(r"(fp16|bf16|fp32) B\d+ H\d+(/\d+kv)? (S\d+|Sq\d+ Sk\d+) D\d+ "
                        r"(full|causal|causal-br)", cfg.label)


def test_invalid_values_are_refused_by_the_type_itself():
    with pytest.raises(UsageError, match="not a multiple"):
        AttentionConfig(1, 6, 8, 8, 64, "bf16", True, 4)
    with pytest.raises(UsageError, match="dtype 'int8'"):
        AttentionConfig(1, 6, 8, 8, 64, "int8", True)
    with pytest.raises(UsageError, match="causal alignment"):
        AttentionConfig(1, 6, 8, 8, 64, "bf16", True, 0, "middle")
    # not causal: the alignment has no meaning and reads top-left
    assert AttentionConfig(1, 6, 8, 8, 64, "bf16", False, 0, "bottom_right").causal_alignment == "top_left"


# ---- dtypes --------------------------------------------------------------------------------------

def test_dtype_table_spellings_and_causal_words():
    assert [parse_dtype(x) for x in ("bf16", "BFloat16", "half", "float16", "float", "fp32")] == \
        ["bf16", "bf16", "fp16", "fp16", "fp32", "fp32"]
    with pytest.raises(UsageError, match="unknown dtype"):
        parse_dtype("int8")
    assert parse_causal(True) == (True, "top_left") and parse_causal("br") == (True, "bottom_right")
    assert parse_causal("full") == (False, "top_left")


def test_dtype_table_matches_torch():
    torch = pytest.importorskip("torch")
    for name, dtype in DTYPES.items():
        t = attention.torch_dtype(name)
        assert t is getattr(torch, dtype.torch_name)
        assert torch.empty(0, dtype=t).element_size() == dtype.itemsize


# ---- the registry -------------------------------------------------------------------------------

def test_registry_names_ours_then_sdpa_and_each_backend():
    assert IMPLS == ("ours", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math")
    assert SDPA_IMPLS == IMPLS[1:]
    assert [i.name for i in REGISTRY.values() if i.reference] == ["sdpa"]
    shorts = [i.short for i in REGISTRY.values()]
    assert len(set(shorts)) == len(shorts) and all(len(s) <= 6 for s in shorts)
    assert attention.implementation("sdpa_flash").sdpa_backend == "FLASH_ATTENTION"
    with pytest.raises(UsageError, match="unknown implementation 'xla'; choose from ours, sdpa"):
        attention.implementation("xla")


def test_the_math_backend_is_left_out_of_large_configs():
    math_impl = REGISTRY["sdpa_math"]
    assert math_impl.fits(AttentionConfig(1, 8, 1024, 1024, 64, "bf16", False))
    assert not math_impl.fits(AttentionConfig(4, 16, 4096, 4096, 128, "bf16", False))
    assert all(REGISTRY[n].fits(AttentionConfig(4, 16, 16384, 16384, 128, "bf16", False))
               for n in IMPLS if n != "sdpa_math")


def test_every_forced_backend_is_an_sdpa_backend_of_torch():
    pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend

    for impl in REGISTRY.values():
        if impl.sdpa_backend is not None:
            assert hasattr(SDPBackend, impl.sdpa_backend), impl.name


@pytest.mark.parametrize("spec", ["1,4,6,9,16,fp32,br,2", "1,4,9,6,16,fp32,br,2",
                                  "2,2,7,7,16,fp32,1", "1,2,5,8,16,fp32,0"])
@pytest.mark.parametrize("name", ["sdpa", "sdpa_math"])
def test_sdpa_launchers_compute_the_config_on_the_cpu(name, spec):
    """The launchers give the masked, grouped-query attention of the config (checked against a
    float64 computation written out here), on a CPU build of torch."""
    torch = pytest.importorskip("torch")
    cfg = parse_config(spec)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(cfg.batch_size, cfg.num_heads, cfg.seq_len_q, cfg.head_dim, generator=gen)
    k, v = (torch.randn(cfg.batch_size, cfg.num_heads_k, cfg.seq_len_k, cfg.head_dim, generator=gen)
            for _ in range(2))
    out = REGISTRY[name].launcher(cfg)(q, k, v)
    group = cfg.num_heads // cfg.num_heads_k
    kd, vd = (t.double().repeat_interleave(group, 1) for t in (k, v))
    scores = q.double() @ kd.transpose(-1, -2) * cfg.scale
    offset = cfg.seq_len_k - cfg.seq_len_q if cfg.bottom_right else 0
    rows = torch.arange(cfg.seq_len_q)[:, None]
    masked = cfg.causal & (torch.arange(cfg.seq_len_k)[None, :] > rows + offset)
    want = torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1) @ vd
    seen = ~masked.all(dim=-1)  # rows that see no key are NaN in SDPA's output
    assert torch.allclose(out.double()[:, :, seen], want[:, :, seen], atol=1e-5)


def test_ours_unavailable_is_a_typed_error(monkeypatch):
    broken = type(sys)("sessionkit.kernels")  # a kernels package without its entry point
    monkeypatch.setitem(sys.modules, "sessionkit.kernels", broken)
    with pytest.raises(ImplementationUnavailable, match="sessionkit.kernels is not available"):
        REGISTRY["ours"].launcher(parse_config("1,8,64,64,64,bf16,0"))
