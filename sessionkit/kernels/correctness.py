"""Loading the attention kernel for the correctness check, and the check's limits.

The checking itself lives in :mod:`sessionkit.kernels.checking`; the step that runs it in a session
(``sessionkit step correctness``) is :mod:`sessionkit.steps.correctness`. Without CUDA (or with a
CPU build of torch) :func:`load_kernel` raises :class:`NoCuda` and the step is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import SessionkitError, first_line

DEFAULT_CONFIGS = 64
MIN_CONFIGS = 50
MAX_CONFIGS = 100_000


class KernelUnavailable(SessionkitError):
    """A GPU is there but the attention kernel cannot be loaded."""


class NoCuda(Exception):
    """No CUDA device or no CUDA build of torch: the step is skipped with this reason."""


@dataclass
class LoadedKernel:
    fn: Callable  # fn(q, k, v, out, lse, causal, scale, *, causal_alignment, enable_gqa)
    device: object  # a torch.device or a device string
    build_key: str | None = None  # the build-cache key of the library under test
    head_dims: tuple[int, ...] | None = None  # head dims of the family that runs on the device
    family: str | None = None  # the kernel family that runs on the device: "sm90" or "sm80"


def load_kernel(progress=None) -> LoadedKernel:
    """The built attention kernel on the current GPU, built first when no cached build matches.

    Raises :class:`NoCuda` when there is nothing to run it on, and a :class:`SessionkitError` (the
    build's own, or :class:`KernelUnavailable`) when there is a GPU but no usable kernel.
    """
    try:
        import torch
    except ImportError:
        raise NoCuda("torch is not installed") from None
    if torch.version.cuda is None:
        raise NoCuda(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise NoCuda(f"no CUDA device is visible (torch {torch.__version__})")
    try:
        from . import flash_attention_into, load_extension

        info = load_extension(progress)
    except SessionkitError:
        raise
    except Exception as exc:  # a missing or broken extension: say so in one line
        raise KernelUnavailable(
            f"cannot load the attention kernel ({first_line(exc, named=True)}); "
            "run 'sessionkit step build' to see the build log") from None

    def kernel(q, k, v, out, lse, causal, scale, causal_alignment="top_left", enable_gqa=False):
        flash_attention_into(q, k, v, out, lse, causal=causal, scale=scale,
                             causal_alignment=causal_alignment, enable_gqa=enable_gqa)

    device = torch.device("cuda", torch.cuda.current_device())
    head_dims = tuple(int(d) for d in torch.ops.sessionkit.flash_attn_head_dims(device.index))
    family = str(torch.ops.sessionkit.flash_attn_family(device.index))
    return LoadedKernel(kernel, device, getattr(info, "key", None), head_dims, family)


def _device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
