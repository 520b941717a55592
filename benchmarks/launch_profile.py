"""What one attention call puts on the GPU: every kernel (and memset) that ours and SDPA launch per
call, each one's device time, and the call's span from its first kernel's start to its last one's
end, read from the CUDA profiler through ``torch.profiler`` (CUPTI activity records).

    python benchmarks/launch_profile.py --config 32,32,512,512,64,bf16,1 [--config ...] [--calls 20] [--flush]
        [--launches K]

The calls run back to back behind a spin kernel (``torch.cuda._sleep``), as the bench step's samples
do, so host time does not open gaps between them. By default the inputs stay warm in L2 from call
to call; ``--flush`` flushes L2 before each call (the flush's own kernels left out), as the bench
step does before each sample. The table's "span" less its "kernels" is the time
the device spends between one call's kernels (launch gaps); a bench sample of one call times the
span. With ``--launches K`` each profiled unit is a bench step's sample of K launches: K calls
back to back, each on its own input set (K sets, rotating from sample to sample), after the flush
when ``--flush`` is given; the bench step takes K = ceil(0.25 ms / latency) for kernels under
0.25 ms. Each kernel is then listed per launch, and the span runs from the first launch's first
kernel to the last launch's last one. Each implementation's samples are then timed again with
CUDA events around them, as the bench step times them (no profiler attached), for comparison with
the span. Device times are medians over the samples. Needs a CUDA GPU; ours needs its kernels
built.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from sessionkit.argtypes import config_text, positive_int

IMPLS = ("ours", "sdpa")


def _short(name: str, width: int = 72) -> str:
    name = " ".join(name.split())
    return name if len(name) <= width else name[: width - 3] + "..."


def per_call(events: list[tuple[str, float, float]], calls: int) -> list[list[tuple[str, float, float]]]:
    """Splits device activity (name, start_us, end_us) sorted by start into ``calls`` equal groups
    (every call launches the same kernels). Raises ValueError when the count does not divide or
    the groups' kernel names differ."""
    if not events or len(events) % calls:
        names = sorted({_short(name, 40) for name, _, _ in events})
        raise ValueError(f"{len(events)} device activities for {calls} calls: not the same per call "
                         f"({', '.join(names) or 'none'})")
    size = len(events) // calls
    groups = [events[i * size:(i + 1) * size] for i in range(calls)]
    first = [name for name, _, _ in groups[0]]
    for i, group in enumerate(groups[1:], start=2):
        if [name for name, _, _ in group] != first:
            raise ValueError(f"call {i} launched other kernels than call 1: not the same per call")
    return groups


def summarize(groups: list[list[tuple[str, float, float]]]) -> dict:
    """Per kernel position in the call: its name and median duration (us); the median of the
    summed kernel time and of the span (first start to last end) per call, in us."""
    kernels = []
    for pos in range(len(groups[0])):
        durations = [g[pos][2] - g[pos][1] for g in groups]
        kernels.append((groups[0][pos][0], statistics.median(durations)))
    busy = statistics.median(sum(e - s for _, s, e in g) for g in groups)
    span = statistics.median(g[-1][2] - g[0][1] for g in groups)
    return {"kernels": kernels, "busy_us": busy, "span_us": span}


def _device_events(torch, prof, skip: set[str]) -> list[tuple[str, float, float]]:
    events = []
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA or evt.name in skip:
            continue
        if any(word in evt.name.lower() for word in ("sleep", "spin")):
            continue  # the spin kernel that holds the GPU while the calls are queued
        start = evt.time_range.start
        events.append((evt.name, float(start), float(start + evt.time_range.elapsed_us())))
    events.sort(key=lambda e: e[1])
    return events


def _queue_sample(launch, sets, sample: int, flush=None, launches: int = 1) -> None:
    """Queues sample number ``sample``: the flush (if any), then ``launches`` back-to-back calls
    of ``launch``, call i on input set (sample + i) mod len(sets)."""
    if flush is not None:
        flush()
    for i in range(launches):
        launch(*sets[(sample + i) % len(sets)])


def _profile(torch, launch, sets, calls: int, flush=None,
             launches: int = 1) -> list[tuple[str, float, float]]:
    """Device activity of ``calls`` samples of ``launches`` back-to-back calls of ``launch`` (call
    i of sample c on input set (c + i) mod len(sets)), queued behind a spin kernel; with ``flush``,
    it runs before each sample and its own kernels are left out of the result."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(3 * len(sets)):  # warm up: builds, cuDNN plans, allocator
        launch(*sets[i % len(sets)])
    skip: set[str] = set()
    if flush is not None:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
            flush()
            torch.cuda.synchronize()
        skip = {name for name, _, _ in _device_events(torch, prof, set())}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        torch.cuda._sleep(50_000_000)  # the host queues every call while the GPU spins
        for c in range(calls):
            _queue_sample(launch, sets, c, flush, launches)
        torch.cuda.synchronize()
    return _device_events(torch, prof, skip)


def _event_times(torch, launch, sets, calls: int, flush=None, launches: int = 1) -> list[float]:
    """The same samples timed as the bench step times them: CUDA events around each sample's
    launches (after its flush), queued behind a spin kernel. Each sample's time in us."""
    pairs = []
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)
    for c in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if flush is not None:
            flush()
        start.record()  # after the flush, which the events leave out
        _queue_sample(launch, sets, c, None, launches)
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1000.0 for start, end in pairs]


def run(config_text: str, calls: int, flush_l2: bool = False, launches: int = 1) -> str:
    import torch

    from sessionkit.attention import REGISTRY, parse_config, tflops
    from sessionkit.bench.timing import l2_flush_buffer, make_input_sets

    config = parse_config(config_text)
    device = torch.device("cuda")
    sets = make_input_sets(torch, config, device, launches)
    flush = None
    if flush_l2:
        # The bench step's timer's buffer, written by an elementwise kernel rather than zero_,
        # which may run as a memset and would then take the calls' own memsets out of the
        # profile with it.
        buf = l2_flush_buffer(torch, device)

        def flush():
            buf.add_(1)
    unit = "call" if launches == 1 else f"sample of {launches} launches"
    lines = [f"config {config_text}" + (f", per {unit}" if launches > 1 else "")
             + (f" (L2 flushed before each {unit})" if flush_l2 else "")]
    spans, timed_us = {}, {}
    for name in IMPLS:
        launch = REGISTRY[name].launcher(config)
        summary = summarize(per_call(_profile(torch, launch, sets, calls, flush, launches), calls))
        spans[name] = summary["span_us"]
        rate = tflops(config.flops * launches, summary["span_us"] / 1000)
        timed = statistics.median(_event_times(torch, launch, sets, calls, flush, launches))
        timed_us[name] = timed
        lines.append(f"  {name}: span {summary['span_us']:.1f} us ({rate:.0f} TFLOP/s), "
                     f"kernels {summary['busy_us']:.1f} us, "
                     f"gaps {summary['span_us'] - summary['busy_us']:.1f} us; "
                     f"CUDA events around the {unit}: {timed:.1f} us")
        per_launch = len(summary["kernels"]) // launches
        for pos, (kernel, us) in enumerate(summary["kernels"]):
            tag = f"[{pos // per_launch + 1}] " if launches > 1 else ""
            lines.append(f"    {us:10.1f} us  {tag}{_short(kernel)}")
    lines.append(f"  ours / sdpa by span: {spans['sdpa'] / spans['ours']:.3f}, by CUDA events: "
                 f"{timed_us['sdpa'] / timed_us['ours']:.3f} (above 1: ours is faster)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    parser.add_argument("--config", required=True, action="append", type=config_text,
                        help="B,H,Sq,Sk,D,dtype,causal[,H_kv] (repeatable)")
    parser.add_argument("--calls", type=positive_int, default=20,
                        help="calls (samples, with --launches) per implementation (default: 20)")
    parser.add_argument("--launches", type=positive_int, default=1,
                        help="back-to-back calls per sample, each on its own input set, as the bench "
                             "step's samples of short kernels (default: 1)")
    parser.add_argument("--flush", action="store_true",
                        help="flush L2 before each call, as the bench step does (default: inputs stay warm in L2)")
    args = parser.parse_args(argv)
    import torch

    from sessionkit.errors import SessionkitError

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2

    try:
        for text in args.config:
            print(run(text, args.calls, args.flush, args.launches), flush=True)
    except (SessionkitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
