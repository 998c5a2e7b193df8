"""`jitorch.accelerator`: PyTorch 2.6's device-generic `torch.accelerator` API, over `jitorch.cuda`.

Scripts written for any accelerator pick their device with it:

    device = jitorch.accelerator.current_accelerator() or jitorch.device("cpu")

jitorch's one accelerator is CUDA, so each function here is its `jitorch.cuda` counterpart, with
PyTorch's behaviour where there is none: `current_accelerator()` is None and `device_count()` 0, and
the functions that need a device raise PyTorch's RuntimeError.
"""

from __future__ import annotations

from . import cuda
from .device import Device

__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index", "set_device_index",
           "synchronize"]


def is_available() -> bool:
    """Whether an accelerator (a CUDA device jitorch can use) is here. Never raises."""
    return cuda.is_available()


def current_accelerator(check_available: bool = False) -> Device | None:
    """`jitorch.device("cuda")` where CUDA is available, else None. PyTorch separates a build's
    accelerator (`check_available=False`) from one usable now; jitorch's CUDA support is found at run
    time, so both answers are the run-time one."""
    return Device("cuda") if cuda.is_available() else None


def device_count() -> int:
    """The number of accelerator devices (0 where there is none)."""
    return cuda.device_count()


def current_device_index() -> int:
    """The index of the current accelerator device: where `device="cuda"` puts a tensor."""
    _require_accelerator()
    return cuda.current_device()


def set_device_index(device: Device | str | int) -> None:
    """Make `device` (an index, "cuda:1" or a jitorch.device) the current accelerator device."""
    _require_accelerator()
    cuda.set_device(device)


def synchronize(device: Device | str | int | None = None) -> None:
    """Wait until the work queued on an accelerator device (the current one by default) has finished."""
    _require_accelerator()
    cuda.synchronize(device)


def _require_accelerator() -> None:
    if not cuda.is_available():
        raise RuntimeError(
            "Cannot access accelerator device when none is available. Check "
            "jitorch.accelerator.is_available() first, and use the CPU where it is False."
        )
