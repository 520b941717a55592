"""The profile target: one call of an attention implementation, for Nsight Compute to profile.

    ncu --profile-from-start off ... python -m sessionkit.profile.target \
        --config 4,16,4096,4096,128,bf16,0 --kernel sdpa

The implementation (any name of :data:`sessionkit.attention.IMPLS`) is first called a few times
(module loading, cuDNN plan building, autotuning), then exactly one more call is bracketed by
cudaProfilerStart/cudaProfilerStop. A profiler started with ``--profile-from-start off`` therefore
sees the kernels of that one call and nothing else. ``sessionkit step profile`` runs this module
(:func:`~sessionkit.profile.ncu.target_command`); it runs from an installed package as well as from a
checkout, and by hand with or without ncu.

The last line printed is ``PROFILE_TARGET {json}``: what ran, on which device, with which torch
(:func:`~sessionkit.profile.ncu.target_info` reads it back). Without a CUDA GPU it exits with status
1 and one line saying so.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..attention import CONFIG_FORMAT, IMPLS, REGISTRY, ImplementationUnavailable
from ..errors import UsageError
from .ncu import DEFAULT_CONFIG, INFO_PREFIX, MODULE, gpu_facts, parse_profile_config


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, warm the implementation up, profile one call; the exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"{CONFIG_FORMAT} "
                        f"(default {DEFAULT_CONFIG})")
    parser.add_argument("--kernel", choices=IMPLS, default="ours")
    parser.add_argument("--warmup", type=int, default=3, help="calls before the profiled one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        cfg = parse_profile_config(args.config)
    except UsageError as exc:
        parser.error(str(exc))
    skip, _ = gpu_facts()
    if skip:
        raise SystemExit(skip)
    try:
        launch = REGISTRY[args.kernel].launcher(cfg)
    except ImplementationUnavailable as exc:
        raise SystemExit(str(exc)) from None

    import torch

    from ..bench.timing import make_input_sets

    dev = torch.device("cuda", torch.cuda.current_device())
    q, k, v = make_input_sets(torch, cfg, dev, 1, seed=args.seed)[0]
    for _ in range(max(0, args.warmup)):
        launch(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    out = launch(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    finite = torch.isfinite(out)
    if cfg.bottom_right and cfg.seq_len_q > cfg.seq_len_k:  # rows that see no key: NaN in SDPA
        finite[:, :, :cfg.seq_len_q - cfg.seq_len_k] = True
    if not finite.all():
        raise SystemExit("the profiled call returned non-finite values")

    props = torch.cuda.get_device_properties(dev)
    print(INFO_PREFIX + json.dumps({
        "kernel": args.kernel, "config": cfg.spec, "gpu_name": props.name,
        "gpu_cc": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
