"""GPUs matched across NVML and CUDA by UUID, never by index, with a fake NVML; the deprecated
pynvml warning silenced where NVML is imported, and nothing else."""

from __future__ import annotations

import sys
import warnings

from sessionkit import nvml as nvml_reader

L4 = "GPU-1111aaaa-0000-0000-0000-000000000001"
H100 = "GPU-2222bbbb-0000-0000-0000-000000000002"


class TwoModelNVML:
    """NVML on a host with an L4 (PCI bus first, NVML index 0) and an H100 (index 1)."""

    def __init__(self):
        self.gpus = [("NVIDIA L4", L4), ("NVIDIA H100 80GB HBM3", H100)]

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, text):
        raise RuntimeError("not found")

    def nvmlDeviceGetUUID(self, handle):
        return self.gpus[handle[1]][1]

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle[1]][0]


def test_cuda_index_0_on_a_mixed_host_reads_the_gpu_cuda_uses():
    # CUDA orders fastest first: its device 0 is the H100 (torch reports the UUID without "GPU-").
    cuda_order = [H100[4:], L4[4:]]
    devices = nvml_reader.resolve_devices(TwoModelNVML(), "0", cuda_order=cuda_order)
    assert [d.index for d in devices] == [1, 0]
    assert devices[0].handle == ("gpu", 1) and devices[0].label == "0"


def test_bench_probe_reads_the_gpu_of_the_torch_device(monkeypatch):
    from sessionkit.bench.timing import Probe

    monkeypatch.setattr(nvml_reader, "load_nvml", lambda: TwoModelNVML())
    monkeypatch.setattr(nvml_reader, "cuda_uuids", lambda: [H100, L4])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    probe = Probe.for_torch_device(0)
    assert probe.device.handle == ("gpu", 1)  # the H100, not NVML's index 0


def test_mixed_models_without_pci_order_are_named_when_cuda_order_is_unknown(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert "CUDA_DEVICE_ORDER" in nvml_reader.mixed_order_warning(TwoModelNVML(), "0")
    assert nvml_reader.mixed_order_warning(TwoModelNVML(), H100) is None
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert nvml_reader.mixed_order_warning(TwoModelNVML(), "0") is None


FAKE_PYNVML = '''
import warnings
warnings.warn("The pynvml package is deprecated. Please install nvidia-ml-py instead.",
              FutureWarning, stacklevel=2)
warnings.warn("another warning that must still be seen", UserWarning, stacklevel=2)

def nvmlInit():
    pass
'''


def test_only_the_deprecated_pynvml_warning_is_silenced(tmp_path, monkeypatch):
    (tmp_path / "pynvml.py").write_text(FAKE_PYNVML)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(nvml_reader, "no_nvidia_driver", lambda: False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        nvml = nvml_reader.load_nvml()
    assert nvml.__file__ == str(tmp_path / "pynvml.py")
    assert [str(w.message) for w in seen] == ["another warning that must still be seen"]
