"""Matrix products on cuBLAS through nvmath-python's bindings (`nvmath.bindings.cublas`), queued on
CuPy's current stream: the cuda backend's matmul. CuPy's own matmul refuses to run while a CUDA
graph is being captured ("calling cuBLAS API during stream capture is currently unsupported"), where
nvmath's bindings record into the graph like any kernel (measured on an H200: docs in
../shared/facts.md); and it spends tens of microseconds of Python per call where this path, with
its plan cached per layout, spends a few.

`matmul(a, b, allow_tf32)` follows numpy's matmul rules (1-D operands, broadcast batch dims) for
float16, bfloat16 (both accumulated in float32, as PyTorch does), float32 (TF32 tensor cores where
`allow_tf32`) and float64 operands of one dtype, and answers None for anything else. cuBLAS is
column-major: a row-major C = A @ B is computed as C^T = B^T A^T, each operand read in place where
its layout is one GEMM operand (rows or columns contiguous, batches one stride apart, a broadcast
batch dim a stride of 0) and copied to C order where not. `gemm_plan` makes that decision from
shapes and strides alone, so it is tested on any machine.

cuBLAS gets a workspace of its own per handle (`WORKSPACE_BYTES`), made outside any capture, so
that a captured product never allocates one inside the graph.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from typing import NamedTuple

import numpy as np

from ... import dtypes as _dt
from ...ir.layouts import c_strides

cupy = None  # imported with nvmath by the first product: this module's planning runs without a GPU
cublas = None

# cudaDataType_t (library_types.h) of each dtype this module multiplies
DATA_TYPES = {np.dtype(np.float16): 2, np.dtype(np.float32): 0, np.dtype(np.float64): 1, _dt.bfloat16.np: 14}
# cublasComputeType_t (cublas_api.h)
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
OP_N, OP_T = 0, 1  # cublasOperation_t
GEMM_DEFAULT = -1  # cublasGemmAlgo_t: cuBLAS's heuristic
WORKSPACE_BYTES = 32 * 2**20  # what cuBLAS recommends on Hopper (4 MiB suffices before it)

# alpha = 1, beta = 0 in each compute type's scalar type (host pointers: cuBLAS reads them per call),
# kept alive here and their addresses read once (numpy's `.ctypes` costs a microsecond per read)
_ALPHA_BETA = {COMPUTE_32F: (np.ones((), np.float32), np.zeros((), np.float32)),
               COMPUTE_64F: (np.ones((), np.float64), np.zeros((), np.float64))}
_ALPHA_BETA_ADDRESSES = {compute: (alpha.ctypes.data, beta.ctypes.data)
                         for compute, (alpha, beta) in _ALPHA_BETA.items()}
_PLANS_KEPT = 4096  # layouts whose plan is remembered (a training run has tens)


def available() -> bool:
    """Whether nvmath-python is installed (`pip install nvmath-python`)."""
    return importlib.util.find_spec("nvmath") is not None


# ---------------------------------------------------------------------------------------------
# planning: shapes and strides -> one GEMM call


class Operand(NamedTuple):
    """How cuBLAS reads one factor (rows r x cols c, row-major indexing) as the transpose it needs:
    `op` OP_N when its rows are contiguous (column-major, the stored matrix is the transpose),
    OP_T when its columns are; `ld` the leading dimension and `batch_stride` the distance between
    batch elements, in elements."""

    op: int
    ld: int
    batch_stride: int


class Gemm(NamedTuple):
    """One cuBLAS call for C = A @ B (C row-major, contiguous, batch x m x n), as C^T = B^T A^T: its
    first operand is B (`right`), its second A (`left`); `count` GEMMs `stride_c` apart, or one
    GEMM over all of A's rows stacked (`count` 1, `m` the total) when every batch shares B."""

    m: int
    n: int
    k: int
    count: int
    left: Operand
    right: Operand
    stride_c: int


def operand(shape: tuple[int, ...], strides: tuple[int, ...], batch: tuple[int, ...]) -> Operand | None:
    """How cuBLAS reads a factor of `shape` (..., r, c) and element `strides`, broadcast over the
    product's `batch` dims; None where no one GEMM operand describes it (then it is copied first).

        >>> operand((4, 3), (3, 1), ())  # C order: rows contiguous
        Operand(op=0, ld=3, batch_stride=0)
        >>> operand((4, 3), (1, 4), ())  # a transposed view
        Operand(op=1, ld=4, batch_stride=0)
    """
    (r, c), (sr, sc) = shape[-2:], strides[-2:]
    if (c == 1 or sc == 1) and (ld := sr if r > 1 else max(c, 1)) >= max(c, 1):
        op = OP_N
    elif (r == 1 or sr == 1) and (ld := sc if c > 1 else max(r, 1)) >= max(r, 1):
        op = OP_T
    else:
        return None
    stride = batch_stride(shape[:-2], strides[:-2], batch)
    return None if stride is None else Operand(op, ld, stride)


def batch_stride(shape: tuple[int, ...], strides: tuple[int, ...], batch: tuple[int, ...]) -> int | None:
    """The one stride between consecutive batch elements (row-major over `batch`) of an operand with
    batch dims `shape` and `strides` (right-aligned to `batch`, broadcast where its size is 1): 0
    when it is the same matrix for every element; None where no one stride steps through them."""
    pad = len(batch) - len(shape)
    shape, strides = (1,) * pad + tuple(shape), (0,) * pad + tuple(strides)
    found, inner = None, 1  # inner: how many batch elements one step along a dim skips
    for size, n, stride in zip(reversed(shape), reversed(batch), reversed(strides)):
        if n > 1:
            step = stride if size > 1 else 0
            if found is None and step % inner == 0:
                found = step // inner
            if found is None or found < 0 or step != found * inner:
                return None
        inner *= n
    return found or 0


def gemm_plan(a_shape: tuple[int, ...], a_strides: tuple[int, ...], b_shape: tuple[int, ...],
              b_strides: tuple[int, ...]) -> tuple[Gemm | None, tuple[int, ...], tuple | None, tuple | None]:
    """(the GEMM, the product's shape before 1-D operands are squeezed out, the shape to copy A to
    in C order first or None where it is read in place, the same for B) for factors of 2 or more
    dims with element strides. A copy is the factor broadcast to the product's batch dims where
    those take no one stride. The GEMM is None when the product is empty or k is 0 (zeros)."""
    (m, k), n = a_shape[-2:], b_shape[-1]
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    out_shape = batch + (m, n)
    left, right = operand(a_shape, a_strides, batch), operand(b_shape, b_strides, batch)
    copy_a = copy_b = None
    if left is None:
        copy_a = a_shape if batch_stride(a_shape[:-2], c_strides(a_shape)[:-2], batch) is not None else batch + (m, k)
        left = operand(copy_a, c_strides(copy_a), batch)
    if right is None:
        copy_b = b_shape if batch_stride(b_shape[:-2], c_strides(b_shape)[:-2], batch) is not None else batch + (k, n)
        right = operand(copy_b, c_strides(copy_b), batch)
    if m * n * k == 0:
        return None, out_shape, copy_a, copy_b
    count = math.prod(batch)
    if count > 1 and right.batch_stride == 0 and left.op == OP_N and left.batch_stride == m * left.ld:
        # every batch multiplies the same B, and A's batches are its rows stacked: one GEMM
        return Gemm(m * count, n, k, 1, left, right, 0), out_shape, copy_a, copy_b
    return Gemm(m, n, k, count, left, right, m * n), out_shape, copy_a, copy_b


# ---------------------------------------------------------------------------------------------
# running


class _Handle:
    """A thread's cuBLAS handle on one device, the workspace cuBLAS works in (kept alive with it),
    and the stream the handle was last set to."""

    __slots__ = ("handle", "workspace", "stream")

    def __init__(self, handle: int, workspace) -> None:
        self.handle, self.workspace, self.stream = handle, workspace, None


_handles = threading.local()  # per thread (a cuBLAS handle is not for two threads at once): device -> _Handle


def prepare() -> None:
    """Import nvmath and make this thread's cuBLAS handle and workspace on the current device: done
    before a capture, so that neither is made inside one (their memory would be the graph's)."""
    global cupy, cublas
    if cublas is None:
        import cupy
        from nvmath.bindings import cublas
    _handle()


def _handle() -> _Handle:
    found = getattr(_handles, "by_device", None)
    if found is None:
        found = _handles.by_device = {}
    device = cupy.cuda.runtime.getDevice()
    entry = found.get(device)
    if entry is None:
        workspace = cupy.empty(WORKSPACE_BYTES, np.uint8)
        entry = found[device] = _Handle(cublas.create(), workspace)
    return entry


class _Plan(NamedTuple):
    """What `matmul` does for one layout of its factors: `gemm_plan`'s answer for them (1-D
    factors made matrices: `vector_a`, `vector_b`)."""

    gemm: Gemm | None
    out_shape: tuple[int, ...]
    copy_a: tuple[int, ...] | None
    copy_b: tuple[int, ...] | None
    vector_a: bool
    vector_b: bool


_plans: dict[tuple, _Plan] = {}  # (shapes, strides, dtype) -> its plan


def _plan(a, b) -> _Plan:
    key = (a.shape, a.strides, b.shape, b.strides, a.dtype)
    found = _plans.get(key)
    if found is None:
        vector_a, vector_b = a.ndim == 1, b.ndim == 1
        if vector_a:
            a = a[None, :]
        if vector_b:
            b = b[:, None]
        size = a.dtype.itemsize
        found = _Plan(*gemm_plan(a.shape, _elements(a.strides, size), b.shape, _elements(b.strides, size)),
                      vector_a, vector_b)
        if len(_plans) >= _PLANS_KEPT:
            _plans.clear()
        _plans[key] = found
    return found


def matmul(a, b, allow_tf32: bool, out=None):
    """a @ b for CuPy arrays (numpy's matmul rules) through cuBLAS on the current stream, or None
    where the dtypes are not one of float16, bfloat16, float32 and float64. `out`: a C-contiguous
    array to write it into (a compiled program's planned buffer), used where it has the product's
    shape and dtype and neither factor is 1-D (else a new array)."""
    dtype = a.dtype
    if b.dtype != dtype or dtype not in DATA_TYPES or a.ndim == 0 or b.ndim == 0:
        return None
    if cublas is None:
        prepare()
    plan = _plan(a, b)
    if plan.vector_a:
        a = a[None, :]
    if plan.vector_b:
        b = b[:, None]
    if plan.copy_a is not None:
        a = cupy.ascontiguousarray(cupy.broadcast_to(a, plan.copy_a))
    if plan.copy_b is not None:
        b = cupy.ascontiguousarray(cupy.broadcast_to(b, plan.copy_b))
    if (out is None or out.shape != plan.out_shape or out.dtype != dtype or not out.flags.c_contiguous
            or plan.vector_a or plan.vector_b):
        out = cupy.empty(plan.out_shape, dtype)
    if plan.gemm is None:
        out.fill(0)
    else:
        _run(plan.gemm, a, b, out, dtype, allow_tf32)
    if plan.vector_a:
        out = out[..., 0, :]
    if plan.vector_b:
        out = out[..., 0]
    return out


def _elements(strides: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    # a byte stride that is no multiple of the item size reads as a layout no GEMM takes (copied)
    return tuple(s // itemsize if s % itemsize == 0 else -1 for s in strides)


def _run(gemm: Gemm, a, b, out, dtype: np.dtype, allow_tf32: bool) -> None:
    if dtype == np.float64:
        compute = COMPUTE_64F
    else:  # half types accumulate in float32, as PyTorch's do; float32 may use TF32 tensor cores
        compute = COMPUTE_32F_FAST_TF32 if dtype == np.float32 and allow_tf32 else COMPUTE_32F
    alpha, beta = _ALPHA_BETA_ADDRESSES[COMPUTE_64F if compute == COMPUTE_64F else COMPUTE_32F]
    entry = _handle()
    stream = cupy.cuda.get_current_stream().ptr
    if stream != entry.stream:
        cublas.set_stream(entry.handle, stream)
        # setting the stream puts cuBLAS back on its own workspace pool: point it at ours again
        cublas.set_workspace(entry.handle, entry.workspace.data.ptr, WORKSPACE_BYTES)
        entry.stream = stream
    kind = DATA_TYPES[dtype]
    left, right = gemm.left, gemm.right
    if gemm.count == 1:
        cublas.gemm_ex(entry.handle, right.op, left.op, gemm.n, gemm.m, gemm.k, alpha,
                       b.data.ptr, kind, right.ld, a.data.ptr, kind, left.ld, beta,
                       out.data.ptr, kind, gemm.n, compute, GEMM_DEFAULT)
    else:
        cublas.gemm_strided_batched_ex(entry.handle, right.op, left.op, gemm.n, gemm.m, gemm.k, alpha,
                                       b.data.ptr, kind, right.ld, right.batch_stride, a.data.ptr, kind, left.ld,
                                       left.batch_stride, beta, out.data.ptr, kind, gemm.n,
                                       gemm.stride_c, gemm.count, compute, GEMM_DEFAULT)
