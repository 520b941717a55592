"""The kernel API on the CPU: argument rules, fakes, the backward, autograd and torch.compile.

The forward kernels need a GPU; here the real op schemas (read from csrc/flash_api.cpp) get a CPU
implementation from the fp32 reference in a subprocess (tests/cpu_op_standin.py), so that the
public wrapper, the fake implementations, the autograd formula and the backward op run for real:
gradients under the 2x-SDPA rule, gradcheck on float64, opcheck with gradients, and
torch.compile(fullgraph=True) on an attention block with static and dynamic shapes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sessionkit.kernels import api, backward, checking  # noqa: E402
from sessionkit.kernels.build import csrc_dir  # noqa: E402

STANDIN = Path(__file__).with_name("cpu_op_standin.py")
CHECKS = ["rows_without_keys", "grads_within_2x_of_sdpa", "gradcheck_float64",
          "opcheck_with_gradients", "compile_fullgraph", "compile_dynamic_scale",
          "fakes_for_new_cases"]


@pytest.fixture(scope="module")
def standin():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([sys.executable, str(STANDIN), *CHECKS], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["check"]] = row
    return results


@pytest.mark.parametrize("check", CHECKS)
def test_wrapper_on_cpu_standin(standin, check):
    row = standin.get(check)
    assert row is not None, f"{check} did not report"
    assert row["ok"], row["error"] + "\n" + row.get("trace", "")


def test_grad_rule_was_measured(standin):
    rows = standin["grads_within_2x_of_sdpa"]["result"]
    assert len(rows) == 15  # 5 cases x dq, dk, dv
    assert all(err <= bound and err > 0 for _i, _name, err, bound in rows)


# -- the backward formula on its own (float64: autograd through the reference) ----------------

def _reference64(q, k, v, causal, scale, bottom_right):
    ratio = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(ratio, 1), v.repeat_interleave(ratio, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        sq, sk = q.shape[2], k.shape[2]
        hidden = torch.arange(sk)[None, :] > torch.arange(sq)[:, None] + (sk - sq if bottom_right
                                                                          else 0)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    return torch.nan_to_num(torch.exp(scores - lse[..., None])) @ v, lse


@pytest.mark.parametrize("shape", [(2, 4, 2, 5, 7, 8), (1, 4, 1, 7, 5, 16), (1, 6, 3, 9, 3, 8),
                                   (2, 2, 2, 6, 6, 8)])
@pytest.mark.parametrize("causal,bottom_right", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("block", [1 << 25, 37])
def test_backward_matches_autograd_in_float64(shape, causal, bottom_right, block):
    b, hq, hkv, sq, sk, d = shape
    gen = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(b, h, s, d, dtype=torch.float64, generator=gen).requires_grad_()
               for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    out, lse = _reference64(q, k, v, causal, 0.3, bottom_right)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    grad_lse = torch.randn(lse.shape, dtype=torch.float64, generator=gen)
    grad_lse = torch.where(torch.isinf(lse), 0.0, grad_lse)
    loss = (out * grad_out).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * grad_lse).sum()
    want = torch.autograd.grad(loss, (q, k, v))
    got = backward.attention_backward(grad_out, q.detach(), k.detach(), v.detach(), out.detach(),
                                      lse.detach(), causal, 0.3, bottom_right, grad_lse,
                                      block_elements=block)
    for w, g in zip(want, got):
        assert g.dtype == torch.float64 and g.is_contiguous()
        assert torch.allclose(w, g, atol=1e-12, rtol=1e-10)


def test_backward_of_rows_without_keys_is_zero_not_nan():
    q = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    k = v = torch.randn(1, 2, 2, 8, dtype=torch.float64)
    out, lse = _reference64(q, k, v, True, 0.5, True)
    assert torch.isneginf(lse[:, :, :4]).all()
    dq, dk, dv = backward.attention_backward(torch.ones_like(out), q, k, v, out, lse, True, 0.5,
                                             True)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert torch.equal(dq[:, :, :4], torch.zeros_like(dq[:, :, :4]))


def test_backward_fake_gives_input_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 8, 5, 64, dtype=torch.bfloat16)
        k = torch.empty(2, 2, 9, 64, dtype=torch.bfloat16)
        lse = torch.empty(2, 8, 5)
        dq, dk, dv = torch.ops.sessionkit.flash_attn_bwd(q, q, k, k, q, lse, None, True, 0.1, True)
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape
        assert dq.dtype == dk.dtype == torch.bfloat16


# -- argument rules ------------------------------------------------------------------------------

def _qkv(hq=4, hkv=4, sq=8, sk=8, d=64, dtype=torch.float16):
    return (torch.zeros(1, hq, sq, d, dtype=dtype), torch.zeros(1, hkv, sk, d, dtype=dtype),
            torch.zeros(1, hkv, sk, d, dtype=dtype))


def test_gqa_needs_enable_gqa_like_sdpa():
    q, k, v = _qkv(hkv=2)
    with pytest.raises(ValueError, match="head counts differ.*enable_gqa=True"):
        api.check_inputs(q, k, v)
    with pytest.raises(ValueError, match="needs CUDA"):  # every other rule passed
        api.check_inputs(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("hq,hkv", [(6, 4), (4, 3), (2, 4)])
def test_gqa_heads_must_divide(hq, hkv):
    q, k, v = _qkv(hq=hq, hkv=hkv)
    with pytest.raises(ValueError, match=rf"query heads \({hq}\) to be a multiple of the "
                                         rf"key/value heads \({hkv}\)"):
        api.check_inputs(q, k, v, enable_gqa=True)


def test_k_and_v_heads_must_match():
    q, k, _ = _qkv(hkv=2)
    v = torch.zeros(1, 1, 8, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="k and v head counts differ"):
        api.check_inputs(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("hq,hkv", [(8, 1), (32, 8), (4, 4)])
def test_gqa_and_mqa_ratios_pass_the_checks(hq, hkv):
    q, k, v = _qkv(hq=hq, hkv=hkv)
    with pytest.raises(ValueError, match="needs CUDA"):
        api.check_inputs(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("value", ["top-left", "lower_right", None, True, 1, ["top_left"]])
def test_bad_causal_alignment(value):
    with pytest.raises(ValueError, match="causal_alignment must be 'top_left' or 'bottom_right'"):
        api.resolve_alignment(value)


def test_alignments():
    assert api.resolve_alignment("top_left") is False
    assert api.resolve_alignment("bottom_right") is True
    assert api.CAUSAL_ALIGNMENTS == ("top_left", "bottom_right")


def test_bad_enable_gqa():
    q, k, v = _qkv()
    from sessionkit.kernels import flash_attention

    with pytest.raises(TypeError, match="enable_gqa must be a bool"):
        flash_attention(q, k, v, enable_gqa="yes")
    with pytest.raises(ValueError, match="causal_alignment"):
        flash_attention(q, k, v, causal=True, causal_alignment="bottom-right")


@pytest.mark.parametrize("mask", ["tensor", "none"])
def test_an_sdpa_style_attn_mask_gets_one_line_saying_the_fourth_argument_is_causal(mask):
    """SDPA's fourth positional argument is attn_mask; ours is causal. A mask (or None) passed
    there gets one line that says so, without printing the tensor."""
    from sessionkit.kernels import flash_attention

    q, k, v = _qkv()
    value = torch.ones(8, 8, dtype=torch.bool).tril() if mask == "tensor" else None
    with pytest.raises(TypeError) as info:
        flash_attention(q, k, v, value)
    text = str(info.value)
    assert "\n" not in text and "tensor(" not in text, text
    assert "causal must be a bool, got" in text and "no attn_mask" in text, text


def test_flags_take_numpy_bools_and_every_refusal_is_one_short_line():
    """causal and enable_gqa take a Python or NumPy bool; a refused value of causal, enable_gqa or
    causal_alignment is named in one short line: a tensor by its type, never printed, and an
    int past Python's digit limit without an error of its own."""
    np = pytest.importorskip("numpy")
    assert api._resolve_causal(np.bool_(True)) is True
    assert api._resolve_gqa(np.bool_(False)) is False
    huge = 10 ** 5000
    for call in (lambda: api._resolve_causal(torch.ones(1000)),
                 lambda: api._resolve_causal(huge),
                 lambda: api._resolve_causal("x" * 500),
                 lambda: api._resolve_causal(torch.nn.Parameter(torch.ones(3, 3))),
                 lambda: api._resolve_gqa(torch.ones(1000)),
                 lambda: api._resolve_gqa(huge),
                 lambda: api.resolve_alignment(torch.ones(1000)),
                 lambda: api.resolve_alignment("y" * 500)):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and len(text) < 200 and "tensor(" not in text, text
        assert text.startswith("flash_attention: "), text
    with pytest.raises(TypeError, match="no attn_mask"):
        api._resolve_causal(torch.nn.Parameter(torch.ones(3, 3)))


def test_scale_takes_numpy_numbers_and_refuses_the_rest():
    """A scale is a Python or NumPy real scalar that a float32 holds; anything else is one line
    (TypeError or ValueError), never an OverflowError or NumPy's own error."""
    import fractions

    np = pytest.importorskip("numpy")
    assert api.resolve_scale(np.float32(0.5), 64) == 0.5
    assert api.resolve_scale(np.float64(0.25), 64) == 0.25
    assert api.resolve_scale(np.int64(2), 64) == 2.0
    assert api.resolve_scale(-0.0, 64) == 0.0
    for bad, exc in ((float("inf"), ValueError), (-float("inf"), ValueError),
                     (float("nan"), ValueError), (1e39, ValueError), (10 ** 400, ValueError),
                     (np.longdouble(10) ** 400, ValueError), (np.float16("inf"), ValueError),
                     ("0.1", TypeError), (True, TypeError), (np.bool_(True), TypeError),
                     (torch.tensor(0.5), TypeError), (np.array([0.5]), TypeError),
                     (fractions.Fraction(1, 8), TypeError), (np.timedelta64(1), TypeError),
                     (complex(1, 0), TypeError)):
        with pytest.raises(exc, match="^flash_attention: scale must be") as info:
            api.resolve_scale(bad, 64)
        assert "\n" not in str(info.value) and len(str(info.value)) < 120, str(info.value)


def test_flash_attention_into_names_itself_in_its_errors(monkeypatch):
    from sessionkit.kernels import flash_attention_into

    monkeypatch.setattr(api, "DEVICE_TYPES", ("cuda", "cpu"))  # past the device check
    q, k, v = _qkv()
    out, lse = torch.empty_like(q), torch.empty(1, 4, 8)
    for call, words in ((lambda: flash_attention_into(q, k[:, :3], v[:, :3], out, lse),
                         "flash_attention_into: head counts differ"),
                        (lambda: flash_attention_into(q, k, v, out, lse, causal="yes"),
                         "flash_attention_into: causal must be a bool"),
                        (lambda: flash_attention_into(q, k, v, out, lse, scale=float("nan")),
                         "flash_attention_into: scale must be finite")):
        with pytest.raises((TypeError, ValueError), match=words):
            call()


def test_compiling_before_the_kernels_load_says_to_load_them(monkeypatch):
    """torch.compile(fullgraph=True) before the kernels are loaded stops with the message that
    says to call load_extension() first (Dynamo wraps it as "Observed exception"), not with an
    error from the file listing behind the head-dim check."""
    from sessionkit.kernels import flash_attention

    monkeypatch.setattr(api, "_FAKES_REGISTERED", False)  # as in a process that loaded nothing
    monkeypatch.setattr(api, "_HEAD_DIMS", None)  # and never read the kernel list
    q, k, v = _qkv()
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: flash_attention(q, k, v), fullgraph=True,
                             backend="eager")
    with pytest.raises(Exception) as info:
        compiled(q, k, v)
    assert "load_extension()" in str(info.value), str(info.value)[-2000:]


def test_unsupported_head_dim_lists_the_supported_ones_per_family():
    q, k, v = _qkv(d=72)
    dims = ", ".join(map(str, api.supported_head_dims()))
    with pytest.raises(ValueError, match=rf"head_dim 72 is not supported; supported head dims are "
                                         rf"{dims} \(per kernel family: sm80: .*; sm90: .*\)"):
        api.check_inputs(q, k, v)


def test_into_refuses_inputs_that_need_gradients():
    from sessionkit.kernels import flash_attention_into

    q, k, v = _qkv()
    api_types = api.DEVICE_TYPES
    try:
        api.DEVICE_TYPES = ("cuda", "cpu")
        q.requires_grad_()
        with pytest.raises(RuntimeError, match="no gradient; use flash_attention"):
            flash_attention_into(q, k, v, torch.empty_like(q), torch.empty(1, 4, 8))
    finally:
        api.DEVICE_TYPES = api_types


# -- the head-dim tables: instantiated kernels, the C++ check and Python agree -------------------

def _cpp_head_dims() -> dict[str, tuple[int, ...]]:
    text = (csrc_dir() / "flash_api.cpp").read_text()
    found = dict(re.findall(r"using (Sm\d+)HeadDims = HeadDims<([0-9, ]+)>;", text))
    return {name.lower(): tuple(int(x) for x in dims.split(",")) for name, dims in found.items()}


def _generator_families() -> dict[str, tuple[int, ...]]:
    from scripts import load_script

    module = load_script(csrc_dir() / "generate_kernels.py")
    return {family: tuple(sorted(dims)) for family, dims in module.FAMILIES.items()}


def test_head_dim_tables_agree():
    families = _generator_families()
    assert api.head_dims_by_family() == families
    assert _cpp_head_dims() == families
    assert set(api.supported_head_dims()) == set().union(*families.values())


def test_op_schemas_carry_the_alignment_argument():
    text = (csrc_dir() / "flash_api.cpp").read_text()
    assert "bool causal, float scale, \"\n      \"bool causal_bottom_right=False) -> (Tensor, Tensor)" \
        in text
    assert "float scale, bool causal_bottom_right=False) -> ()" in text
    assert "flash_attn_family(int device) -> str" in text


# -- fake implementations for every new case -------------------------------------------------------

def test_fake_shapes_for_new_cases(standin):
    """GQA, MQA, decode, rows without keys, D=96 and 256: O like q, LSE (B, H_q, Sq) float32."""
    rows = standin["fakes_for_new_cases"]["result"]
    assert len(rows) == 5
    for (b, hq, _hkv, sq, _sk, d), shape, dtype, device, contiguous, lse_shape, lse_dtype, none \
            in rows:
        assert shape == [b, hq, sq, d] and dtype == "torch.bfloat16" and device == "cuda"
        assert contiguous and lse_shape == [b, hq, sq] and lse_dtype == "torch.float32" and none


# -- the reference for the new cases ---------------------------------------------------------------

def test_reference_handles_gqa_and_bottom_right():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 6, 8, generator=gen)
    k, v = torch.randn(1, 2, 9, 8, generator=gen), torch.randn(1, 2, 9, 8, generator=gen)
    out, lse = checking.reference(q, k, v, True, 0.5, bottom_right=True, block=7)
    want, want_lse = _reference64(q.double(), k.double(), v.double(), True, 0.5, True)
    assert torch.allclose(out.double(), want, atol=1e-5) and torch.allclose(lse.double(), want_lse,
                                                                            atol=1e-5)
    out, lse = checking.reference(q[:, :, :6], k[:, :, :3], v[:, :, :3], True, 0.5,
                                  bottom_right=True)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()


def test_every_rule_but_the_device_is_checked_on_cpu_tensors():
    """The CUDA-only check comes last in both public functions, so that a bad scale, output
    buffer or return_lse is named on CPU tensors too (it used to say "needs CUDA tensors")."""
    from sessionkit.kernels import flash_attention, flash_attention_into

    q, k, v = _qkv()
    out, lse = torch.empty_like(q), torch.empty(1, 4, 8)
    for call, exc, words in (
            (lambda: flash_attention(q, k, v, scale=float("nan")), ValueError, "scale must be finite"),
            (lambda: flash_attention(q, k, v, scale="0.1"), TypeError, "scale must be a number"),
            (lambda: flash_attention(q, k, v, return_lse="x"), TypeError, "return_lse must be a bool"),
            (lambda: flash_attention_into(q, k, v, None, lse), TypeError, "out must be a torch.Tensor"),
            (lambda: flash_attention_into(q, k, v, out, lse.half()), TypeError, "lse must be float32"),
            (lambda: flash_attention_into(q, k, v, out[:, :2], lse), ValueError, "out must have the shape"),
            (lambda: flash_attention_into(q, k, v, out, lse, scale=1e39), ValueError, "scale must be finite")):
        with pytest.raises(exc, match=words):
            call()
    with pytest.raises(ValueError, match="needs CUDA tensors"):  # every other rule passed
        flash_attention(q, k, v, return_lse=True, scale=0.5)


def test_causal_and_enable_gqa_take_the_same_values():
    """Both flags take a bool, a NumPy bool or the int 0 or 1; 2 is refused for both."""
    np = pytest.importorskip("numpy")
    for value, expected in ((True, True), (0, False), (1, True), (np.int64(1), True),
                            (np.bool_(False), False)):
        assert api._resolve_causal(value) is expected
        assert api._resolve_gqa(value) is expected
    for value in (2, -1, 1.0, np.int64(2), "1"):
        with pytest.raises(TypeError, match="must be a bool"):
            api._resolve_causal(value)
        with pytest.raises(TypeError, match="must be a bool"):
            api._resolve_gqa(value)


def test_flash_attention_into_says_causal_is_its_sixth_argument():
    """flash_attention_into's fourth and fifth positional arguments are out and lse: an SDPA-style
    None or mask in causal's place is named as the sixth."""
    from sessionkit.kernels import flash_attention_into

    q, k, v = _qkv()
    out, lse = torch.empty_like(q), torch.empty(1, 4, 8)
    with pytest.raises(TypeError, match="its sixth positional argument is causal"):
        flash_attention_into(q, k, v, out, lse, None)


def test_a_missing_gpu_is_a_build_error():
    """One `except BuildError` covers every failure of load_extension, a CPU-only torch included."""
    import sessionkit.kernels as kernels

    assert issubclass(kernels.NoCudaError, kernels.BuildError)
    assert "NoCudaError" in kernels.__all__
