"""`CUDABackend`: CuPy arrays on the current GPU as buffers, CuPy as eager kernels (`kernels.py`).
Importing this module registers it for the `cuda` device type, or raises an ImportError that says
what is missing (`gpu_check.py`).

Compiled programs on cuda run their eager kernels step by step (`can_fuse` is False) until a
Triton renderer exists."""

from __future__ import annotations

import numpy as np

from .. import Backend, register
from .gpu_check import cupy
from .kernels import KERNELS


def _device_array(array):
    return array if isinstance(array, cupy.ndarray) else cupy.asarray(array)


class CUDABackend(Backend):
    device_type = "cuda"
    kernels = KERNELS
    buffer_type = cupy.ndarray

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        return cupy.empty(shape, dtype)

    def copy(self, array):
        return cupy.array(array, copy=True, order="C")

    def copy_into(self, dst, src) -> None:
        cupy.copyto(dst, _device_array(src), casting="unsafe")

    def add_into(self, dst, src) -> None:
        cupy.add(dst, _device_array(src), out=dst)

    def owns_buffer(self, array) -> bool:
        return array.base is None

    def to_numpy(self, array) -> np.ndarray:
        """A host copy (waits for the GPU's work on `array`)."""
        return cupy.asnumpy(array)

    def from_numpy(self, array: np.ndarray):
        return cupy.asarray(array)

    def as_buffer(self, value):
        return cupy.asarray(value)

    def is_view_of(self, out, src) -> bool:
        return out.base is not None and isinstance(src, cupy.ndarray) and cupy.may_share_memory(out, src)


register(CUDABackend())
