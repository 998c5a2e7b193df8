"""The CUDA backend's eager kernels: the shared kernels of `jitorch.backends.array_kernels` over
CuPy, with CuPy's own where it differs from numpy: erf from cupyx; matmul and einsum at the float32
precision `set_float32_matmul_precision` asks for; attention and its backward as flash-attention
Triton kernels (`attention.py`); adds at repeated indices and cumulative sums in
a wider type where CuPy has no kernel for the dtype (bfloat16, bool).

Every kernel takes a numpy input (a CPU scalar joining a GPU op, a compiled program's constant) as
a device array, and answers in the dtype the primitive's rule gives: CuPy computes most bfloat16
ufuncs in float32 and answers in float32, so those results are rounded to bfloat16 once, as
ml_dtypes does on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import cupyx.scipy.special
import numpy as np
from cupy._core import _routines_linalg
from cupy_backends.cuda.libs import cublas

from ... import dtypes as _dt
from ...primitives import PRIMS, reduced_shape
from .. import array_kernels as shared
from .. import get_float32_matmul_precision
from . import attention, blas
from .blas import matmul as nvmath_matmul
from .gpu_check import cupy
from .graphs import capturing
from .scalars import device_array

_BFLOAT16 = _dt.bfloat16.np
_FLOAT32 = np.dtype(np.float32)
# cuBLAS's cublasMath_t (cublas_api.h), which CuPy does not name: TF32 tensor cores for float32
CUBLAS_TF32_TENSOR_OP_MATH = 3
# the dtypes cupy.add.at has atomic adds for
_ADD_AT_DTYPES = frozenset(map(np.dtype, (np.int32, np.int64, np.uint32, np.uint64, np.float16, np.float32,
                                          np.float64)))


def _erf(x):
    """Elementwise error function (other than float32/float64 computed in float32, as on the CPU)."""
    if x.dtype not in (np.float32, np.float64):
        return cupyx.scipy.special.erf(x.astype(np.float32)).astype(x.dtype)
    return cupyx.scipy.special.erf(x)


def use_tf32(allow: bool) -> None:
    """Let cuBLAS round float32 inputs to TF32 or not, for the products that follow on this thread:
    CuPy's compute type for float32 decides its 2-D products (cublasGemmEx), the cuBLAS handle's
    math mode its batched ones."""
    _routines_linalg.set_compute_type(
        np.float32, _routines_linalg.COMPUTE_TYPE_TF32 if allow else _routines_linalg.COMPUTE_TYPE_DEFAULT)
    cublas.setMathMode(cupy.cuda.device.get_cublas_handle(),
                       CUBLAS_TF32_TENSOR_OP_MATH if allow else cublas.CUBLAS_DEFAULT_MATH)


def _at_float32_matmul_precision(kernel: Callable) -> Callable:
    """`kernel` (a product through cuBLAS) at the current float32 matmul precision. Set on every call:
    the setting is CuPy's and the handle's, shared with anything else that calls cuBLAS."""

    def run(*arrays, **params):
        use_tf32(get_float32_matmul_precision() != "highest")
        return kernel(*arrays, **params)

    return run


def _add_at(out, idx, values) -> None:
    """cupy.add.at, through a wider copy for the dtypes it has no atomic add for (bfloat16 adds in
    float32, bool in int64: True wherever anything was added to it, as numpy's add.at)."""
    if out.dtype in _ADD_AT_DTYPES:
        cupy.add.at(out, idx, values)
        return
    wide = np.int64 if out.dtype.kind in "biu" else np.float32  # ml_dtypes' bfloat16 is of kind "V"
    acc = out.astype(wide)
    cupy.add.at(acc, idx, cupy.asarray(values).astype(wide, copy=False))
    cupy.copyto(out, acc, casting="unsafe")


def _cumsum(x, dim):
    if x.dtype == _BFLOAT16:  # CuPy's scan has no bfloat16 addition
        return shared.cumsum(cupy, x.astype(np.float32), dim).astype(_BFLOAT16)
    return shared.cumsum(cupy, x, dim)


def _on_device(name: str, kernel: Callable) -> Callable:
    """`kernel` with its numpy inputs copied to the GPU first (CuPy refuses numpy arrays; see
    `scalars.py`), and a float32 answer to bfloat16 inputs rounded to the dtype primitive `name` makes."""
    infer = PRIMS[name].infer

    def run(*arrays, **params):  # (loops, not any() over generators: this runs for every op)
        moved = None
        for a in arrays:
            if type(a) is np.ndarray:
                moved = [device_array(a) if type(a) is np.ndarray else a for a in arrays]
                arrays = moved
                break
        out = kernel(*arrays, **params)
        if moved is not None and any(out is a for a in moved):
            out = out.copy()  # never hand out the cached device copy of a CPU scalar
        if out.dtype is _FLOAT32:
            for a in arrays:
                if getattr(a, "dtype", None) == _BFLOAT16:
                    return out.astype(infer(*arrays, **params)[1], copy=False)
        return out

    return run


def _matmul(a, b):
    """Products on cuBLAS, through nvmath-python's bindings where it is installed (`blas.py`: a few
    microseconds of Python per call where CuPy's matmul spends tens, and the only way to cuBLAS
    while a CUDA graph is captured), else CuPy's; half types in their own type (cuBLAS accumulates
    them in float32, as PyTorch does), which keeps bfloat16 on the tensor cores instead of the
    shared kernel's float32 copies."""
    allow_tf32 = get_float32_matmul_precision() != "highest"
    if _NVMATH:
        found = nvmath_matmul(a, b, allow_tf32)
        if found is not None:
            return found
    use_tf32(allow_tf32)
    if a.dtype == b.dtype and shared.is_half(a.dtype):
        try:
            return cupy.matmul(a, b)
        except (TypeError, NotImplementedError, ValueError):  # a CuPy without that dtype's GEMM
            pass
    return SHARED["matmul"](a, b)


def _matmul_into(out, a, b):
    """a @ b written into `out` (a compiled program's planned buffer) where cuBLAS takes it through
    nvmath-python (`blas.matmul`); otherwise, and for a product of another shape or dtype, the
    product in an array of its own."""
    if _NVMATH:
        found = nvmath_matmul(a, b, get_float32_matmul_precision() != "highest", out)
        if found is not None:
            return found
    return KERNELS["matmul"](a, b)


_NVMATH = blas.available()
_ones: dict[tuple, object] = {}  # (device, dtype, length) -> a vector of ones


def _ones_vector(dtype: np.dtype, n: int):
    """A cached vector of n ones, or None while a CUDA graph is captured and it was never made (made
    inside the capture, its fill would be replayed and its memory be the graph's)."""
    key = (cupy.cuda.runtime.getDevice(), dtype, n)
    found = _ones.get(key)
    if found is None and not capturing():
        found = _ones[key] = cupy.ones(n, dtype)
    return found


def _sum(x, dims, keepdim):
    """Sums over the leading or the trailing dims of a contiguous array (a bias gradient, a row's
    total) as one cuBLAS product with a vector of ones, at full float32 precision whatever the
    matmul precision (a few microseconds of host time, where CuPy's reduction spends tens, and on
    the device a fraction of CuPy's time for half types, which it first widens); any other sum as
    the shared kernel's. Half types accumulate in float32 and round once, as PyTorch's sum. Inside a
    CUDA graph's capture it takes the ones the uncaptured calls before it made."""
    if _NVMATH and x.size and x.dtype in blas.DATA_TYPES:
        found = shared.as_rows(x, dims)
        if found is not None and min(found[0].shape) > 1 and max(found[0].shape) < 2**31:  # (cuBLAS's int sizes)
            rows, trailing = found
            ones = _ones_vector(x.dtype, rows.shape[1] if trailing else rows.shape[0])
            if ones is not None:
                out = nvmath_matmul(rows, ones, False) if trailing else nvmath_matmul(ones, rows, False)
                return out.reshape(reduced_shape(x.shape, dims, keepdim))
    return SHARED["sum"](x, dims, keepdim)


SHARED: dict[str, Callable] = shared.make_kernels(cupy)
OVERRIDES: dict[str, Callable] = {
    "erf": _erf,
    "matmul": _matmul,
    "sum": _sum,
    "einsum": _at_float32_matmul_precision(SHARED["einsum"]),
    "index_put": partial(shared.index_put, cupy, _add_at),
    "scatter_add": partial(shared.scatter_add, cupy, _add_at),
    "cumsum": _cumsum,
    "attention": attention.attention,
    "attention_backward": attention.attention_backward,
}
KERNELS: dict[str, Callable] = {name: _on_device(name, kernel) for name, kernel in (SHARED | OVERRIDES).items()}
# kernels that write their result into a buffer the caller gives (a compiled program's memory plan)
KERNELS_INTO: dict[str, Callable] = {"matmul": _matmul_into}


def _through_triton(name: str, fallback: Callable) -> Callable:
    """Elementwise op `name` as a one-node Triton kernel where its operands allow
    (`eager_pointwise.py`), else `fallback`; Triton is imported on the first call, and where it is
    missing `fallback` serves for good."""

    def first_call(*arrays, **params):
        try:
            from .eager_pointwise import eager_pointwise
        except ImportError:
            run = fallback
        else:
            run = eager_pointwise(name, fallback)
        KERNELS[name] = run  # (dispatch looks kernels up per call; plans made already keep this one)
        return run(*arrays, **params)

    return first_call


def _use_triton_for_elementwise_ops() -> None:
    from .eager_pointwise import EXACT_OPS

    for name in EXACT_OPS & KERNELS.keys():
        KERNELS[name] = _through_triton(name, KERNELS[name])


_use_triton_for_elementwise_ops()
