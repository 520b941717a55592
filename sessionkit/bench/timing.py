"""GPU timing of attention implementations with CUDA events.

The method, per sample:

1. a short spin kernel (``torch.cuda._sleep``) holds the GPU while the CPU queues the rest, so that
   host launch latency never lands between the events;
2. L2 is flushed by writing a buffer twice the size of the device's L2;
3. start event, ``k`` launches back to back (``k`` = 1 for kernels of 0.25 ms and more, enough to
   fill about 0.25 ms for small ones), each launch on its own input set, end event. Input sets
   rotate from sample to sample, so that one unlucky placement in memory does not set the result;
4. one CUDA-graph replay instead of the ``k`` launches in graph mode.

Implementations of one config are interleaved round by round (the first one rotates), the SM clock
is warmed until NVML reads it steady, and NVML's clock-event reasons are read around every round
and kept per sample. Samples under an outside slowdown (heat, for one) are left out of the median;
those at the power cap are counted as throttled but kept, as that clock is set by the kernel's own
power draw. Sampling stops per implementation when the median is known well enough
(:class:`~sessionkit.bench.stats.StopRule`) or the config's time is up.

torch is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .. import nvml as nvml_reader
from ..attention import (DTYPES, REGISTRY, SDPA_IMPLS, AttentionConfig, ImplementationUnavailable,
                         torch_dtype)
from ..errors import first_line
from .stats import StopRule, iqr, median, usable_samples

TARGET_SAMPLE_MS = 0.25  # small kernels are batched up to about this much work per event pair
BATCH_MS = 25.0  # GPU work queued between two host synchronisations
HOLD_MARGIN_MS = 0.05
HOST_OVERHEAD_MS = 0.03  # host time of a sample besides its launches (events, flush, hold)
MAX_LAUNCHES = 512
INPUT_SETS = 4  # rotating input sets (placements) per config, memory allowing
INPUT_MEMORY_CAP = 2 << 30  # bytes for all input sets of one config


def launches_for(latency_ms: float, target_ms: float = TARGET_SAMPLE_MS,
                 max_launches: int = MAX_LAUNCHES) -> int:
    """How many back-to-back launches one sample should time for a kernel of ``latency_ms``."""
    if latency_ms <= 0 or not math.isfinite(latency_ms):
        return max_launches
    return max(1, min(max_launches, math.ceil(target_ms / latency_ms)))


def input_sets_for(set_bytes: int, launches: int, *, cap: int = INPUT_MEMORY_CAP,
                   minimum: int = INPUT_SETS) -> int:
    """Input sets to allocate: one per launch of a sample (at least ``minimum``), within ``cap``."""
    want = max(minimum, launches)
    return max(1, min(want, cap // max(1, set_bytes)))


def slowdown_flags(throttled: list[bool], reasons: list[int | None] | None = None) -> list[bool]:
    """Per sample, whether it was taken under a slowdown imposed from outside the kernel
    (:data:`~sessionkit.nvml.SLOWDOWN_MASK`). A sample without recorded reasons (rows
    stored before reasons were kept) falls back to its throttled flag."""
    reasons = list(reasons or [])
    reasons += [None] * (len(throttled) - len(reasons))
    return [nvml_reader.is_slowdown(r) if r is not None else bool(t)
            for t, r in zip(throttled, reasons)]


def summarize_samples(samples: list[float], throttled: list[bool],
                      reasons: list[int | None] | None = None, *, min_clean: int = 5) -> dict:
    """Median and IQR over the samples not taken under an outside slowdown (when enough are
    left: :func:`~sessionkit.bench.stats.usable_samples`). Samples at the power cap count as
    throttled but stay in the median: see :data:`~sessionkit.nvml.SLOWDOWN_MASK`."""
    flags = slowdown_flags(throttled, reasons)
    used, with_slowed = usable_samples(samples, flags, min_clean=min_clean)
    return {
        "latency_ms": median(used) if used else None,
        "iqr_ms": iqr(used) if used else None,
        "samples": len(samples),
        "throttled_samples": sum(bool(t) for t in throttled),
        "slowed_samples": sum(flags),
        "left_out": len(samples) - len(used),
        "used_slowed": with_slowed,
    }


# --------------------------------------------------------------------------------------------
# NVML probe: clock and throttle state of the benchmarked GPU


class Probe:
    """SM clock and throttle reasons of one GPU through NVML, or nothing without NVML."""

    def __init__(self, nvml=None, device=None, reason: str | None = None):
        self.nvml = nvml
        self.device = device
        self.reason = reason

    @classmethod
    def for_torch_device(cls, index: int) -> "Probe":
        try:
            nvml = nvml_reader.load_nvml()
        except nvml_reader.NvmlUnavailable as exc:
            return cls(reason=str(exc))
        try:
            # Matched by UUID: CUDA's index `index` need not be NVML's (mixed GPU models).
            devices = nvml_reader.resolve_devices(nvml, cuda_order=nvml_reader.cuda_uuids())
        except Exception as exc:
            return cls(reason=f"cannot list GPUs ({exc})")
        if index >= len(devices):
            nvml.nvmlShutdown()
            return cls(reason="the GPU is not visible to NVML")
        return cls(nvml, devices[index])

    @property
    def available(self) -> bool:
        return self.device is not None

    def sm_clock(self) -> float | None:
        return nvml_reader.read_sm_clock(self.nvml, self.device.handle) if self.available else None

    def reasons(self) -> int | None:
        return nvml_reader.read_reasons(self.nvml, self.device.handle) if self.available else None

    def temperature(self) -> float | None:
        return nvml_reader.read_temperature(self.nvml, self.device.handle) if self.available else None

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None
            self.device = None


# --------------------------------------------------------------------------------------------
# Implementations


@dataclass
class Impl:
    name: str
    launch: Callable  # launch(q, k, v) -> output tensor
    reference: bool = False  # outputs compared against this one


def sdpa_impls(torch, config: AttentionConfig) -> list[Impl]:
    """SDPA's own choice and each backend of :data:`~sessionkit.attention.REGISTRY` that runs on
    ``config`` (the math backend only for small shapes)."""
    return [Impl(name, REGISTRY[name].launcher(config), REGISTRY[name].reference)
            for name in SDPA_IMPLS if REGISTRY[name].fits(config)]


def ours_impl(torch, config: AttentionConfig) -> tuple[Impl | None, str | None]:
    """The project's kernel, or (None, why not)."""
    try:
        return Impl("ours", REGISTRY["ours"].launcher(config)), None
    except ImplementationUnavailable as exc:
        return None, str(exc)


# --------------------------------------------------------------------------------------------
# The timer


@dataclass
class ImplRun:
    """Measurements of one implementation on one config."""

    name: str
    status: str = "ok"  # ok | wrong | unsupported | error
    note: str = ""
    samples: list[float] = field(default_factory=list)
    throttled: list[bool] = field(default_factory=list)
    reasons: list[int | None] = field(default_factory=list)  # NVML clock-event reasons per sample
    clocks: list[float | None] = field(default_factory=list)  # SM MHz read after each sample
    passes: list[int] = field(default_factory=list)  # the pass each sample was taken in
    launches: int = 1
    stop_reason: str = ""
    memory_mb: float | None = None
    max_abs_err: float | None = None
    estimate_ms: float | None = None
    host_ms: float = 0.05  # host time to queue one launch
    graph: object = None
    done: bool = False


def l2_flush_buffer(torch, device):
    """An int32 buffer on ``device`` twice the size of its L2 (at least 8 MB; 50 MB of L2 assumed
    where torch does not say): writing all of it evicts every line an earlier kernel left in L2."""
    props = torch.cuda.get_device_properties(device)
    l2_bytes = int(getattr(props, "L2_cache_size", 0) or 50 << 20)
    return torch.empty(max(2 * l2_bytes, 8 << 20) // 4, dtype=torch.int32, device=device)


class Timer:
    """CUDA-event timing on one device, with an L2 flush and a launch-latency shield."""

    def __init__(self, torch, device=None, *, probe: Probe | None = None, graph: bool = False,
                 cooldown: float = 0.0):
        self.torch = torch
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else device
        self.flush_buf = l2_flush_buffer(torch, self.device)
        self.probe = probe or Probe(reason="no probe")
        self.graph = graph
        self.cooldown = max(0.0, float(cooldown))  # idle time per unit of batch time
        self.cycles_per_ms = self._calibrate_sleep()
        self.flush_ms = self._time_flush()

    # -- building blocks

    def flush(self) -> None:
        self.flush_buf.zero_()

    def _calibrate_sleep(self) -> float:
        torch = self.torch
        torch.cuda.synchronize(self.device)
        best = None
        for _ in range(3):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(1_000_000)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            rate = 1_000_000 / ms if ms > 0 else 2e6
            best = rate if best is None else max(best, rate)
        return best

    def _time_flush(self) -> float:
        times = []
        for _ in range(5):
            start, end = self.events()
            start.record()
            self.flush()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return median(times)

    def hold(self, ms: float) -> None:
        """Keep the GPU busy for about ``ms`` so that what the CPU queues next runs back to back."""
        if ms > 0:
            self.torch.cuda._sleep(int(ms * self.cycles_per_ms))

    def rest(self, busy_s: float) -> None:
        """Leave the GPU idle for ``cooldown`` times ``busy_s`` (the last batch's wall time), so
        that its average power stays below the board's limit and its clock at full boost."""
        if self.cooldown > 0 and busy_s > 0:
            time.sleep(self.cooldown * busy_s)

    def events(self):
        torch = self.torch
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    # -- one sample

    def enqueue(self, impl: Impl, run: ImplRun, sets: list, first_set: int, hold_ms: float):
        """Queue one sample (no sync) and return its event pair."""
        start, end = self.events()
        self.hold(hold_ms)
        self.flush()
        if run.graph is not None:
            graph = run.graph[first_set % len(run.graph)]
            start.record()
            graph.replay()
            end.record()
        else:
            n = len(sets)
            start.record()
            for i in range(run.launches):
                q, k, v = sets[(first_set + i) % n]
                impl.launch(q, k, v)
            end.record()
        return start, end

    def capture(self, impl: Impl, run: ImplRun, sets: list) -> None:
        """Capture the sample's launches as CUDA graphs (one per starting input set)."""
        torch = self.torch
        graphs = []
        n = len(sets)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for i in range(run.launches):  # warm the allocator on the side stream
                impl.launch(*sets[i % n])
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for first in range(min(n, INPUT_SETS)):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(run.launches):
                    impl.launch(*sets[(first + i) % n])
            graphs.append(g)
        torch.cuda.synchronize(self.device)
        run.graph = graphs

    # -- the interleaved loop over implementations of one config

    def measure(self, impls: list[Impl], sets: list, *, rule: StopRule, deadline: float,
                warmup_s: float = 0.05, warmup_cap_s: float = 1.0,
                check: Callable | None = None, memory_set_bytes: int = 0,
                known: dict[str, ImplRun] | None = None) -> list[ImplRun]:
        """Measure ``impls`` on the input ``sets`` interleaved; returns one ImplRun each.

        ``check(name, out, ref) -> (ok, max_abs_err, note)`` compares each output with the
        reference implementation's on input set 0; a wrong one gets no timing. ``known`` holds
        the runs of an earlier pass over the same config: implementations that failed there are
        not run again, and the others keep their launches per sample (so that samples of all
        passes measure the same thing) and their memory figure; the output check runs again.
        """
        torch = self.torch
        known = known or {}
        runs = {impl.name: ImplRun(impl.name) for impl in impls}
        live: list[Impl] = []
        ref_out = None
        ordered = sorted(impls, key=lambda i: not i.reference)  # reference first
        for impl in ordered:
            run = runs[impl.name]
            prior = known.get(impl.name)
            if prior is not None and prior.status != "ok" and not impl.reference:
                run.status, run.note, run.max_abs_err = prior.status, prior.note, prior.max_abs_err
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = impl.launch(*sets[0])
                    torch.cuda.synchronize(self.device)
            except RuntimeError as exc:
                text = first_line(exc, limit=160)
                run.status = "unsupported" if _looks_unsupported(text) else "error"
                run.note = text
                torch.cuda.synchronize(self.device)
                continue
            except (ValueError, TypeError) as exc:
                # Our kernel's argument checks refuse what it has no kernel for (a head dim or a
                # dtype: flash_attention's documented ValueError and TypeError): unsupported on
                # this config, and the others are still timed. From any other implementation
                # (SDPA's launchers are this package's code too) they are bugs, and propagate.
                if impl.name != "ours":
                    raise
                run.status, run.note = "unsupported", first_line(exc, limit=160)
                torch.cuda.synchronize(self.device)
                continue
            if impl.reference:
                ref_out = out
            elif check is not None and ref_out is not None:
                ok, err, note = check(impl.name, out, ref_out)
                run.max_abs_err = err
                if not ok:
                    run.status, run.note = "wrong", note
                    continue
            del out
            if prior is not None and prior.status == "ok" and prior.estimate_ms is not None:
                run.memory_mb, run.launches = prior.memory_mb, prior.launches
                run.estimate_ms, run.host_ms = prior.estimate_ms, prior.host_ms
            else:
                run.memory_mb = self._peak_memory_mb(impl, sets[0], memory_set_bytes)
                run.estimate_ms, run.host_ms = self._estimate(impl, sets)
                run.launches = launches_for(run.estimate_ms)
            live.append(impl)
        del ref_out

        if self.graph:
            for impl in list(live):
                try:
                    self.capture(impl, runs[impl.name], sets)
                except Exception as exc:  # not capturable: time it eagerly
                    runs[impl.name].graph = None
                    runs[impl.name].note = f"eager (graph capture failed: {first_line(exc, limit=80)})"
                    torch.cuda.synchronize(self.device)

        self._warm(live, runs, sets, warmup_s, warmup_cap_s)

        started = time.monotonic()
        round_no = 0
        while live:
            before = self.probe.reasons()
            t0 = time.perf_counter()
            pending, round_no = self._batch(live, runs, sets, round_no)
            pending[-1][1][1].synchronize()
            after = self.probe.reasons()
            self.rest(time.perf_counter() - t0)
            clock = self.probe.sm_clock()
            reasons = None if before is None and after is None else (before or 0) | (after or 0)
            throttled = bool(nvml_reader.is_throttled(reasons))
            for run, (start, end) in pending:
                run.samples.append(start.elapsed_time(end) / run.launches)
                run.throttled.append(throttled)
                run.reasons.append(reasons)
                run.clocks.append(clock)
            now = time.monotonic()
            still = []
            for impl in live:
                run = runs[impl.name]
                slowed = slowdown_flags(run.throttled, run.reasons)
                clean = [s for s, t in zip(run.samples, slowed) if not t]
                use = clean if len(clean) >= rule.min_samples else run.samples
                stop, reason = rule.decide(use, now - started)
                if not stop and now >= deadline and len(run.samples) >= min(3, rule.min_samples):
                    stop, reason = True, "deadline"
                if stop:
                    run.stop_reason, run.done = reason, True
                else:
                    still.append(impl)
            live = still
        for run in runs.values():
            run.graph = None
        return [runs[impl.name] for impl in impls]

    def _batch(self, live, runs, sets, round_no: int):
        """Queue whole rounds (each live implementation once, the first one rotating) until about
        BATCH_MS of GPU work is queued; returns ([(run, (start, end))], next round number).

        Between the samples of a batch the GPU does not idle: only the first sample is held back
        until the host is ahead, and later ones only when their launches take the host longer
        than the GPU (small kernels), so that the clocks see a steady load as in real use."""
        pending = []
        queued_ms = 0.0
        first = True
        while True:
            rot = round_no % len(live)
            for impl in live[rot:] + live[:rot]:
                run = runs[impl.name]
                hold = self._hold_ms(run, first)
                first = False
                pending.append((run, self.enqueue(impl, run, sets, round_no, hold)))
                queued_ms += hold + self.flush_ms + (run.estimate_ms or 0.0) * run.launches
            round_no += 1
            if queued_ms >= BATCH_MS:
                return pending, round_no

    def _hold_ms(self, run: ImplRun, first: bool) -> float:
        """GPU hold before a sample (see :meth:`_batch`)."""
        if run.graph is not None:
            return HOLD_MARGIN_MS if first else 0.0
        host = run.host_ms * run.launches + HOST_OVERHEAD_MS
        gpu = (run.estimate_ms or 0.0) * run.launches + self.flush_ms
        if first or gpu < 1.5 * host:
            return HOLD_MARGIN_MS + 2.0 * host
        return 0.0

    def _estimate(self, impl: Impl, sets: list) -> tuple[float, float]:
        """Rough (GPU ms, host ms) of one launch: medians of a few timed launches."""
        times, host = [], []
        for i in range(5):
            start, end = self.events()
            self.hold(0.5)
            start.record()
            t0 = time.perf_counter()
            impl.launch(*sets[i % len(sets)])
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return median(times), median(host)

    def _peak_memory_mb(self, impl: Impl, inputs, set_bytes: int) -> float:
        """Peak device memory of one call, inputs included (MB)."""
        torch = self.torch
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        out = impl.launch(*inputs)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del out
        return (peak - base + set_bytes) / 1e6

    def _warm(self, live, runs, sets, warmup_s: float, cap_s: float) -> None:
        """Run batches of the implementations until the SM clock holds steady (NVML),
        ``warmup_s`` at least and ``cap_s`` at most."""
        if not live:
            return
        start = time.monotonic()
        clocks: list[float] = []
        round_no = 0
        while True:
            t0 = time.perf_counter()
            pending, round_no = self._batch(live, runs, sets, round_no)
            pending[-1][1][1].synchronize()
            self.rest(time.perf_counter() - t0)
            elapsed = time.monotonic() - start
            clock = self.probe.sm_clock()
            if clock is not None:
                clocks.append(clock)
            if elapsed >= cap_s:
                return
            if elapsed < warmup_s:
                continue
            if clock is None:
                return
            recent = clocks[-4:]
            if len(recent) == 4 and (max(recent) - min(recent)) <= 0.01 * max(recent):
                return


def _looks_unsupported(text: str) -> bool:
    text = text.lower()
    return any(key in text for key in ("no available kernel", "not supported", "unsupported",
                                       "only supports", "does not support", "not implemented"))


def make_input_sets(torch, config: AttentionConfig, device, count: int, seed: int = 0) -> list:
    """``count`` sets of q (B, H, Sq, D), k and v (B, H_kv, Sk, D), normal values, fixed seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    dtype = torch_dtype(config.dtype)
    b, h, hk, d = config.batch_size, config.num_heads, config.num_heads_k, config.head_dim
    sets = []
    for _ in range(count):
        q = torch.randn(b, h, config.seq_len_q, d, generator=gen, device=device, dtype=dtype)
        k = torch.randn(b, hk, config.seq_len_k, d, generator=gen, device=device, dtype=dtype)
        v = torch.randn(b, hk, config.seq_len_k, d, generator=gen, device=device, dtype=dtype)
        sets.append((q, k, v))
    return sets


def make_check(torch, config: AttentionConfig):
    tol = DTYPES[config.dtype].output_tolerance

    def check(name, out, ref):
        if out is None or tuple(out.shape) != tuple(ref.shape):
            return False, None, f"output shape {tuple(getattr(out, 'shape', ()))} != {tuple(ref.shape)}"
        # Rows that see no key (bottom-right, Sq > Sk): SDPA gives NaN there, ours 0.
        diff = (out.float() - ref.float().nan_to_num(nan=0.0)).abs()
        if not torch.isfinite(out.float()).all():
            return False, None, "output has NaN or Inf"
        err = float(diff.max())
        if err > tol:
            return False, err, f"max abs error {err:.3g} vs SDPA exceeds {tol:g}"
        return True, err, ""

    return check


def plateau(readings: list[tuple[float, float]], now: float, have_temp: bool, *, min_s: float,
            window_s: float, rise_c: float) -> tuple[bool, bool]:
    """Whether a preheat may stop at ``now`` (s since it began), and whether it is because the
    temperature levelled off: (stop, steady).

    ``readings`` are (time, C). With a temperature, stop once ``min_s`` has passed and it rose less
    than ``rise_c`` since the last reading at least ``window_s`` old. Without one (no NVML), stop
    after ``min_s + window_s``, not steady."""
    if now < min_s:
        return False, False
    if not have_temp or not readings:
        return now >= min_s + window_s, False
    past = [t for when, t in readings if when <= now - window_s]
    if past and readings[-1][1] - past[-1] < rise_c:
        return True, True
    return False, False


def preheat(timer: Timer, *, cap_s: float = 45.0, min_s: float = 3.0, window_s: float = 10.0,
            rise_c: float = 0.5, n: int = 8192) -> dict:
    """Load the GPU with bf16 matmuls until its temperature levels off.

    Under a power cap the clocks, and so every latency, depend on the chip's temperature; a
    cold GPU warms by 20-30 C during its first half-minute of full load. Measuring only once
    the temperature has risen less than ``rise_c`` over the last ``window_s`` (at least
    ``min_s``, at most ``cap_s``) makes runs comparable. Without NVML it runs ``min_s`` plus a
    window. Returns {"seconds", "temp_start_c", "temp_end_c", "steady"}.
    """
    torch = timer.torch
    gen = torch.Generator(device=timer.device)
    gen.manual_seed(1)
    a = torch.randn(n, n, generator=gen, device=timer.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, generator=gen, device=timer.device, dtype=torch.bfloat16)
    start = time.monotonic()
    first = timer.probe.temperature()
    readings: list[tuple[float, float]] = []
    steady = False
    while True:
        for _ in range(16):
            torch.matmul(a, b)
        torch.cuda.synchronize(timer.device)
        now = time.monotonic() - start
        temp = timer.probe.temperature()
        if temp is not None:
            readings.append((now, temp))
        if now >= cap_s:
            break
        done, steady = plateau(readings, now, temp is not None, min_s=min_s, window_s=window_s,
                               rise_c=rise_c)
        if done:
            break
    del a, b
    return {"seconds": time.monotonic() - start, "temp_start_c": first,
            "temp_end_c": timer.probe.temperature(), "steady": steady}


def matmul_ceiling(timer: Timer, *, n: int = 8192, samples: int = 30, time_cap_s: float = 3.0
                   ) -> tuple[float, float]:
    """Measured bf16 ``n^3`` matmul throughput: (TFLOP/s from the median, median ms)."""
    torch = timer.torch
    gen = torch.Generator(device=timer.device)
    gen.manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=timer.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, generator=gen, device=timer.device, dtype=torch.bfloat16)
    impl = Impl("matmul", lambda x, y, _z: torch.matmul(x, y), reference=True)
    sets = [(a, b, None)]
    rule = StopRule(target_rel=0.002, min_samples=min(samples, 20), max_samples=samples,
                    time_limit_s=time_cap_s)
    (run,) = timer.measure([impl], sets, rule=rule, deadline=time.monotonic() + time_cap_s,
                           warmup_s=0.3, warmup_cap_s=2.0)
    if run.status != "ok":
        raise RuntimeError(run.note)
    stats = summarize_samples(run.samples, run.throttled, run.reasons)
    ms = stats["latency_ms"]
    return 2 * n ** 3 / (ms * 1e-3) / 1e12, ms
