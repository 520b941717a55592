"""Does where the inputs sit in GPU memory move a config's latency from run to run?

Runs a few configs in several "runs" in one process, each run a new Timer visiting every config
in passes as the bench step does, with three ways of placing the input sets on each visit:

    same   the caching allocator's choice (a config's visits tend to get the same blocks back)
    shift  a spacer of random size (0-62 MiB, 2 MiB steps) allocated before the sets
    fresh  the allocator's cache emptied first, so that the sets come from new device allocations

and prints, per mode and config, the run-to-run spread of the medians and of the SM clock.

    python benchmarks/bench_placement.py [--runs 6] [--passes 5] [--visit-s 0.5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

CONFIGS = ["16,16,1024,1024,128,fp16,0", "16,16,1024,1024,128,fp16,1", "2,16,2048,4096,128,bf16,0"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--visit-s", type=float, default=0.5)
    parser.add_argument("--modes", default="same,shift,fresh")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"needs a CUDA GPU (torch {torch.__version__} sees none)", file=sys.stderr)
        return 2

    from sessionkit.attention import parse_config
    from sessionkit.bench import timing
    from sessionkit.bench.passes import median_clock, merge_run
    from sessionkit.bench.step import stop_rule

    configs = [parse_config(c) for c in CONFIGS]
    device = torch.device("cuda", torch.cuda.current_device())
    probe = timing.Probe.for_torch_device(device.index)
    rng = random.Random(0)
    modes = args.modes.split(",")
    results = {}  # (mode, config label, impl) -> [(median, clock) per run]
    timer = timing.Timer(torch, device, probe=probe)
    timing.preheat(timer, cap_s=30.0)
    for run_no in range(args.runs):
        for mode in modes:
            timer = timing.Timer(torch, device, probe=probe)
            merged = {}
            for p in range(args.passes):
                for config in configs:
                    spacer = None
                    if mode == "fresh":
                        torch.cuda.empty_cache()
                    elif mode == "shift":
                        spacer = torch.empty(rng.randrange(0, 32) << 21, dtype=torch.uint8,
                                             device=device)
                    impls = [i for i in timing.sdpa_impls(torch, config)
                             if i.name in ("sdpa", "sdpa_flash")]
                    ours, _ = timing.ours_impl(torch, config)
                    if ours is not None:
                        impls.insert(0, ours)
                    set_bytes = config.input_bytes
                    sets = timing.make_input_sets(torch, config, device, 4)
                    known = merged.get(config, {})
                    runs = timer.measure(impls, sets, rule=stop_rule(args.visit_s, args.passes),
                                         deadline=time.monotonic() + args.visit_s,
                                         warmup_s=0.05, warmup_cap_s=0.2,
                                         memory_set_bytes=set_bytes, known=known)
                    merged[config] = {r.name: merge_run(known.get(r.name), r, p) for r in runs}
                    del sets, spacer
            for config, by in merged.items():
                for name, run in by.items():
                    if run.samples:
                        results.setdefault((mode, config.label, name), []).append(
                            (statistics.median(run.samples), median_clock(run)))
            print(f"run {run_no + 1}/{args.runs} {mode} done", flush=True)
    probe.close()

    print(f"{'mode':<6} {'config':<34} {'impl':<11} {'spread %':>8} {'clock MHz per run'}")
    for (mode, label, name), values in sorted(results.items()):
        meds = [m for m, _ in values]
        spread = 100 * (max(meds) - min(meds)) / statistics.median(meds)
        clocks = " ".join("-" if c is None else f"{c:.0f}" for _, c in values)
        print(f"{mode:<6} {label:<34} {name:<11} {spread:>8.2f} {clocks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
