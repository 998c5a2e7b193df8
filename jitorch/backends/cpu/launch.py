"""The CPU backend's launcher: calls a compiled kernel on numpy arrays through ctypes, splitting
large kernels across the backend's threads (`threads.py`).

Each input is viewed in the kernel's collapsed loop shape (a copy only when its layout can't be)
and passes its strides in elements. Outputs are written into arrays the caller provides (a
compiled program's memory plan) or, without them, into fresh ones.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np

from ...ir.fusion import KernelDesc
from ...ir.layouts import c_strides
from . import memory, threads
from .helpers import address

_KERNEL_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def bytes_per_element(kernel) -> int:
    """The bytes a kernel moves per element of its loop: the item sizes of its operands that have
    one element per element of the loop (a broadcast weight or a row's statistic is small)."""
    size = math.prod(kernel.shape)
    return sum(v.dtype.np.itemsize for v in (*kernel.inputs, *kernel.outputs) if math.prod(v.shape) == size)


class CompiledKernel:
    """A fused kernel ready to run on numpy arrays: `run(inputs, outs=None) -> outputs`."""

    def __init__(self, desc: KernelDesc, fn_address: int, text: str = "") -> None:
        kernel = desc.kernel
        loop_shape = desc.loop_shape
        self.kernel = kernel
        self.name = kernel.name()
        self.source = "\n".join("; " + line for line in kernel.format().splitlines()) + "\n" + text
        self.loop_shape = loop_shape
        self.ndim = len(loop_shape)
        self.broadcast = desc.broadcast
        self.fn = _KERNEL_TYPE(fn_address)
        self.out_dtypes = [v.dtype.np for v in kernel.outputs]
        self.out_shapes = [v.shape for v in kernel.outputs]
        self.in_views = [desc.view_shape(v) for v in kernel.inputs]
        # the loop shape, then the row-major index of the call's first element (random draws number
        # their elements by it; a thread's band starts at its first row)
        self.shape_arg = (ctypes.c_int64 * (self.ndim + 1))(*loop_shape, 0)
        self.size = int(np.prod(loop_shape))
        # outputs are ours, C-contiguous: their strides are fixed (a row kernel's row outputs have
        # one element per row: stride 0 along the row)
        self.out_strides = []
        for v in kernel.outputs:
            per_row = v.shape != kernel.shape
            dims = loop_shape[:-1] + (1,) if per_row else loop_shape
            self.out_strides += [0 if per_row and d == self.ndim - 1 else int(np.prod(dims[d + 1:]))
                                 for d in range(self.ndim)]
        # a row kernel splits across threads by rows, never inside one
        self.split_rows = self.ndim >= 2 or not kernel.rows
        self.bytes_per_element = bytes_per_element(kernel)
        # each input's byte strides when it is C-contiguous in its view shape (the usual case), and
        # the strides argument of a call whose inputs all are: made once, not per call
        self.contiguous = [c_strides(view, v.dtype.np.itemsize) for view, v in zip(self.in_views, kernel.inputs)]
        usual = [0 if bcast[d] else strides[d] // v.dtype.np.itemsize
                 for strides, bcast, v in zip(self.contiguous, self.broadcast, kernel.inputs) for d in range(self.ndim)]
        usual += self.out_strides
        self.usual_strides = (ctypes.c_int64 * max(len(usual), 1))(*usual)

    def run(self, arrays: list[np.ndarray], outs: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Compute the kernel's outputs from its inputs, into `outs` (C-contiguous arrays of the
        outputs' shapes and dtypes) where given; a None in `outs`, or no `outs`, means a new array."""
        ndim = self.ndim
        pointers: list[int] = []
        keep = []
        usual = True  # every input C-contiguous in its view shape: the strides argument made at build
        for array, view_shape, contiguous in zip(arrays, self.in_views, self.contiguous):
            view = array.reshape(view_shape) if array.shape != view_shape else array
            if view.strides != contiguous:
                usual = False
            keep.append(view)
            pointers.append(address(view))
        if not usual:
            keep, pointers, stride_arg = self._strided(keep)
        else:
            stride_arg = self.usual_strides
        if outs is None:
            outs = [memory.empty(shape, dt) for shape, dt in zip(self.out_shapes, self.out_dtypes)]
        elif any(o is None for o in outs):
            outs = [memory.empty(shape, dt) if o is None else o
                    for o, shape, dt in zip(outs, self.out_shapes, self.out_dtypes)]
        pointers += [address(o) for o in outs]
        rows = self.loop_shape[0] if ndim else 1
        parts = min(threads.count(), rows) if self.split_rows and threads.worth_splitting(
            self.size, self.bytes_per_element) else 1
        if parts < 2:
            self.fn(self.shape_arg, stride_arg, (ctypes.c_void_p * len(pointers))(*pointers))
            return outs
        # split the outermost loop dim into one band of rows per thread
        row_bytes = [stride_arg[k * ndim] * a.itemsize for k, a in enumerate(keep + outs)]
        calls = []
        for part in range(parts):
            first, last = rows * part // parts, rows * (part + 1) // parts
            shape = (ctypes.c_int64 * (ndim + 1))(last - first, *self.loop_shape[1:], first * self.size // rows)
            moved = (ctypes.c_void_p * len(pointers))(*[p + first * b for p, b in zip(pointers, row_bytes)])
            calls.append(functools.partial(self.fn, shape, stride_arg, moved))
        threads.run_all(calls)
        return outs

    def _strided(self, views: list[np.ndarray]) -> tuple[list[np.ndarray], list[int], object]:
        """For inputs not all C-contiguous in their view shapes: the views (copied where the
        innermost stride is not one element, which the code assumes), their addresses and the
        strides argument of this call."""
        ndim = self.ndim
        strides: list[int] = []
        pointers: list[int] = []
        kept = []
        for view, bcast in zip(views, self.broadcast):
            item = view.itemsize
            if ndim and not bcast[-1] and view.strides[-1] != item:
                view = np.ascontiguousarray(view)  # the innermost stride is compiled in as 1
            kept.append(view)
            strides += [0 if bcast[d] else view.strides[d] // item for d in range(ndim)]
            pointers.append(address(view))
        strides += self.out_strides
        return kept, pointers, (ctypes.c_int64 * max(len(strides), 1))(*strides)

