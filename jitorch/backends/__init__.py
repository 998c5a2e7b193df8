"""Backends: what each kind of device brings, behind one small interface.

A backend is one package that registers itself for a device type (`register`) and provides:
- buffers: the device's array type, with `empty`, `copy`, `copy_into`, `to_numpy` and
  `from_numpy` (host <-> device);
- eager kernels: `kernels[prim_name](*arrays, **params) -> array`, one per primitive it supports
  (an input may be a CPU scalar, a 0-d numpy array, as PyTorch lets CPU scalars join any device);
- capability answers for fusion: `can_fuse(node)` and `worth_a_kernel(kernel)`;
- `compile_kernels(descs)`: render each kernel description (`jitorch.ir.fusion.KernelDesc`) to
  source, compile it (with an on-disk cache) and return launchable kernels:
  `run(inputs, outs=None) -> outputs`.

Everything above this layer (dispatch, autograd, the tracer, the executor of compiled programs)
asks `backend_for(device)` and knows no backend by name; `jitorch/ir` knows none at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import BackendError


class Backend:
    """The parts a device's backend provides (see the module docstring); subclasses set them."""

    device_type: str = ""
    kernels: dict[str, Callable] = {}
    buffer_type: type = np.ndarray  # what the eager kernels return (anything else goes through as_buffer)

    def kernel(self, name: str) -> Callable:
        """The eager kernel of primitive `name`, or an error naming the op and the device."""
        try:
            return self.kernels[name]
        except KeyError:
            raise BackendError(f"the {self.device_type} backend has no kernel for `{name}`") from None

    # --- buffers -----------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        raise NotImplementedError

    def copy(self, array):
        """A new buffer with the same values (C-contiguous)."""
        raise NotImplementedError

    def copy_into(self, dst, src) -> None:
        """Write `src` (same shape, any dtype: cast as numpy's 'unsafe' casting does) into `dst`."""
        raise NotImplementedError

    def add_into(self, dst, src) -> None:
        """dst += src, in place (gradient accumulation)."""
        raise NotImplementedError

    def owns_buffer(self, array) -> bool:
        """Whether `array` is a whole writable buffer of its own (not a view of another's)."""
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        raise NotImplementedError

    def as_buffer(self, value):
        """A kernel's result that is not a buffer (a numpy scalar) as one."""
        raise NotImplementedError

    def is_view_of(self, out, src) -> bool:
        """Whether a view primitive's result shares `src`'s memory (it may have had to copy)."""
        raise NotImplementedError

    def from_numpy(self, array: np.ndarray):
        raise NotImplementedError

    # --- compiled programs -------------------------------------------------------------
    def can_fuse(self, node) -> bool:
        """Whether a fused kernel of this backend can compute `node`."""
        return False

    def worth_a_kernel(self, kernel) -> bool:
        """Whether a kernel of a single node beats running that node's eager kernel."""
        return False

    def compile_kernels(self, descs: list) -> list:
        raise BackendError(f"the {self.device_type} backend compiles no fused kernels")


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    """Make `backend` serve every device of its type."""
    _BACKENDS[backend.device_type] = backend


def has_backend(device_type: str) -> bool:
    return device_type in _BACKENDS


def backend_for(device_type: str) -> Backend:
    """The backend of a device type ("cpu", "meta", ...)."""
    backend = _BACKENDS.get(device_type)
    if backend is None:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise BackendError(f"no backend for device type {device_type!r} in this jitorch (backends: {known})")
    return backend
