"""Telemetry sampler and summary, driven by a fake NVML module (no GPU needed)."""

from __future__ import annotations

import math
import os
import socket
import threading
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit import nvml as nvml_reader
from sessionkit import telemetry
from sessionkit.db import open_db
from sessionkit.timefmt import now_iso


class FakeError(Exception):
    pass


class FakeNVML:
    """Enough of pynvml for the sampler: GPUs with scripted readings."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus=1, *, power_mw=300_000, energy=True, reasons=0, init_error=None,
                 mig=None):
        self.uuids = [f"GPU-{i:08x}-aaaa-bbbb-cccc-{i:012x}" for i in range(gpus)]
        self.power_mw = power_mw
        self.energy = energy
        self.reasons = reasons
        self.init_error = init_error
        self.mig = mig or {}  # MIG uuid -> parent index
        self.inits = 0
        self.shutdowns = 0
        self.energy_mj = [1_000_000] * gpus
        self.calls = 0
        self.lock = threading.Lock()

    def nvmlInit(self):
        if self.init_error:
            raise FakeError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, text):
        if text in self.mig:
            return ("mig", text)
        if text in self.uuids:
            return ("gpu", self.uuids.index(text))
        raise FakeError("Not Found")

    def nvmlDeviceIsMigDeviceHandle(self, h):
        return h[0] == "mig"

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h):
        return ("gpu", self.mig[h[1]])

    def nvmlDeviceGetUUID(self, h):
        return h[1] if h[0] == "mig" else self.uuids[h[1]]

    def _gpu(self, h):
        assert h[0] == "gpu", "power/clocks must be read on the physical GPU"
        return h[1]

    def nvmlDeviceGetPowerUsage(self, h):
        i = self._gpu(h)
        with self.lock:
            self.calls += 1
            self.energy_mj[i] += 30_000  # 30 J per reading
        return self.power_mw + 1000 * i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise FakeError("Not Supported")
        return self.energy_mj[self._gpu(h)]

    def nvmlDeviceGetClockInfo(self, h, which):
        self._gpu(h)
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h, which):
        return 40 + self._gpu(h)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=97, memory=30)

    def nvmlDeviceGetMemoryInfo(self, h):
        used = (512 if h[0] == "mig" else 1024) * 1024 * 1024
        return SimpleNamespace(used=used, total=80 * 1024**3, free=0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        self._gpu(h)
        return self.reasons


@pytest.fixture
def tdb(tmp_path):
    db = open_db(tmp_path / "t.db", create=True)
    sid = str(uuid.uuid4())
    db["sessions"].insert({"id": sid, "number": 1, "name": "t", "started_at": now_iso()})
    step_id = str(uuid.uuid4())
    db["steps"].insert({"id": step_id, "session_id": sid, "seq": 1, "name": "bench",
                        "started_at": now_iso(), "host": socket.gethostname(), "pid": os.getpid()})
    return db, step_id


def test_no_nvml_gives_one_notice_and_none(tdb):
    db, step_id = tdb
    notes = []
    handle = telemetry.start_telemetry(db, step_id, nvml=FakeNVML(init_error="Driver Not Loaded"),
                                       notice=notes.append)
    assert handle.stop() is None
    assert notes == ["telemetry off: NVML did not initialise (Driver Not Loaded)"]
    assert db["telemetry_samples"].count == 0


def test_no_visible_gpu_is_a_notice(tdb):
    db, step_id = tdb
    notes = []
    fake = FakeNVML()
    handle = telemetry.start_telemetry(db, step_id, nvml=fake, visible="", notice=notes.append)
    assert handle.stop() is None
    assert notes == ["telemetry off: no GPU visible to this step"]
    assert fake.shutdowns == 1


def test_disabled_by_environment(tdb, monkeypatch):
    db, step_id = tdb
    monkeypatch.setenv("SESSIONKIT_TELEMETRY", "0")
    notes = []
    assert telemetry.start_telemetry(db, step_id, nvml=FakeNVML(), notice=notes.append).stop() is None
    assert notes == ["telemetry off: SESSIONKIT_TELEMETRY is off"]


def test_sampler_writes_rows_and_summary_metrics(tdb):
    db, step_id = tdb
    fake = FakeNVML(gpus=2, reasons=nvml_reader.REASON_SW_POWER_CAP)
    notes = []
    ticks = iter(range(10_000))
    handle = telemetry.start_telemetry(db, step_id, nvml=fake, interval_s=0.005, visible="1,0",
                                       notice=notes.append, clock=lambda: float(next(ticks)))
    threading.Event().wait(0.15)
    summary = handle.stop()
    assert notes == []
    rows = list(db["telemetry_samples"].rows_where("step_id = ?", [step_id]))
    assert summary["samples"] == len(rows) >= 4
    assert {r["gpu_index"] for r in rows} == {0, 1}
    assert all(r["throttled"] == 1 and r["throttle_reasons"] == 4 for r in rows)
    # two GPUs at 300 W and 301 W: the step's power is their sum
    assert summary["power_mean_w"] == pytest.approx(601.0)
    assert summary["power_max_w"] == pytest.approx(601.0)
    assert summary["temp_max_c"] == 41
    assert summary["sm_clock_min_mhz"] == summary["sm_clock_max_mhz"] == 1980
    assert summary["throttled_share"] == 1.0
    # energy counter: each GPU advanced 30 J per reading, between its first and last reading
    per_gpu = len(rows) // 2
    assert summary["energy_j"] == pytest.approx(2 * 30.0 * (per_gpu - 1))
    metrics = {r["key"]: r for r in db["metrics"].rows_where("step_id = ? AND subject = 'telemetry'",
                                                             [step_id])}
    assert set(metrics) == set(telemetry.SUMMARY_UNITS)
    assert metrics["energy_j"]["unit"] == "J"
    assert metrics["samples"]["value"] == len(rows)
    assert fake.shutdowns == 1
    assert handle.stop() == summary  # a second stop is harmless


def test_sampler_uses_its_own_connection(tdb):
    db, step_id = tdb
    seen = {}
    original = telemetry.Sampler._flush

    def spy(self, sampler_db, rows):
        seen["db"] = sampler_db
        return original(self, sampler_db, rows)

    telemetry.Sampler._flush = spy
    try:
        handle = telemetry.start_telemetry(db, step_id, nvml=FakeNVML(), interval_s=0.01)
        handle.stop()
    finally:
        telemetry.Sampler._flush = original
    assert seen["db"] is not db and seen["db"].conn is not db.conn


def test_batches_not_one_commit_per_sample(tdb):
    db, step_id = tdb
    flushes = []
    original = telemetry.Sampler._flush

    def spy(self, sampler_db, rows):
        if rows:
            flushes.append(len(rows))
        return original(self, sampler_db, rows)

    telemetry.Sampler._flush = spy
    try:
        handle = telemetry.start_telemetry(db, step_id, nvml=FakeNVML(), interval_s=0.002)
        threading.Event().wait(0.3)
        summary = handle.stop()
    finally:
        telemetry.Sampler._flush = original
    assert sum(flushes) == summary["samples"]
    assert max(flushes) > 1
    assert len(flushes) <= summary["samples"] // 10 + 2


def test_write_failure_is_a_notice_not_a_crash(tdb):
    db, step_id = tdb
    notes = []
    handle = telemetry.start_telemetry(db, "no-such-step", nvml=FakeNVML(), interval_s=0.01,
                                       notice=notes.append)
    summary = handle.stop()
    assert summary["samples"] >= 1
    assert len(notes) == 1 and notes[0].startswith("telemetry not saved:")
    assert "FOREIGN KEY" in notes[0]


def test_resolve_devices_indices_uuids_and_mig():
    fake = FakeNVML(gpus=3, mig={"MIG-1234abcd-0000-1111-2222-333344445555": 2})
    assert [d.index for d in nvml_reader.resolve_devices(fake, None, use_env=False)] == [0, 1, 2]
    assert [d.index for d in nvml_reader.resolve_devices(fake, "2, 0")] == [2, 0]
    # a unique UUID prefix, with or without "GPU-"
    assert [d.index for d in nvml_reader.resolve_devices(fake, "GPU-00000001")] == [1]
    # CUDA stops at the first entry that matches nothing
    assert [d.index for d in nvml_reader.resolve_devices(fake, "1,7,0")] == [1]
    assert nvml_reader.resolve_devices(fake, "-1") == []
    # an ambiguous prefix matches nothing
    assert nvml_reader.resolve_devices(fake, "GPU-0000") == []
    mig = nvml_reader.resolve_devices(fake, "MIG-1234abcd-0000-1111-2222-333344445555")
    assert [d.index for d in mig] == [2]
    assert mig[0].handle == ("gpu", 2) and mig[0].mem_handle[0] == "mig"
    row = telemetry.read_sample(fake, mig[0], 1.0)
    assert row["mem_used_mib"] == 512 and row["power_w"] == 302.0
    # old MIG form names the parent GPU
    assert [d.index for d in nvml_reader.resolve_devices(fake, f"MIG-{fake.uuids[1]}/1/0")] == [1]


class OldFakeNVML(FakeNVML):
    """A library without the clock-event call, on a GPU without an energy counter."""

    nvmlDeviceGetCurrentClocksEventReasons = None


def test_unsupported_fields_are_none():
    fake = OldFakeNVML(energy=False)
    row = telemetry.read_sample(fake, nvml_reader.resolve_devices(fake, "0")[0], 5.0)
    assert row["energy_mj"] is None and row["throttled"] is None and row["power_w"] == 300.0
    assert row["sm_clock_mhz"] == 1980 and row["gpu_util_pct"] == 97


def test_throttle_mask():
    assert nvml_reader.is_throttled(nvml_reader.REASON_GPU_IDLE | nvml_reader.REASON_APP_CLOCKS) is False
    assert nvml_reader.is_throttled(nvml_reader.REASON_SYNC_BOOST) is False
    for bit in (nvml_reader.REASON_HW_SLOWDOWN, nvml_reader.REASON_HW_THERMAL,
                nvml_reader.REASON_HW_POWER_BRAKE, nvml_reader.REASON_SW_THERMAL,
                nvml_reader.REASON_SW_POWER_CAP):
        assert nvml_reader.is_throttled(bit | nvml_reader.REASON_GPU_IDLE) is True
    assert nvml_reader.is_throttled(None) is None
    assert nvml_reader.reason_names(0x5) == ["idle", "sw_power_cap"]


def _s(t, p=None, e=None, gpu=0, temp=None, sm=None, thr=None):
    return {"t_unix_s": t, "gpu_index": gpu, "power_w": p, "energy_mj": e, "temp_c": temp,
            "sm_clock_mhz": sm, "throttled": thr}


def test_summary_known_values():
    samples = [
        _s(0.0, 100, 5_000, temp=50, sm=1980, thr=0),
        _s(1.0, 300, 205_000, temp=60, sm=1700, thr=1),
        _s(2.0, 200, 455_000, temp=55, sm=1755, thr=0),
        _s(3.0, 200, 655_000, temp=52, sm=1980, thr=1),
    ]
    out = telemetry.summarize(samples)
    assert out == {
        "power_mean_w": 200.0, "power_max_w": 300.0, "energy_j": 650.0, "temp_max_c": 60,
        "sm_clock_min_mhz": 1700, "sm_clock_max_mhz": 1980, "throttled_share": 0.5, "samples": 4,
    }


def test_summary_integrates_power_without_energy_counter():
    samples = [_s(0.0, 100), _s(1.0, 300), _s(3.0, 300)]
    # trapezoids: (100+300)/2*1 + 300*2 = 800 J
    assert telemetry.summarize(samples)["energy_j"] == pytest.approx(800.0)
    # one missing energy reading makes that GPU fall back to the integral
    samples = [_s(0.0, 100, 0), _s(1.0, 300, None), _s(3.0, 300, 9_999_000)]
    assert telemetry.summarize(samples)["energy_j"] == pytest.approx(800.0)


def test_summary_of_nothing():
    out = telemetry.summarize([])
    assert out["samples"] == 0 and out["power_mean_w"] is None and out["energy_j"] is None
    assert out["throttled_share"] is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 700), st.floats(0, 100_000), st.booleans()),
                min_size=1, max_size=40))
def test_summary_properties(readings):
    samples, energy = [], 0.0
    for i, (power, de, thr) in enumerate(readings):
        energy += de
        samples.append(_s(float(i), power, energy, thr=int(thr)))
    out = telemetry.summarize(samples)
    powers = [p for p, _, _ in readings]
    assert out["power_max_w"] == max(powers)
    assert min(powers) - 1e-9 <= out["power_mean_w"] <= max(powers) + 1e-9
    assert math.isclose(out["energy_j"], (energy - samples[0]["energy_mj"]) / 1000, abs_tol=1e-6)
    assert out["throttled_share"] == sum(t for _, _, t in readings) / len(readings)


def test_no_driver_is_detected_without_loading_nvml(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(nvml_reader.os.path, "exists", lambda path: False)
    assert nvml_reader.no_nvidia_driver()
    with pytest.raises(nvml_reader.NvmlUnavailable, match="no NVIDIA driver on this machine"):
        nvml_reader.load_nvml()
    monkeypatch.setattr(nvml_reader.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    assert not nvml_reader.no_nvidia_driver()


def test_bench_probe_reads_through_the_same_nvml_readers():
    from sessionkit.bench.timing import Probe
    from sessionkit.nvml import REASON_SW_POWER_CAP, resolve_devices

    nvml = FakeNVML(gpus=2, reasons=REASON_SW_POWER_CAP)
    probe = Probe(nvml, resolve_devices(nvml, use_env=False)[1])
    assert (probe.sm_clock(), probe.temperature(), probe.reasons()) == (1980.0, 41.0, 4)
    none = Probe(reason="no NVML")
    assert (none.sm_clock(), none.temperature(), none.reasons()) == (None, None, None)
