"""Run in a subprocess by test_kernel_api.py: the real op schemas with a CPU implementation.

Defines the ``sessionkit`` forward ops from the schemas in csrc/flash_api.cpp, implemented on the CPU
by the fp32 reference of sessionkit.kernels.checking, then drives the public Python wrapper through
autograd, opcheck and torch.compile(fullgraph=True). Printed as one JSON object per check. It runs
apart because an op library is process-wide: the real library could not load after it.
"""

from __future__ import annotations

import json
import re
import sys
import traceback

import torch

from sessionkit.kernels import api, checking
from sessionkit.kernels.build import csrc_dir


def schemas() -> list[str]:
    text = (csrc_dir() / "flash_api.cpp").read_text()
    body = text[text.index("TORCH_LIBRARY(sessionkit, m)"):]
    body = body[:body.index("}")]
    out = []
    for call in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)", body):
        out.append("".join(re.findall(r"\"([^\"]*)\"", call)))
    return out


def define() -> None:
    lib = torch.library.Library("sessionkit", "DEF")
    for schema in schemas():
        if schema.startswith(("flash_attn_fwd(", "flash_attn_fwd_out(")):
            lib.define(schema)

    def fwd(q, k, v, causal, scale, causal_bottom_right=False):
        if q.dtype == torch.float64:  # gradcheck's stand-ins: the same math in float64
            return reference64(q, k, v, causal, scale, causal_bottom_right)
        out, lse = checking.reference(q, k, v, causal, scale, bottom_right=causal_bottom_right)
        return out.to(q.dtype), lse

    def fwd_out(q, k, v, out, lse, causal, scale, causal_bottom_right=False):
        o, l = fwd(q, k, v, causal, scale, causal_bottom_right)
        out.copy_(o)
        lse.copy_(l)

    lib.impl("flash_attn_fwd", fwd, "CPU")
    lib.impl("flash_attn_fwd_out", fwd_out, "CPU")
    define.lib = lib  # keep alive
    api.register_fakes_and_autograd()
    api._FAKES_REGISTERED = True
    api.DEVICE_TYPES = ("cuda", "cpu")


def reference64(q, k, v, causal, scale, bottom_right):
    ratio = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(ratio, 1), v.repeat_interleave(ratio, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        sq, sk = q.shape[2], k.shape[2]
        offset = sk - sq if bottom_right else 0
        hidden = torch.arange(sk)[None, :] > torch.arange(sq)[:, None] + offset
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.nan_to_num(torch.exp(scores - lse[..., None]), nan=0.0)
    return (probs @ v).contiguous(), lse.contiguous()


def qkv(b, hq, hkv, sq, sk, d, dtype, seed=0, requires_grad=False, layout="bhsd"):
    gen = torch.Generator().manual_seed(seed)

    def one(h, s):
        if layout == "bshd":
            t = torch.randn(b, s, h, d, generator=gen).to(dtype).transpose(1, 2)
        else:
            t = torch.randn(b, h, s, d, generator=gen).to(dtype)
        return t.detach().requires_grad_(requires_grad)

    return one(hq, sq), one(hkv, sk), one(hkv, sk)


def sdpa(q, k, v, causal, bottom_right):
    import torch.nn.functional as F

    gqa = q.shape[1] != k.shape[1]
    if causal and bottom_right and q.shape[2] != k.shape[2]:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


CASES = [  # (B, H_q, H_kv, Sq, Sk, D, causal, bottom_right, layout)
    (2, 4, 4, 33, 33, 64, True, False, "bhsd"),
    (1, 8, 2, 17, 40, 64, True, True, "bshd"),
    (2, 4, 1, 40, 17, 128, True, False, "bhsd"),
    (1, 6, 3, 24, 24, 128, False, False, "bshd"),
    (1, 4, 2, 5, 29, 64, True, True, "bhsd"),
]


def grads_within_2x_of_sdpa():
    """bf16 gradients through the wrapper vs fp32 autograd, under the 2x-SDPA rule."""
    from sessionkit.kernels import flash_attention

    report = []
    for i, (b, hq, hkv, sq, sk, d, causal, br, layout) in enumerate(CASES):
        q, k, v = qkv(b, hq, hkv, sq, sk, d, torch.bfloat16, seed=i, requires_grad=True,
                      layout=layout)
        align = "bottom_right" if br else "top_left"
        out, lse = flash_attention(q, k, v, causal=causal, return_lse=True, causal_alignment=align,
                                   enable_gqa=hkv != hq)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(99 + i))
        (out.float() * grad).sum().backward()
        ours = [t.grad.float() for t in (q, k, v)]
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref, _ = checking.reference(q32, k32, v32, causal, 1 / d ** 0.5, bottom_right=br)
        (ref * grad).sum().backward()
        refs = [t.grad for t in (q32, k32, v32)]
        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
        (sdpa(qs, ks, vs, causal, br).float() * grad).sum().backward()
        theirs = [t.grad.float() for t in (qs, ks, vs)]
        for name, o, r, t in zip("qkv", ours, refs, theirs):
            err = float((o - r).abs().max())
            bound = 2 * float((t - r).abs().max()) + 1e-5
            report.append([i, name, err, bound])
            if not err <= bound:
                raise AssertionError(f"case {i} d{name}: err {err} > bound {bound}")
    return report


def gradcheck_float64():
    """torch.autograd.gradcheck on float64 stand-ins through the op and its autograd formula."""
    for i, (b, hq, hkv, sq, sk, d, causal, br, _layout) in enumerate(CASES):
        q, k, v = qkv(1, hq // hkv * 2, 2, min(sq, 6), min(sk, 7), 8, torch.float64, seed=i,
                      requires_grad=True)

        def fn(q, k, v):
            out, lse = torch.ops.sessionkit.flash_attn_fwd(q, k, v, causal, 0.5, br)
            return out, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)

        assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)
    return len(CASES)


def opcheck_with_gradients():
    from torch.library import opcheck

    done = []
    for i, (b, hq, hkv, sq, sk, d, causal, br, layout) in enumerate(CASES):
        q, k, v = qkv(b, hq, hkv, sq, sk, d, torch.bfloat16, seed=i, requires_grad=True)
        opcheck(torch.ops.sessionkit.flash_attn_fwd.default, (q, k, v, causal, 0.125, br))
        done.append(i)
    q, k, v = qkv(1, 4, 2, 9, 12, 64, torch.bfloat16, requires_grad=True)
    out, lse = torch.ops.sessionkit.flash_attn_fwd(q, k, v, True, 0.125, True)
    grads = [torch.randn(out.shape).bfloat16(), torch.randn(lse.shape)]
    opcheck(torch.ops.sessionkit.flash_attn_bwd.default,
            (grads[0], q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), grads[1],
             True, 0.125, True))
    return done


class Block(torch.nn.Module):
    """Projection, view, transpose, attention, as in a decoder layer."""

    def __init__(self, hidden=256, heads=4, kv_heads=2, causal=True, alignment="top_left"):
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, hidden // heads
        self.q = torch.nn.Linear(hidden, heads * self.dim, bias=False)
        self.kv = torch.nn.Linear(hidden, 2 * kv_heads * self.dim, bias=False)
        self.o = torch.nn.Linear(heads * self.dim, hidden, bias=False)
        self.causal, self.alignment = causal, alignment

    def forward(self, x, memory):
        from sessionkit.kernels import flash_attention

        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.dim).transpose(1, 2)
        kv = self.kv(memory).view(b, memory.shape[1], 2, self.kv_heads, self.dim)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        out, lse = flash_attention(q, k, v, causal=self.causal, return_lse=True,
                                   causal_alignment=self.alignment, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(b, s, -1)), lse


def compile_fullgraph():
    """torch.compile(fullgraph=True) of Block matches eager, static and dynamic, with gradients."""
    torch.manual_seed(0)
    results = []
    for dynamic in (False, True):
        torch._dynamo.reset()
        block = Block(alignment="bottom_right").bfloat16()
        compiled = torch.compile(block, fullgraph=True, dynamic=dynamic, backend="aot_eager")
        for s_q, s_k in ((16, 40), (24, 24), (7, 33)):
            x = torch.randn(2, s_q, 256).bfloat16()
            mem = torch.randn(2, s_k, 256).bfloat16()
            y, lse = block(x, mem)
            y.float().sum().backward()
            eager_grads = [p.grad.clone() for p in block.parameters()]
            block.zero_grad()
            yc, lsec = compiled(x, mem)
            yc.float().sum().backward()
            comp_grads = [p.grad.clone() for p in block.parameters()]
            block.zero_grad()
            assert torch.equal(y, yc), (dynamic, s_q, s_k)
            assert torch.equal(lse, lsec)
            for a, c in zip(eager_grads, comp_grads):
                assert torch.allclose(a.float(), c.float(), atol=1e-2, rtol=1e-2)
            results.append([dynamic, s_q, s_k])
    return results


def compile_dynamic_scale():
    """torch.compile(fullgraph=True, dynamic=True) with a scale computed from q's shape (a
    symbolic float while tracing) matches eager, as SDPA's does."""
    from sessionkit.kernels import flash_attention

    def attend(q, k, v):
        return flash_attention(q, k, v, causal=True, scale=q.shape[-1] ** -0.5)

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True, dynamic=True, backend="aot_eager")
    done = []
    for seq, dim in ((16, 64), (24, 64), (9, 128)):
        q, k, v = qkv(2, 4, 4, seq, seq, dim, torch.bfloat16, seed=seq)
        assert torch.equal(compiled(q, k, v), attend(q, k, v)), (seq, dim)
        done.append([seq, dim])
    return done


def rows_without_keys():
    """Bottom-right with Sq > Sk: the first Sq - Sk rows give O = 0, LSE = -inf, zero gradients."""
    from sessionkit.kernels import flash_attention

    q, k, v = qkv(1, 2, 2, 9, 4, 64, torch.bfloat16, requires_grad=True)
    out, lse = flash_attention(q, k, v, causal=True, causal_alignment="bottom_right",
                               return_lse=True)
    assert torch.equal(out[:, :, :5], torch.zeros_like(out[:, :, :5]))
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    out.float().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad.float()).all()
    assert torch.equal(q.grad[:, :, :5], torch.zeros_like(q.grad[:, :, :5]))
    return True


FAKE_CASES = [  # (B, H_q, H_kv, Sq, Sk, D, causal, bottom_right)
    (2, 32, 8, 1024, 1024, 128, True, False),   # GQA
    (8, 32, 8, 1, 32768, 128, True, True),      # decode, bottom-right
    (2, 16, 1, 16, 4096, 64, True, True),       # MQA
    (1, 4, 4, 9, 4, 256, True, True),           # rows without keys
    (2, 8, 4, 333, 77, 96, False, False),       # D=96, Sq > Sk
]


def fakes_for_new_cases():
    """The registered fakes of both forward ops on CUDA fake tensors, (B, S, H, D) k and v."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rows = []
    for b, hq, hkv, sq, sk, d, causal, br in FAKE_CASES:
        with FakeTensorMode():
            q = torch.empty(b, hq, sq, d, dtype=torch.bfloat16, device="cuda")
            k = torch.empty(b, sk, hkv, d, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
            out, lse = torch.ops.sessionkit.flash_attn_fwd(q, k, k, causal, 0.1, br)
            none = torch.ops.sessionkit.flash_attn_fwd_out(q, k, k, torch.empty_like(q), lse,
                                                           causal, 0.1, br)
            rows.append([[b, hq, hkv, sq, sk, d], list(out.shape), str(out.dtype),
                         out.device.type, out.is_contiguous(), list(lse.shape), str(lse.dtype),
                         none is None])
    return rows


def main() -> int:
    define()
    for name in sys.argv[1:]:
        try:
            result = globals()[name]()
            print(json.dumps({"check": name, "ok": True, "result": result}), flush=True)
        except Exception as exc:  # reported to the test, which fails with it
            print(json.dumps({"check": name, "ok": False,
                              "error": f"{type(exc).__name__}: {exc}",
                              "trace": traceback.format_exc()[-3000:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
