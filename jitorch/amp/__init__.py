"""Mixed precision: `jitorch.amp.autocast` (also `jitorch.autocast`) and `jitorch.amp.GradScaler`
(`grad_scaler.py`), as PyTorch's.

    with jitorch.autocast("cuda", dtype=jitorch.bfloat16):
        loss = loss_fn(model(x), y)   # products in bfloat16, softmax/norms/losses in float32
    loss.backward()                   # outside the region, as PyTorch recommends

The op policy (which ops run in the low precision, which in float32) is PyTorch's, per device type:
`jitorch._autocast.POLICY`. Parameters stay in their dtype; the casts are ordinary differentiable
ops, so gradients arrive in each parameter's dtype. Under `jitorch.compile` the casts are traced
and fused like any op, and the autocast state is part of the compiled function's guards.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from .. import _autocast
from .. import dtypes as _dt
from .grad_scaler import GradScaler

__all__ = ["GradScaler", "autocast", "get_autocast_dtype", "is_autocast_enabled"]

_DEVICE_TYPES = ("cuda", "cpu")
_DTYPES = ("float16", "bfloat16")


def _device_type(device_type) -> str:
    name = str(device_type).split(":")[0]
    if name not in _DEVICE_TYPES:
        raise RuntimeError(f"autocast: device_type must be 'cuda' or 'cpu', got {device_type!r}")
    return name


class autocast:  # noqa: N801 - PyTorch's name
    """A region (context manager, or decorator of a function) in which the ops of PyTorch's
    autocast lists run in `dtype` (float16 or bfloat16; by default float16 on cuda and bfloat16 on
    the CPU) or in float32 (see the module docstring). `enabled=False` turns autocast off for the
    device type inside the region; regions nest, each restoring the state it found.
    `cache_enabled` is accepted for PyTorch's sake (jitorch keeps no cast cache)."""

    def __init__(self, device_type: str, dtype=None, enabled: bool = True, cache_enabled: bool | None = None) -> None:
        self.device_type = _device_type(device_type)
        self.fast_dtype = _dt.get_dtype(dtype) if dtype is not None else get_autocast_dtype(self.device_type)
        self._enabled = bool(enabled)
        if self._enabled and self.fast_dtype.name not in _DTYPES:
            warnings.warn(f"In {self.device_type} autocast, but the target dtype {self.fast_dtype.name} is not "
                          "supported (float16 and bfloat16 are). Disabling autocast.", UserWarning, stacklevel=2)
            self._enabled = False
        self._region = None

    def __enter__(self) -> autocast:
        self._region = _autocast.region(self.device_type, self.fast_dtype, self._enabled)
        self._region.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._region.__exit__(*exc)
        self._region = None

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with autocast(self.device_type, self.fast_dtype, self._enabled):
                return fn(*args, **kwargs)

        return run


def get_autocast_dtype(device_type: str):
    """The dtype autocast uses on `device_type`: the innermost enabled region's, else the default
    (float16 on cuda, bfloat16 on the CPU)."""
    device_type = _device_type(device_type)
    found = _autocast.regions().get(device_type)
    return found if found is not None else _dt.get_dtype(_autocast.DEFAULT_DTYPE[device_type])


def is_autocast_enabled(device_type: str = "cuda") -> bool:
    """Whether ops on `device_type` are inside an enabled autocast region (this thread)."""
    return _device_type(device_type) in _autocast.regions()
