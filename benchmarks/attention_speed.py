"""Speed of sessionkit's FlashAttention forward against SDPA (default backend and flash backend).

    python benchmarks/attention_speed.py [--batch 4 --heads 16 --seq 4096 --reps 30] [--json out.json]

For each of {fp16, bf16} x {D64, D128} x {causal, full}: random inputs, warm-up, then `reps` rounds
that time every implementation once each (interleaved), each timed with CUDA events after a 256 MB
buffer is zeroed to flush L2. Reports the median, TFLOP/s (the FLOPs of
``sessionkit.attention.AttentionConfig``: 4*B*H*D per unmasked (query, key) pair) and our ratio to
each SDPA variant; the implementations are those of ``sessionkit.attention.REGISTRY``. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, default in (("--batch", 4), ("--heads", 16), ("--seq", 4096), ("--reps", 30),
                            ("--warmup", 5)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--only", default="", help="comma list of config labels to run, e.g. bf16-d128-full")
    parser.add_argument("--json", dest="json_path", help="write all samples and medians here")
    args = parser.parse_args(argv)

    import torch

    from sessionkit.attention import REGISTRY, AttentionConfig
    from sessionkit.attention import tflops as to_tflops
    from sessionkit.bench.timing import make_input_sets
    from sessionkit.kernels import load_extension

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    info = load_extension()
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"kernels {info.key} ({'cached' if info.cached else 'built'})")

    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    b, h, s = args.batch, args.heads, args.seq
    rows = []
    only = {x for x in args.only.split(",") if x}
    for dtype_name in ("fp16", "bf16"):
        for dim in (64, 128):
            for causal in (False, True):
                cfg = AttentionConfig(b, h, s, s, dim, dtype_name, causal)
                label = f"{cfg.dtype}-d{cfg.head_dim}-{cfg.mask}"
                if only and label not in only:
                    continue
                q, k, v = make_input_sets(torch, cfg, "cuda", 1, seed=dim + causal)[0]
                impls = {name: (lambda fn=REGISTRY[name].launcher(cfg), qkv=(q, k, v): fn(*qkv))
                         for name in ("ours", "sdpa", "sdpa_flash")}
                ref = impls["sdpa"]()
                err = (impls["ours"]().float() - ref.float()).abs().max().item()
                for fn in impls.values():
                    for _ in range(args.warmup):
                        fn()
                torch.cuda.synchronize()
                samples = {name: [] for name in impls}
                for _ in range(args.reps):
                    for name, fn in impls.items():
                        flush.zero_()
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                        fn()
                        end.record()
                        end.synchronize()
                        samples[name].append(start.elapsed_time(end))
                flops = cfg.flops
                med = {name: statistics.median(x) for name, x in samples.items()}
                tflops = {name: to_tflops(flops, ms) for name, ms in med.items()}
                rows.append({"config": label, "dtype": dtype_name, "head_dim": dim, "causal": causal,
                             "batch": b, "heads": h, "seq": s, "flops": flops, "median_ms": med,
                             "tflops": tflops, "samples_ms": samples, "max_abs_diff_vs_sdpa": err})
                print(f"  {label}: ours {tflops['ours']:.0f} TFLOP/s ({med['ours']:.3f} ms), "
                      f"sdpa {tflops['sdpa']:.0f}, sdpa_flash {tflops['sdpa_flash']:.0f}, "
                      f"max|ours-sdpa| {err:.2e}", flush=True)
                del q, k, v, ref

    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"device": props.name, "torch": torch.__version__, "cuda": torch.version.cuda,
                       "rows": rows}, fh, indent=1)
    print()
    print(f"B={b} H={h} S={s}, median of {args.reps} interleaved runs, L2 flushed, TFLOP/s")
    print(f"{'config':<18}{'ours':>8}{'sdpa':>8}{'flash':>8}{'ours/sdpa':>11}{'ours/flash':>12}")
    for row in rows:
        t = row["tflops"]
        print(f"{row['config']:<18}{t['ours']:>8.1f}{t['sdpa']:>8.1f}{t['sdpa_flash']:>8.1f}"
              f"{t['ours'] / t['sdpa']:>11.2f}{t['ours'] / t['sdpa_flash']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
