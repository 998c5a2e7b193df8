"""Memory layouts of values and of the views eager kernels make of them, computed without data.

A view primitive (reshape, permute, expand, a basic getitem) run by an eager kernel gives an array
whose layout follows from its input's: numpy computes it here on a stand-in array over one element
of memory, which it never reads, so a layout is exactly what the kernel's view will have, and a
reshape that numpy would copy is no view here either. The fusion pass (which dims of a kernel's
loop an input lets merge) and the executor's native runs (byte offsets and strides of the values
between their ops) read layouts this way.
"""

from __future__ import annotations

import functools

import numpy as np

from ..primitives import numpy_key


def c_strides(shape: tuple[int, ...], itemsize: int = 1) -> tuple[int, ...]:
    """The strides of a C-contiguous array of `shape`, in units of `itemsize` bytes (1: elements)."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@functools.lru_cache(maxsize=4096)
def view_layout(shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype, op: str,
                params: tuple) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """(byte offset, shape, strides) of view primitive `op` (its params as sorted items) applied, as
    the eager kernels apply it, to an array laid out in `shape` and byte `strides` at offset 0; None
    where numpy would copy, or for a getitem key that is not a basic one. (Cached: a model's layers
    repeat the same views.)"""
    base = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, strides)
    params = dict(params)
    try:
        if op == "reshape":
            view = np.reshape(base, params["shape"], copy=False)
        elif op == "permute":
            view = np.transpose(base, params["dims"])
        elif op == "expand":
            view = np.broadcast_to(base, params["shape"])
        else:
            key = params["key"]
            if any(type(item) is tuple and item[0] != "slice" for item in key):
                return None
            index = numpy_key(key, ())
            view = base[index if Ellipsis in key else index + (Ellipsis,)]
    except (ValueError, TypeError, IndexError):
        return None
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return offset, view.shape, view.strides
