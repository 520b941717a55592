"""One call of an attention kernel, for Nsight Compute to profile.

    ncu --profile-from-start off ... python benchmarks/profile_target.py \
        --config 4,16,4096,4096,128,bf16,0 --kernel sdpa

The kernel is first called a few times (module loading, cuDNN plan building, autotuning), then exactly
one more call is bracketed by cudaProfilerStart/cudaProfilerStop. A profiler started with
``--profile-from-start off`` therefore sees the kernels of that one call and nothing else.
``sessionkit step profile`` runs this script; it can also be run by hand, with or without ncu.

The last line printed is ``PROFILE_TARGET {json}``: what ran, on which device, with which torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from sessionkit.profile import KERNELS, parse_config  # noqa: E402  (needs the checkout on sys.path)


def _dtype(torch, name: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _ours():
    """The project's kernel: ``sessionkit.kernels.flash_attention(q, k, v, causal=...)``, (B, H, S, D)."""
    import importlib

    found = importlib.import_module("sessionkit.kernels")
    fn = getattr(found, "flash_attention", None)
    if fn is not None and not callable(fn):  # a module of that name: its function of the same name
        fn = getattr(fn, "flash_attention", None)
    if fn is None or not callable(fn):
        raise SystemExit("sessionkit.kernels has no callable flash_attention(q, k, v, causal=...)")
    return lambda q, k, v, causal: fn(q, k, v, causal=causal)


def _sdpa(torch, backend: str | None):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if backend is None:
        return lambda q, k, v, causal: sdpa(q, k, v, is_causal=causal)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def call(q, k, v, causal):
        with sdpa_kernel([chosen]):
            return sdpa(q, k, v, is_causal=causal)

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="B,H,Sq,Sk,D,dtype,causal")
    parser.add_argument("--kernel", choices=KERNELS, default="ours")
    parser.add_argument("--warmup", type=int, default=3, help="calls before the profiled one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = parse_config(args.config)

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    dtype = _dtype(torch, cfg.dtype)
    q = torch.randn(cfg.batch, cfg.heads, cfg.seq_q, cfg.head_dim, device=dev, dtype=dtype,
                    generator=gen)
    k = torch.randn(cfg.batch, cfg.heads, cfg.seq_k, cfg.head_dim, device=dev, dtype=dtype,
                    generator=gen)
    v = torch.randn_like(k)
    if args.kernel == "ours":
        fn = _ours()
    else:
        fn = _sdpa(torch, args.kernel.partition("_")[2] or None)

    for _ in range(max(0, args.warmup)):
        fn(q, k, v, cfg.causal)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    out = fn(q, k, v, cfg.causal)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    if not torch.isfinite(out).all():
        raise SystemExit("the profiled call returned non-finite values")

    props = torch.cuda.get_device_properties(dev)
    print("PROFILE_TARGET " + json.dumps({
        "kernel": args.kernel, "config": cfg.label, "gpu_name": props.name,
        "gpu_cc": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
