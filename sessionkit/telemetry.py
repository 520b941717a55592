"""GPU telemetry around every step, read from NVML (nvidia-ml-py).

The runner calls::

    handle = start_telemetry(db, step_id, interval_s=0.1, notice=print_notice)
    ...                      # the step runs
    summary = handle.stop()  # dict of the recorded summary metrics, or None without telemetry

A sampler thread reads each GPU the step can see (``CUDA_VISIBLE_DEVICES``: indices, GPU- or MIG-
UUIDs) every ``interval_s`` seconds and writes ``telemetry_samples`` rows in batches through its OWN
database connection. When the step ends it flushes what is left and records the summary metrics
(subject ``telemetry``) on the step. Without NVML, without a GPU, or with ``SESSIONKIT_TELEMETRY=0``
the step runs on after one notice.

GPUs are read through :mod:`sessionkit.nvml` (which imports ``pynvml`` only when called). Tests inject
a fake NVML module through the ``nvml`` argument.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from .errors import first_line
from .nvml import (Device, NvmlUnavailable, call, cuda_uuids, is_throttled, load_nvml,
                   mixed_order_warning, read_reasons, read_sm_clock, read_temperature,
                   resolve_devices)

FLUSH_EVERY_S = 1.0
FLUSH_EVERY_ROWS = 50

SUMMARY_UNITS = {
    "power_mean_w": "W",
    "power_max_w": "W",
    "energy_j": "J",
    "temp_max_c": "C",
    "sm_clock_min_mhz": "MHz",
    "sm_clock_max_mhz": "MHz",
    "throttled_share": "fraction",
    "samples": "count",
}


# --------------------------------------------------------------------------------------------
# Samples

def read_sample(nvml, device: Device, t_unix_s: float | None = None) -> dict:
    """One telemetry row for one GPU (step_id is added by the sampler). Unsupported fields are None."""
    h = device.handle
    power_mw = call(nvml.nvmlDeviceGetPowerUsage, h)
    energy_mj = call(nvml.nvmlDeviceGetTotalEnergyConsumption, h)
    mem = call(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM)
    util = call(nvml.nvmlDeviceGetUtilizationRates, h)
    meminfo = call(nvml.nvmlDeviceGetMemoryInfo, device.mem_handle)
    reasons = read_reasons(nvml, h)
    throttled = is_throttled(reasons)
    return {
        "gpu_index": device.index,
        "t_unix_s": time.time() if t_unix_s is None else t_unix_s,
        "power_w": None if power_mw is None else power_mw / 1000.0,
        "energy_mj": None if energy_mj is None else float(energy_mj),
        "sm_clock_mhz": read_sm_clock(nvml, h),
        "mem_clock_mhz": None if mem is None else float(mem),
        "temp_c": read_temperature(nvml, h),
        "gpu_util_pct": None if util is None else float(getattr(util, "gpu", util)),
        "mem_used_mib": None if meminfo is None else getattr(meminfo, "used", 0) / (1024 * 1024),
        "throttle_reasons": reasons,
        "throttled": None if throttled is None else int(throttled),
    }


# --------------------------------------------------------------------------------------------
# Summary


class Summary:
    """Running aggregate of samples, so that long steps do not keep every sample in memory.

    Power figures are for all GPUs of the step together: samples taken at one tick (same
    ``t_unix_s``) are summed. Energy is the energy counter's delta per GPU when every sample of that
    GPU has one, else the trapezoidal integral of its power.
    """

    def __init__(self):
        self.rows = 0
        self.throttled_rows = 0
        self.throttle_known = 0
        self.temp_max: float | None = None
        self.sm_min: float | None = None
        self.sm_max: float | None = None
        self._tick_t: float | None = None
        self._tick_power: float | None = None
        self.tick_power_sum = 0.0
        self.tick_power_n = 0
        self.tick_power_max: float | None = None
        # per GPU: first/last energy counter, whether any sample lacked it, power integral
        self._gpu: dict[int, dict] = {}

    def add(self, s: dict) -> None:
        self.rows += 1
        if s.get("throttled") is not None:
            self.throttle_known += 1
            self.throttled_rows += int(bool(s["throttled"]))
        temp = s.get("temp_c")
        if temp is not None:
            self.temp_max = temp if self.temp_max is None else max(self.temp_max, temp)
        sm = s.get("sm_clock_mhz")
        if sm is not None:
            self.sm_min = sm if self.sm_min is None else min(self.sm_min, sm)
            self.sm_max = sm if self.sm_max is None else max(self.sm_max, sm)

        t = s["t_unix_s"]
        power = s.get("power_w")
        if t != self._tick_t:
            self._close_tick()
            self._tick_t, self._tick_power = t, None
        if power is not None:
            self._tick_power = power if self._tick_power is None else self._tick_power + power

        g = self._gpu.setdefault(s.get("gpu_index", 0), {
            "e_first": None, "e_last": None, "e_missing": False, "last_t": None, "last_p": None,
            "integral_j": 0.0})
        energy = s.get("energy_mj")
        if energy is None:
            g["e_missing"] = True
        else:
            if g["e_first"] is None:
                g["e_first"] = energy
            g["e_last"] = energy
        if power is not None:
            if g["last_t"] is not None and t > g["last_t"]:
                g["integral_j"] += 0.5 * (power + g["last_p"]) * (t - g["last_t"])
            g["last_t"], g["last_p"] = t, power

    def _close_tick(self) -> None:
        if self._tick_power is not None:
            self.tick_power_sum += self._tick_power
            self.tick_power_n += 1
            if self.tick_power_max is None or self._tick_power > self.tick_power_max:
                self.tick_power_max = self._tick_power
        self._tick_power = None

    def energy_j(self) -> float | None:
        total, any_value = 0.0, False
        for g in self._gpu.values():
            if not g["e_missing"] and g["e_first"] is not None and g["e_last"] >= g["e_first"]:
                total += (g["e_last"] - g["e_first"]) / 1000.0
                any_value = True
            elif g["last_t"] is not None:
                total += g["integral_j"]
                any_value = True
        return total if any_value else None

    def result(self) -> dict:
        """The summary metrics (keys of SUMMARY_UNITS); None values for what was never read."""
        power_sum, power_n, power_max = self.tick_power_sum, self.tick_power_n, self.tick_power_max
        if self._tick_power is not None:  # the tick still open counts too
            power_sum += self._tick_power
            power_n += 1
            power_max = self._tick_power if power_max is None else max(power_max, self._tick_power)
        return {
            "power_mean_w": power_sum / power_n if power_n else None,
            "power_max_w": power_max,
            "energy_j": self.energy_j(),
            "temp_max_c": self.temp_max,
            "sm_clock_min_mhz": self.sm_min,
            "sm_clock_max_mhz": self.sm_max,
            "throttled_share": (self.throttled_rows / self.throttle_known) if self.throttle_known
            else None,
            "samples": self.rows,
        }


def summarize(samples: list[dict]) -> dict:
    """Summary metrics of a list of sample dicts (see :class:`Summary`)."""
    agg = Summary()
    for s in sorted(samples, key=lambda r: (r["t_unix_s"], r.get("gpu_index", 0))):
        agg.add(s)
    return agg.result()


def record_summary(db, step_id: str, summary: dict) -> None:
    rows = [
        {"step_id": step_id, "key": key, "value": None if summary.get(key) is None else
         float(summary[key]), "unit": unit, "subject": "telemetry"}
        for key, unit in SUMMARY_UNITS.items()
        if summary.get(key) is not None
    ]
    if rows:
        with db.conn:
            db["metrics"].insert_all(rows)


# --------------------------------------------------------------------------------------------
# Sampler


class TelemetryHandle:
    """Returned by :func:`start_telemetry`. ``stop()`` ends sampling and returns the summary."""

    def stop(self) -> dict | None:
        return None

    @property
    def active(self) -> bool:
        return False


class _Off(TelemetryHandle):
    def __init__(self, reason: str):
        self.reason = reason


class Sampler(TelemetryHandle):
    def __init__(self, *, nvml, devices: list[Device], db_path, step_id: str, interval_s: float,
                 notice: Callable[[str], None], clock: Callable[[], float] = time.time,
                 owns_nvml: bool = True):
        self.nvml = nvml
        self.devices = devices
        self.db_path = db_path
        self.step_id = step_id
        self.interval_s = max(0.001, float(interval_s))
        self.notice = notice
        self.clock = clock
        self.owns_nvml = owns_nvml
        self.summary = Summary()
        self.written = 0
        self.write_failed: str | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._result: dict | None = None
        self._thread = threading.Thread(target=self._main, name="sessionkit-telemetry", daemon=True)
        self._stopped = False
        self.ticks = 0
        self.tick_s = 0.0  # wall time spent reading NVML
        self.cpu_s = 0.0  # CPU time of the sampler thread

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> dict | None:
        if not self._stopped:
            self._stopped = True
            self._stop.set()
            self._thread.join(timeout=30)
        return self._result

    def tick(self) -> list[dict]:
        t0 = time.perf_counter()
        t = self.clock()
        rows = []
        for device in self.devices:
            row = read_sample(self.nvml, device, t)
            row["step_id"] = self.step_id
            rows.append(row)
            self.summary.add(row)
        self.ticks += 1
        self.tick_s += time.perf_counter() - t0
        return rows

    def _main(self) -> None:
        db = None
        pending: list[dict] = []
        last_flush = time.monotonic()
        cpu0 = time.thread_time()
        try:
            from .db import open_db

            try:
                db = open_db(self.db_path)
            except Exception as exc:
                self.write_failed = f"cannot open the database ({exc})"
            next_t = time.monotonic()
            while True:
                pending.extend(self.tick())
                now = time.monotonic()
                if len(pending) >= FLUSH_EVERY_ROWS or now - last_flush >= FLUSH_EVERY_S:
                    self._flush(db, pending)
                    pending = []
                    last_flush = now
                next_t += self.interval_s
                if next_t < now:  # fell behind (a slow NVML call): do not burst to catch up
                    next_t = now + self.interval_s
                if self._stop.wait(max(0.0, next_t - time.monotonic())):
                    break
            pending.extend(self.tick())  # one last reading at the end of the step
            self._flush(db, pending)
            pending = []
            result = self.summary.result()
            if db is not None and self.write_failed is None:
                try:
                    record_summary(db, self.step_id, result)
                except Exception as exc:
                    self.write_failed = f"summary not recorded ({exc})"
            self._result = result
        except Exception as exc:  # never let telemetry break a step
            self.notice(f"telemetry stopped: {first_line(exc)}")
        finally:
            self.cpu_s = time.thread_time() - cpu0
            if self.write_failed:
                self.notice(f"telemetry not saved: {self.write_failed}")
            if db is not None:
                try:
                    db.conn.close()
                except Exception:
                    pass
            if self.owns_nvml:
                call(getattr(self.nvml, "nvmlShutdown", lambda: None))
            self._done.set()

    def _flush(self, db, rows: list[dict]) -> None:
        if not rows or db is None or self.write_failed:
            return
        try:
            with db.conn:
                db["telemetry_samples"].insert_all(rows)
            self.written += len(rows)
        except Exception as exc:
            self.write_failed = first_line(exc)


def _telemetry_disabled() -> str | None:
    value = os.environ.get("SESSIONKIT_TELEMETRY", "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return "SESSIONKIT_TELEMETRY is off"
    return None


def start_telemetry(db, step_id: str, *, interval_s: float = 0.1,
                    notice: Callable[[str], None] = lambda text: None, nvml=None,
                    visible: str | None = None, clock: Callable[[], float] = time.time
                    ) -> TelemetryHandle:
    """Start sampling the step's GPUs; returns a handle whose ``stop()`` gives the summary.

    Never raises for a missing NVML or GPU: it calls ``notice("telemetry off: <reason>")`` once
    and returns a handle whose ``stop()`` returns None. ``nvml`` is a pynvml-like module (a fake in
    tests); it is initialised here and shut down when sampling ends.
    """
    reason = _telemetry_disabled()
    if reason is None and interval_s is not None and float(interval_s) <= 0:
        reason = "interval is 0"
    if reason:
        notice(f"telemetry off: {reason}")
        return _Off(reason)
    try:
        if nvml is None:
            nvml = load_nvml()
        else:
            try:
                nvml.nvmlInit()
            except Exception as exc:
                raise NvmlUnavailable(f"NVML did not initialise ({first_line(exc)})") from None
        try:
            order = cuda_uuids()
            devices = resolve_devices(nvml, visible, cuda_order=order)
            warning = None if order is not None else mixed_order_warning(
                nvml, visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as exc:
            call(getattr(nvml, "nvmlShutdown", lambda: None))
            raise NvmlUnavailable(f"cannot list GPUs ({first_line(exc)})") from None
        if warning:
            notice(f"telemetry: {warning}")
        if not devices:
            call(getattr(nvml, "nvmlShutdown", lambda: None))
            raise NvmlUnavailable("no GPU visible to this step")
    except NvmlUnavailable as exc:
        notice(f"telemetry off: {exc}")
        return _Off(str(exc))
    db_path = getattr(db, "path", None)
    if db_path is None:
        notice("telemetry off: the database has no file path")
        call(getattr(nvml, "nvmlShutdown", lambda: None))
        return _Off("database has no path")
    return Sampler(nvml=nvml, devices=devices, db_path=db_path, step_id=step_id,
                   interval_s=interval_s, notice=notice, clock=clock).start()


def step_summary(db, step_id: str) -> dict:
    """The recorded telemetry summary of a step (for reports), {} when none."""
    rows = db.execute(
        "SELECT key, value FROM metrics WHERE step_id = ? AND subject = 'telemetry'", [step_id]
    ).fetchall()
    return {key: value for key, value in rows}
