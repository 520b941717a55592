"""A small run of every kernel path for compute-sanitizer (memcheck, racecheck, synccheck):

    compute-sanitizer --tool memcheck python benchmarks/sanitize_run.py

For each head dim of the family the dispatcher picks (SESSIONKIT_KERNEL_FAMILY=sm80 forces the
fallback), both dtypes and both masks, on ragged shapes: a contiguous output and one whose rows
start 4 bytes past a 16-byte boundary (the plain-store paths of O); on the sm90 family a
long-key shape that takes the tail split; then causal calls of several tile counts back to back on
two streams (each stream's tile counter). Every output is checked for unwritten (NaN) elements.
Prints the number of calls; exit status 2 without a CUDA GPU.
"""

from __future__ import annotations

import sys


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from sessionkit.kernels import flash_attention, flash_attention_into, load_extension

    load_extension()
    device = torch.cuda.current_device()
    family = torch.ops.sessionkit.flash_attn_family(device)
    dims = [int(d) for d in torch.ops.sessionkit.flash_attn_head_dims(device)]
    torch.manual_seed(0)
    calls = 0

    def randn(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype)

    for dtype in (torch.float16, torch.bfloat16):
        for dim in dims:
            for causal in (False, True):
                for sq, sk in ((17, 113), (130, 70), (384, 384)):
                    q, k, v = randn(1, 2, sq, dim, dtype=dtype), randn(1, 2, sk, dim, dtype=dtype), \
                        randn(1, 2, sk, dim, dtype=dtype)
                    out = flash_attention(q, k, v, causal=causal)
                    assert not torch.isnan(out).any(), (dtype, dim, causal, sq, sk)
                    store = torch.full((1, 2, sq, dim + 2), float("nan"), device="cuda", dtype=dtype)
                    lse = torch.empty(1, 2, sq, device="cuda")
                    flash_attention_into(q, k, v, store[..., 2:], lse, causal=causal)
                    assert not torch.isnan(store[..., 2:]).any(), (dtype, dim, causal, sq, sk, "offset")
                    calls += 2
            if family == "sm90":
                q, k = randn(1, 1, 512, dim, dtype=dtype), randn(1, 1, 8192, dim, dtype=dtype)
                out = flash_attention(q, k, k.clone(), causal=False)
                assert not torch.isnan(out).any(), (dtype, dim, "tail split")
                calls += 1
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = []
    for i in range(6):
        q = randn(2, 3, 300 + 100 * i, 64, dtype=torch.bfloat16)
        with torch.cuda.stream(streams[i % 2]):
            outs.append(flash_attention(q, q.clone(), q.clone(), causal=True))
        calls += 1
    torch.cuda.synchronize()
    assert not any(torch.isnan(o).any() for o in outs), "streams"
    print(f"sanitize run done: {calls} calls ({family}, head dims {dims})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
