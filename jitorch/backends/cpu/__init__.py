"""The CPU backend: numpy arrays as buffers (bfloat16 through ml_dtypes), numpy and BLAS as eager
kernels (`kernels.py`), and fused kernels rendered as LLVM IR (`jitorch.codegen.llvm`), compiled
in-process by llvmlite with a disk cache (`jit.py`), and launched through ctypes on the backend's
threads (`launch.py`, `threads.py`)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from ...codegen import llvm
from ...ir import passes
from ...ir.fusion import Kernel, KernelDesc
from .. import Backend, NativeOp, register
from ..array_kernels import cat_or_view
from . import jit, memory, native, threads
from .helpers import address
from .kernels import KERNELS, KERNELS_INTO, unfold_strides
from .launch import CompiledKernel, bytes_per_element


def _allocation(array: np.ndarray):
    while isinstance(array.base, np.ndarray):  # (views of views: the array that owns the memory at the root)
        array = array.base
    return array


class CPUBackend(Backend):
    device_type = "cpu"
    kernels = KERNELS
    kernels_into = KERNELS_INTO
    plan_kernels = {"cat": partial(cat_or_view, np, address, _allocation)}
    joins_side_chains = True  # (cross-entropy's forward and backward: one read of the logits)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return memory.empty(shape, dtype)  # (a large one from a slab whose pages are in already)

    def copy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True, order="C")

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="unsafe")

    def add_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.add(dst, src, out=dst)

    def owns_buffer(self, array: np.ndarray) -> bool:
        return (array.base is None or type(array.base) is memory.Lease) and array.flags.writeable

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return array

    def as_buffer(self, value) -> np.ndarray:
        return np.asarray(value)

    def is_view_of(self, out: np.ndarray, src: np.ndarray) -> bool:
        return out.base is not None and np.may_share_memory(out, src)

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return array

    def can_fuse(self, node) -> bool:
        return llvm.fusible(node)

    def worth_a_kernel(self, kernel: Kernel) -> bool:
        """A kernel of a single op beats numpy's when it is large enough to run on several threads
        (numpy's ufuncs use one), or where it may join a native run, which calls it for nothing."""
        return native.enabled() or threads.worth_splitting(math.prod(kernel.shape), bytes_per_element(kernel))

    def compile_kernels(self, descs: list[KernelDesc]) -> list[CompiledKernel]:
        """Render each kernel (once per structure per process), compile what this process has not,
        and wrap the machine code for launching."""
        sources = [_source(desc) for desc in descs]
        addresses = jit.compile_texts(dict(sources))
        return [CompiledKernel(desc, addresses[digest], text) for desc, (digest, text) in zip(descs, sources)]

    def into_strides(self, op: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...] | None:
        return unfold_strides(shape, np.dtype(dtype).itemsize) if op == "unfold" and len(shape) == 3 else None

    def runs_natively(self, op: NativeOp) -> bool:
        return native.runs_natively(op)

    def compile_native_runs(self, runs: list[tuple[list[NativeOp], int, tuple]]) -> list[native.CompiledRun]:
        return native.compile_runs(runs)


_sources: dict[tuple, tuple[str, str]] = {}  # a kernel's structure key -> (digest, LLVM IR text)


def _source(desc: KernelDesc) -> tuple[str, str]:
    found = _sources.get(desc.key)
    if found is None:
        text = llvm.render(desc, scalef=jit.has_avx512f())
        found = _sources[desc.key] = (jit.digest_of(text), text)
    return found


register(CPUBackend())
passes.use_constant_kernels(KERNELS)  # constants are numpy arrays: this backend folds them
