"""`CUDABackend`: CuPy arrays on the current GPU as buffers, CuPy as eager kernels (`kernels.py`).
Importing this module registers it for the `cuda` device type, or raises an ImportError that says
what is missing (`gpu_check.py`).

Compiled programs on cuda fuse what the Triton renderer (`jitorch.codegen.triton`) can render into
Triton kernels, launched through jitorch's own Triton driver (`launch.py`, `triton_driver.py`); the
rest runs on the eager kernels. Where this jitorch has no Triton renderer, nothing fuses."""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable

import numpy as np

from .. import Backend, get_float32_matmul_precision, register
from ..array_kernels import cat_or_view
from . import attention, checks
from .gpu_check import cupy
from .graphs import CUDAGraph, node_refusal, record
from .kernels import KERNELS, KERNELS_INTO
from .scalars import upload


def _device_array(array):
    if isinstance(array, cupy.ndarray):
        return array
    return upload(array) if type(array) is np.ndarray else cupy.asarray(array)


class CUDABackend(Backend):
    device_type = "cuda"
    kernels = KERNELS
    kernels_into = KERNELS_INTO  # products into the memory plan's buffers
    plan_kernels = {"cat": functools.partial(cat_or_view, cupy, lambda a: a.data.ptr, lambda a: a.data.mem)}
    buffer_type = cupy.ndarray
    # each CuPy kernel costs ~15 us of host time; a composite's fused Triton kernels a few us each
    fuses_eager_composites = True
    groups_kernels = True  # an optimizer's update of every parameter in one launch
    fuses_column_sums = True  # a bias gradient summed in the pass that computes what it sums
    fuses_matmul_epilogues = True  # cuBLAS then the epilogue, or one Triton kernel: timed on first launch

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        return cupy.empty(shape, dtype)

    def copy(self, array):
        if type(array) is cupy.ndarray:
            return array.copy()  # (C order; cupy.array's Python-level checks cost several times more)
        return cupy.array(array, copy=True, order="C")

    def copy_into(self, dst, src) -> None:
        if (type(src) is np.ndarray and src.dtype == dst.dtype and src.shape == dst.shape and src.flags.c_contiguous
                and dst.flags.c_contiguous):
            # one copy queued on the current stream: from pageable memory it returns once the bytes
            # are staged, without waiting for the device, and `src` may change at once (cupy.asarray
            # copies with cudaMemcpy, which first waits for all the device's work; see scalars.py)
            if src.nbytes:
                runtime = cupy.cuda.runtime
                runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, runtime.memcpyHostToDevice,
                                    cupy.cuda.get_current_stream().ptr)
            return
        cupy.copyto(dst, _device_array(src), casting="unsafe")

    def add_into(self, dst, src) -> None:
        cupy.add(dst, _device_array(src), out=dst)

    def owns_buffer(self, array) -> bool:
        return array.base is None

    def to_numpy(self, array) -> np.ndarray:
        """A host copy (waits for the GPU's work on `array`)."""
        return cupy.asnumpy(array)

    def check_indices(self, index, lo: int, hi: int, error, skip: int | None = None) -> None:
        checks.check_indices(index, lo, hi, error, skip)

    def finish_checks(self) -> None:
        if checks.pending:
            checks.finish()

    def from_numpy(self, array: np.ndarray):
        # queued on the current stream: cupy.asarray's cudaMemcpy from pageable memory first waits
        # for all the device's work, so every tensor made from host data stalled the host (scalars.py)
        return upload(array)

    def full(self, shape: tuple[int, ...], value, dtype: np.dtype):
        """Filled on the device (a host array of the shape would be made, then copied)."""
        if value == 0:
            out = cupy.zeros(shape, dtype)  # (a memset)
            # (CuPy's fill takes any zero for a memset: -0.0 is +0.0 negated)
            return out if math.copysign(1.0, value) > 0 else cupy.negative(out, out=out)
        out = cupy.empty(shape, dtype)
        try:
            out.fill(np.asarray(value, dtype))
        except (TypeError, NotImplementedError, ValueError):  # (a dtype CuPy's fill lacks)
            return upload(np.full(shape, value, dtype=dtype))
        return out

    def as_buffer(self, value):
        return cupy.asarray(value)

    def is_view_of(self, out, src) -> bool:
        return out.base is not None and isinstance(src, cupy.ndarray) and cupy.may_share_memory(out, src)

    def can_fuse(self, node) -> bool:
        renderer = _renderer()
        return renderer is not None and renderer.fusible(node)

    def worth_a_kernel(self, kernel) -> bool:
        """Always: a kernel of one node beats that node's CuPy kernel on launch cost alone. A CuPy
        op costs about 15 us of host time per launch (more for ops that are several CuPy kernels),
        as much as Triton's own `kernel[grid](...)`; ours goes through the compiled kernel's C
        launcher with its arguments prepared once, a few microseconds (tests/test_triton_driver.py's
        gpu test prints both). On the device both read and write the same bytes. The price is one
        more compile per distinct kernel, cached on disk."""
        return True

    def takes_matmul_epilogue(self, node) -> bool:
        """For products on the tensor cores (float16, bfloat16, and float32 in TF32 at "high" or
        "medium"). At "highest" cuBLAS's float32 GEMM is what a Triton template multiplying on the
        CUDA cores would lose to: timing it would only cost compiles."""
        return node.out.dtype.name != "float32" or get_float32_matmul_precision() != "highest"

    def fuses_attention(self, dtype: np.dtype, head_dim: int, value_head_dim: int) -> bool:
        """Where Triton is installed, for float32, float16 and bfloat16 and heads up to 128 wide:
        flash-attention kernels (`attention.py`)."""
        return attention.fused(dtype, head_dim, value_head_dim)

    def compile_kernels(self, descs: list) -> list:
        """Render each kernel to Triton, and compile it for the current device (the usual
        specialization: contiguous inputs, aligned addresses; all of them side by side), so that a kernel that fails to
        compile fails while its program is built and the program runs on eager kernels instead."""
        from ...ir.fusion import KernelGroup, MatmulEpilogue
        from .launch import GroupedTritonKernel, TritonKernel, prepare_kernels
        from .matmul_epilogue import MatmulEpilogueKernel

        renderer = _renderer()
        precision = get_float32_matmul_precision()

        def compiled(d):
            if isinstance(d, KernelGroup):
                return GroupedTritonKernel(d, renderer.render_group(d))
            if isinstance(d, MatmulEpilogue):
                return MatmulEpilogueKernel(d, renderer.render_matmul(d, precision),
                                            TritonKernel(d.desc, renderer.render(d.desc)), KERNELS["matmul"], precision)
            return TritonKernel(d, renderer.render(d))

        kernels = [compiled(d) for d in descs]
        prepare_kernels(kernels)
        return kernels

    def time_mark(self) -> object:
        """A CUDA event recorded on the current stream."""
        event = cupy.cuda.Event()
        event.record()
        return event

    def elapsed_ms(self, start: object, end: object) -> float:
        return cupy.cuda.get_elapsed_time(start, end)

    def finish_work(self) -> None:
        cupy.cuda.Device().synchronize()

    captures_graphs = True

    def capture(self, work: Callable[[], object]) -> tuple[CUDAGraph, object]:
        """Record the kernels `work()` queues into a CUDA graph (`graphs.py`)."""
        return record(work)

    def capture_refusal(self, node) -> str | None:
        return node_refusal(node)


@functools.cache
def _renderer():
    """`jitorch.codegen.triton`, or None where this jitorch has no Triton renderer."""
    if importlib.util.find_spec("jitorch.codegen.triton") is None:
        return None
    from ...codegen import triton as renderer

    return renderer


register(CUDABackend())
