"""Host arrays joining GPU work, moved without stalling the GPU.

A CPU scalar joins GPU ops all the time: an optimizer's hyperparameters and its bias corrections
(PyTorch keeps the step count on the CPU), a compiled program's CPU inputs. `cupy.asarray` of a
numpy array copies with `cudaMemcpy`, which from pageable memory first waits for everything
queued on the device: the host then never runs ahead of the GPU, and a launch-bound step pays the
whole GPU time on top of its own. `device_array` queues the copy on the current stream instead
(`cudaMemcpyAsync` stages pageable memory at once and returns without waiting for the device), and
keeps one device copy of each 0-d value it has seen (the same few hyperparameters come back every
step), which are read-only: kernels never write their inputs.
"""

from __future__ import annotations

import cupy  # (not gpu_check: the launcher's tests run it on a machine without a GPU)
import numpy as np

_SCALARS_KEPT = 4096  # device copies of distinct 0-d values kept; past that, new ones are not kept
_scalars: dict[tuple, object] = {}  # (device, dtype, bytes) -> a 0-d device array


def device_array(array: np.ndarray, dtype: np.dtype | None = None):
    """`array` (a numpy array, cast to `dtype` where given) as a CuPy array on the current device,
    copied on the current stream without waiting for the device. 0-d values come from a cache:
    the result must be treated as read-only."""
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    if array.ndim == 0:
        key = (cupy.cuda.runtime.getDevice(), array.dtype.str, array.tobytes())
        found = _scalars.get(key)
        if found is None:
            found = upload(array)
            if len(_scalars) < _SCALARS_KEPT:  # never evicted: a captured CUDA graph may read one
                _scalars[key] = found
        return found
    return upload(array)


def upload(array: np.ndarray):
    """A new CuPy copy of host `array`, queued on the current stream (the host may change `array`
    at once: pageable memory is staged before this returns)."""
    if type(array) is not np.ndarray:
        array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy()  # (not np.ascontiguousarray: it makes a 0-d array 1-d)
    out = cupy.empty(array.shape, array.dtype)
    if array.nbytes:
        out.data.copy_from_host_async(array.ctypes.data, array.nbytes, cupy.cuda.get_current_stream())
    return out
