"""A small run of every kernel path for compute-sanitizer (memcheck, racecheck, synccheck):

    compute-sanitizer --tool memcheck --error-exitcode 3 python benchmarks/sanitize_run.py

(memcheck sees overruns into neighbouring tensors only with PYTORCH_NO_CUDA_MEMORY_CACHING=1.)
For each head dim of the family the dispatcher picks (SESSIONKIT_KERNEL_FAMILY=sm80 forces the
fallback), both dtypes and both masks, on ragged shapes: into a NaN-poisoned contiguous output,
and into one whose rows start 4 bytes past a 16-byte boundary, its two guard columns holding a
sentinel (the plain-store paths of O). On the sm90 family also: the causal kernels of long keys,
D=64 causal's mid-keys kernel, a grouped-query decode call (split-KV and its combine kernel,
bottom-right mask), and at D=128 a shape whose last round of tiles is split by keys (the tail
split). Then causal calls of several tile counts back to back on two streams (each stream's tile
counter). Every output element and LSE must be written and the guard columns untouched; exit
status 1 otherwise (with the case), 2 without a CUDA GPU.
"""

from __future__ import annotations

import sys

SENTINEL = 7.0


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from sessionkit.kernels import flash_attention_into, load_extension

    load_extension()
    device = torch.cuda.current_device()
    family = torch.ops.sessionkit.flash_attn_family(device)
    dims = [int(d) for d in torch.ops.sessionkit.flash_attn_head_dims(device)]
    torch.manual_seed(0)
    calls = 0

    def randn(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype)

    def check(case, b, hq, hkv, sq, sk, dim, dtype, causal, alignment="top_left", offset=False):
        nonlocal calls
        q = randn(b, hq, sq, dim, dtype=dtype)
        k, v = randn(b, hkv, sk, dim, dtype=dtype), randn(b, hkv, sk, dim, dtype=dtype)
        width = dim + 2 if offset else dim
        store = torch.full((b, hq, sq, width), float("nan"), device="cuda", dtype=dtype)
        if offset:
            store[..., :2] = SENTINEL
        out = store[..., 2:] if offset else store
        lse = torch.full((b, hq, sq), float("nan"), device="cuda")
        flash_attention_into(q, k, v, out, lse, causal=causal, causal_alignment=alignment,
                             enable_gqa=hq != hkv)
        torch.cuda.synchronize()
        calls += 1
        if torch.isnan(out).any() or torch.isnan(lse).any():
            raise AssertionError(f"{case}: unwritten output or LSE elements")
        if offset and not bool((store[..., :2] == SENTINEL).all()):
            raise AssertionError(f"{case}: the guard columns before the output were written")

    try:
        for dtype in (torch.float16, torch.bfloat16):
            for dim in dims:
                for causal in (False, True):
                    for sq, sk in ((17, 113), (130, 70), (384, 384)):
                        case = (str(dtype), dim, causal, sq, sk)
                        check(case, 1, 2, 2, sq, sk, dim, dtype, causal)
                        check(case + ("4-byte offset",), 1, 2, 2, sq, sk, dim, dtype, causal, offset=True)
                if family == "sm90":
                    # the causal kernels of long keys (the short-keys variants end at 2048 and 1024)
                    check((str(dtype), dim, "causal long keys"), 1, 1, 1, 2176, 2176, dim, dtype, True)
                    if dim == 64:
                        # D=64 causal's mid-keys kernel (1025-2048 keys), with key-less rows, O
                        # by TMA store and by plain stores
                        for offset in (False, True):
                            check((str(dtype), dim, "causal mid keys", offset), 1, 2, 2, 1300, 1100,
                                  dim, dtype, True, alignment="bottom_right", offset=offset)
                    # decode: split-KV ranges and their combine, grouped heads; and with the
                    # bottom-right mask
                    check((str(dtype), dim, "decode"), 1, 8, 2, 1, 4096, dim, dtype, False)
                    check((str(dtype), dim, "decode, bottom-right"), 1, 8, 2, 1, 4096, dim, dtype,
                          True, alignment="bottom_right")
            if family == "sm90" and 128 in dims:
                # 136 tiles on 132 CTAs: the last round's 4 tiles are split by keys
                check((str(dtype), 128, "tail split"), 1, 34, 34, 512, 2048, 128, dtype, False)
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        outs = []
        for i in range(6):
            with torch.cuda.stream(streams[i % 2]):  # made and read on the same stream
                q = randn(2, 3, 300 + 100 * i, 64, dtype=torch.bfloat16)
                out = torch.full_like(q, float("nan"))
                lse = torch.full(q.shape[:3], float("nan"), device="cuda")
                flash_attention_into(q, q, q, out, lse, causal=True)
                outs.append((out, lse))
            calls += 1
        torch.cuda.synchronize()
        if any(torch.isnan(o).any() or torch.isnan(l).any() for o, l in outs):
            raise AssertionError("causal calls on two streams: unwritten output or LSE elements")
    except AssertionError as exc:
        print(f"sanitize run FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"sanitize run done: {calls} calls ({family}, head dims {dims})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
