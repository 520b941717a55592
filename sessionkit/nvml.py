"""Reading NVIDIA GPUs through NVML (nvidia-ml-py): the one module that talks to NVML.

Telemetry (:mod:`sessionkit.telemetry`), preflight (:mod:`sessionkit.preflight`) and the bench
clock probe (:class:`sessionkit.bench.timing.Probe`) all read GPUs through these functions:

- :func:`load_nvml` imports and initialises pynvml, or raises :class:`NvmlUnavailable`;
- :func:`resolve_devices` maps ``CUDA_VISIBLE_DEVICES`` (indices, GPU- and MIG-UUIDs) or CUDA's own
  device order to NVML handles, as :class:`Device` objects;
- :func:`read_sm_clock`, :func:`read_temperature` and :func:`read_reasons` read one GPU;
- :func:`read_facts` describes the driver and every visible GPU at once (preflight);
- the ``REASON_*`` bits, :data:`THROTTLE_MASK` and :data:`SLOWDOWN_MASK` classify NVML's
  clock-event ("throttle") reasons.

``pynvml`` is imported inside :func:`load_nvml` only, so importing this module stays cheap. Every
function takes the NVML module as an argument, so tests hand in a fake one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from .errors import first_line

_MIB = 1024 * 1024


class NvmlUnavailable(Exception):
    """NVML or the GPUs cannot be read; the message is the reason shown to the user."""


# Clock-event ("throttle") reason bits, as NVML defines them.
REASON_GPU_IDLE = 0x1
REASON_APP_CLOCKS = 0x2
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SYNC_BOOST = 0x10
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40
REASON_HW_POWER_BRAKE = 0x80
REASON_DISPLAY_CLOCKS = 0x100

# A sample counts as throttled when the clocks are held down by power or heat. Idle, the
# application-clocks setting, sync boost and display clocks are not throttling.
THROTTLE_MASK = (REASON_HW_SLOWDOWN | REASON_HW_THERMAL | REASON_HW_POWER_BRAKE
                 | REASON_SW_THERMAL | REASON_SW_POWER_CAP)

# Of those, the ones imposed from outside the kernel: heat, a hardware slowdown signal, the power
# brake. Timing samples taken under them are left out of medians. The software power cap is not
# among them: a GPU under load sits at its power limit most of the time, and the clock it then
# holds depends on the power the kernel itself draws, which is part of the kernel's speed.
SLOWDOWN_MASK = THROTTLE_MASK & ~REASON_SW_POWER_CAP

REASON_NAMES = {
    REASON_GPU_IDLE: "idle",
    REASON_APP_CLOCKS: "app_clocks",
    REASON_SW_POWER_CAP: "sw_power_cap",
    REASON_HW_SLOWDOWN: "hw_slowdown",
    REASON_SYNC_BOOST: "sync_boost",
    REASON_SW_THERMAL: "sw_thermal",
    REASON_HW_THERMAL: "hw_thermal",
    REASON_HW_POWER_BRAKE: "hw_power_brake",
    REASON_DISPLAY_CLOCKS: "display_clocks",
}


def is_throttled(reasons: int | None) -> bool | None:
    if reasons is None:
        return None
    return bool(int(reasons) & THROTTLE_MASK)


def is_slowdown(reasons: int | None) -> bool:
    """Whether clock-event ``reasons`` include a slowdown imposed from outside the kernel."""
    return bool(reasons) and bool(int(reasons) & SLOWDOWN_MASK)


def reason_names(reasons: int | None) -> list[str]:
    if not reasons:
        return []
    return [name for bit, name in REASON_NAMES.items() if int(reasons) & bit]



def no_nvidia_driver() -> bool:
    """True on a Linux machine with no NVIDIA kernel driver (checked without loading NVML)."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/usr/lib/wsl/lib"))


def load_nvml():
    """Import and initialise pynvml (nvidia-ml-py) and return the module.

    Raises :class:`NvmlUnavailable` with the reason: no NVIDIA driver, nvidia-ml-py not installed, or
    ``nvmlInit`` failed. The caller shuts NVML down (``nvmlShutdown``) when done.
    """
    if no_nvidia_driver():
        raise NvmlUnavailable("no NVIDIA driver on this machine")
    import warnings

    try:
        with warnings.catch_warnings():
            # The old "pynvml" package, installed beside nvidia-ml-py, warns at every import that it
            # is deprecated; that one warning says nothing about this run.
            warnings.filterwarnings("ignore", message=r"(?s).*pynvml package is deprecated",
                                    category=FutureWarning)
            import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise NvmlUnavailable(f"NVML did not initialise ({first_line(exc)})") from None
    return pynvml


@dataclass
class Device:
    """One GPU the step can see: ``handle`` reads power/clocks/heat, ``mem_handle`` memory use."""

    index: int  # NVML index of the physical GPU
    handle: Any
    mem_handle: Any
    label: str  # what CUDA_VISIBLE_DEVICES said, or the index


def call(fn, *args):
    """An NVML reading, or None when this GPU or driver does not support it."""
    try:
        return fn(*args)
    except Exception:
        return None


def read_sm_clock(nvml, handle) -> float | None:
    """The SM clock in MHz, or None."""
    sm = call(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
    return None if sm is None else float(sm)


def read_temperature(nvml, handle) -> float | None:
    """The GPU temperature in C, or None."""
    temp = call(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
    return None if temp is None else float(temp)


def read_reasons(nvml, handle) -> int | None:
    """The clock-event (throttle) reasons bit mask, under either of NVML's names for it, or None."""
    fn = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
          or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
    reasons = call(fn, handle) if fn else None
    return None if reasons is None else int(reasons)


def as_str(value) -> str:
    """An NVML string (bytes from older bindings, str from newer ones) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _uuid(nvml, handle) -> str:
    return as_str(call(nvml.nvmlDeviceGetUUID, handle) or "")


def _parent(nvml, handle):
    """The physical GPU of a MIG device handle; the handle itself otherwise."""
    is_mig = getattr(nvml, "nvmlDeviceIsMigDeviceHandle", None)
    get_parent = getattr(nvml, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", None)
    if is_mig and get_parent and call(is_mig, handle):
        parent = call(get_parent, handle)
        if parent is not None:
            return parent
    return handle


def parse_visible_devices(text: str | None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as a list of entries; None when unset (all GPUs)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _bare_uuid(text) -> str:
    """A GPU UUID in one form for comparing: lower case, without NVML's ``GPU-`` prefix."""
    value = str(text).strip().lower()
    return value[4:] if value.startswith("gpu-") else value


def cuda_uuids() -> list[str] | None:
    """The UUIDs of the GPUs CUDA sees, in CUDA's order (index 0 first), from torch when this process
    has already initialised CUDA through it; None otherwise (torch is never imported here).

    CUDA numbers GPUs fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, NVML in PCI order, so
    on a host with two GPU models the same index can name two different GPUs: match by UUID.
    """
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - an old torch without .uuid, or a broken CUDA
        return None


def devices_by_uuid(nvml, order: list[str]) -> list[Device]:
    """NVML devices for CUDA's devices, matched by UUID (``order`` as from :func:`cuda_uuids`);
    each Device's label is its CUDA index. Devices NVML does not know end the list."""
    count = int(nvml.nvmlDeviceGetCount())
    physical = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = [_uuid(nvml, h) for h in physical]
    bare = [_bare_uuid(u) for u in uuids]
    devices = []
    for cuda_index, wanted in enumerate(order):
        key = _bare_uuid(wanted)
        if key in bare:
            i = bare.index(key)
            devices.append(Device(i, physical[i], physical[i], str(cuda_index)))
            continue
        found = _resolve_entry(nvml, str(wanted).strip(), physical, uuids) if key.startswith("mig-") \
            else None
        if found is None:
            break
        index, handle, mem_handle = found
        devices.append(Device(index, handle, mem_handle, str(cuda_index)))
    return devices


def mixed_order_warning(nvml, visible: str | None) -> str | None:
    """A one-line notice when integer ``CUDA_VISIBLE_DEVICES`` indices may name other GPUs for CUDA
    than for NVML: GPUs of more than one model and ``CUDA_DEVICE_ORDER`` not ``PCI_BUS_ID``."""
    if os.environ.get("CUDA_DEVICE_ORDER", "").upper() == "PCI_BUS_ID":
        return None
    entries = parse_visible_devices(visible)
    if entries is not None and not any(e.lstrip("-").isdigit() for e in entries):
        return None  # UUIDs name the same GPU for both
    try:
        count = int(nvml.nvmlDeviceGetCount())
        names = {str(call(nvml.nvmlDeviceGetName, nvml.nvmlDeviceGetHandleByIndex(i)))
                 for i in range(count)}
    except Exception:  # noqa: BLE001
        return None
    if len(names) < 2:
        return None
    return ("GPUs of several models here and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA may number "
            "them differently from NVML, so telemetry may read another GPU; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID or name GPUs by UUID in CUDA_VISIBLE_DEVICES")


def resolve_devices(nvml, visible: str | None = None, *, use_env: bool = True,
                    cuda_order: list[str] | None = None) -> list[Device]:
    """The GPUs a CUDA program started now would use, as NVML handles.

    Follows CUDA's reading of ``CUDA_VISIBLE_DEVICES``: integer indices, ``GPU-`` UUIDs or unique
    UUID prefixes, ``MIG-`` UUIDs; the list ends at the first entry that matches nothing. Integer
    indices are NVML's (PCI bus) order, which is CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or
    on hosts with one GPU model. MIG devices are read through their parent GPU (power, clocks and
    temperature are per physical GPU) and their own memory use.
    """
    if cuda_order is not None:
        return devices_by_uuid(nvml, cuda_order)
    if use_env and visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = int(nvml.nvmlDeviceGetCount())
    physical = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = [_uuid(nvml, h) for h in physical]
    entries = parse_visible_devices(visible)
    if entries is None:
        return [Device(i, h, h, str(i)) for i, h in enumerate(physical)]

    devices: list[Device] = []
    seen: set[tuple[int, str]] = set()
    for entry in entries:
        found = _resolve_entry(nvml, entry, physical, uuids)
        if found is None:
            break  # CUDA ignores this entry and everything after it
        index, handle, mem_handle = found
        key = (index, _uuid(nvml, mem_handle))
        if key in seen:
            break  # a repeated device makes CUDA stop as well
        seen.add(key)
        devices.append(Device(index, handle, mem_handle, entry))
    return devices


def _resolve_entry(nvml, entry: str, physical: list, uuids: list[str]):
    if entry.lstrip("-").isdigit():
        i = int(entry)
        if 0 <= i < len(physical):
            return i, physical[i], physical[i]
        return None
    if entry.upper().startswith("MIG-"):
        mig = call(nvml.nvmlDeviceGetHandleByUUID, entry)
        if mig is None and entry.upper().startswith("MIG-GPU-"):
            # Old form MIG-GPU-<uuid>/<gi>/<ci>: read the parent GPU.
            parent_uuid = entry[4:].split("/")[0]
            matches = [i for i, u in enumerate(uuids) if u.lower() == parent_uuid.lower()]
            if len(matches) == 1:
                i = matches[0]
                return i, physical[i], physical[i]
            return None
        if mig is None:
            return None
        parent = _parent(nvml, mig)
        parent_uuid = _uuid(nvml, parent)
        index = uuids.index(parent_uuid) if parent_uuid in uuids else 0
        return index, parent, mig
    prefix = entry if entry.upper().startswith("GPU-") else f"GPU-{entry}"
    matches = [i for i, u in enumerate(uuids) if u.lower().startswith(prefix.lower())]
    if len(matches) != 1:
        return None
    i = matches[0]
    return i, physical[i], physical[i]


def read_facts(visible: str | None, *, own_pid: int | None = None) -> dict:
    """What NVML says about the driver and the GPUs a CUDA program would see.

    ``visible`` is a ``CUDA_VISIBLE_DEVICES`` value (None: every GPU). Returns ``{"driver",
    "cuda_driver", "physical_gpus", "gpus": [{"index", "name", "cc", "memory_mib",
    "memory_used_mib", "uuid", "sm_clock_mhz", "sm_clock_max_mhz", "mem_clock_mhz", "temp_c",
    "power_w", "clock_reasons", "processes": [{"pid", "used_mib", "name"}]}]}`` (memory in MiB,
    clocks in MHz, temperature in C, power in W); processes exclude ``own_pid``. Raises
    :class:`NvmlUnavailable` when NVML cannot be loaded or a query fails.
    """
    nvml = load_nvml()
    try:
        driver = as_str(nvml.nvmlSystemGetDriverVersion())
        cuda = call(nvml.nvmlSystemGetCudaDriverVersion)
        gpus = []
        physical = int(nvml.nvmlDeviceGetCount())
        for dev in resolve_devices(nvml, visible, use_env=False):
            h = dev.handle
            cc = call(nvml.nvmlDeviceGetCudaComputeCapability, h)
            mem = call(nvml.nvmlDeviceGetMemoryInfo, dev.mem_handle)
            power = call(nvml.nvmlDeviceGetPowerUsage, h)
            procs = {}
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for p in call(getattr(nvml, getter), dev.mem_handle) or []:
                    if p.pid == own_pid:
                        continue
                    used = getattr(p, "usedGpuMemory", None)
                    procs[p.pid] = {"pid": int(p.pid),
                                    "used_mib": None if used is None else round(used / _MIB),
                                    "name": as_str(call(nvml.nvmlSystemGetProcessName, p.pid) or "")}
            gpus.append({
                "index": dev.index,
                "name": as_str(call(nvml.nvmlDeviceGetName, dev.mem_handle) or "unknown GPU"),
                "cc": None if cc is None else f"{cc[0]}.{cc[1]}",
                "memory_mib": None if mem is None else round(mem.total / _MIB),
                "memory_used_mib": None if mem is None else round(mem.used / _MIB),
                "uuid": _uuid(nvml, dev.mem_handle),
                "sm_clock_mhz": call(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
                "sm_clock_max_mhz": call(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM),
                "mem_clock_mhz": call(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
                "temp_c": call(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
                "power_w": None if power is None else round(power / 1000.0, 1),
                "clock_reasons": read_reasons(nvml, h),
                "processes": sorted(procs.values(), key=lambda p: p["pid"]),
            })
    except Exception as exc:
        raise NvmlUnavailable(f"NVML query failed ({first_line(exc)})") from None
    finally:
        call(nvml.nvmlShutdown)
    return {"driver": driver,
            "cuda_driver": None if not cuda else f"{cuda // 1000}.{(cuda % 1000) // 10}",
            "physical_gpus": physical, "gpus": gpus}
