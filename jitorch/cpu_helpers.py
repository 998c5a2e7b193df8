"""Fixed CPU helper kernels that numpy lacks. The Numba ones load lazily (first use compiles them,
about a second, then they come from Numba's disk cache)."""

from __future__ import annotations

import math

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (float16/bfloat16 are computed in float32)."""
    from ._numba_kernels import erf as erf_kernel

    if x.dtype in (np.float32, np.float64):
        return erf_kernel(x)
    return erf_kernel(x.astype(np.float32)).astype(x.dtype)


# Sums over the leading or the trailing dims of a contiguous float array as a product with a ones
# vector: BLAS's GEMV is vectorized and multi-threaded, while numpy adds a leading axis one row at
# a time and a short trailing axis one row per inner-loop call (`python bench/eager.py` times both
# on a training step's bias-gradient and softmax shapes).
BLAS_SUM_MIN_ELEMENTS = 16384
_ones: dict[tuple[np.dtype, int], np.ndarray] = {}


def _ones_vector(dtype: np.dtype, n: int) -> np.ndarray:
    key = (dtype, n)
    if key not in _ones:
        _ones[key] = np.ones(n, dtype)
    return _ones[key]


def _as_rows(x: np.ndarray, dims: tuple[int, ...]) -> tuple[np.ndarray, bool] | None:
    """A C-contiguous float32/float64 `x` as a 2-D (rows, cols) view, and whether `dims` are its
    trailing dims (reduce each row) rather than its leading ones (reduce each column); None for
    any other array or set of dims."""
    if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous or not dims:
        return None
    count, dims = len(dims), tuple(sorted(dims))
    if dims == tuple(range(x.ndim - count, x.ndim)):
        return x.reshape(-1, math.prod(x.shape[x.ndim - count:])), True
    if dims == tuple(range(count)):
        return x.reshape(math.prod(x.shape[:count]), -1), False
    return None


def sum_by_blas(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
    """The sums of `x` over `dims`, flat, through BLAS when `dims` are the leading or the trailing
    dims of a C-contiguous float32/float64 array of some size; None otherwise (numpy then sums)."""
    found = _as_rows(x, dims) if x.size >= BLAS_SUM_MIN_ELEMENTS else None
    if found is None:
        return None
    rows, trailing = found
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN without a warning, as in PyTorch
        if trailing:
            return rows @ _ones_vector(x.dtype, rows.shape[1])
        return _ones_vector(x.dtype, rows.shape[0]) @ rows


def amax_rows(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
    """The maxima of `x` over `dims`, flat, by a Numba row kernel when `dims` are the trailing dims
    of a contiguous float array of some size (softmax's and cross_entropy's max); None otherwise."""
    found = _as_rows(x, dims) if x.size >= 4096 else None
    if found is None or not found[1]:
        return None
    from ._numba_kernels import row_max

    rows = found[0]
    out = np.empty(rows.shape[0], x.dtype)
    row_max(rows, out)
    return out


def add_rows_at(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> bool:
    """`np.add.at(out, index, values)` for integer `index` along dim 0 and `values` of exactly
    index.shape + out.shape[1:], by a Numba loop; returns False (nothing done) for anything else,
    including out-of-range indices, which np.add.at then reports."""
    if (out.dtype not in (np.float32, np.float64) or values.dtype != out.dtype or index.dtype.kind not in "iu"
            or out.ndim == 0 or values.shape != index.shape + out.shape[1:] or not out.flags.c_contiguous
            or index.size < 64):
        return False
    rows = out.shape[0]
    flat = index.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -rows or flat.max() >= rows):
        return False
    from ._numba_kernels import scatter_add_rows

    scatter_add_rows(out.reshape(rows, -1), np.where(flat < 0, flat + rows, flat),
                     np.ascontiguousarray(values).reshape(flat.size, -1))
    return True


# unsigned views of each element size: kernels that only move data serve every dtype through them
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _flat(a: np.ndarray, shape: tuple, u) -> np.ndarray | None:
    """`a` as a flat unsigned view if it has the full shape (a strided one is copied first: a copy
    costs less than numpy's np.where on an unpredictable mask)."""
    if a.shape != shape:
        return None
    return np.ascontiguousarray(a).reshape(-1).view(u)


def where(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise `x if cond else y` with broadcasting (same dtype for x and y)."""
    shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
    u = UINT_OF_SIZE[x.dtype.itemsize]
    c = _flat(cond, shape, np.uint8)
    if c is None or c.size < 4096:
        return np.where(cond, x, y)  # small or oddly strided: numpy is fine
    from . import _numba_kernels as k

    out = np.empty(shape, dtype=x.dtype)
    flat_out = out.reshape(-1).view(u)
    a, b = _flat(x, shape, u), _flat(y, shape, u)
    if a is not None and b is not None:
        k.select(c, a, b, flat_out)
    elif a is not None and y.size == 1:
        k.select_scalar_false(c, a, y.reshape(()).view(u)[()], flat_out)
    elif b is not None and x.size == 1:
        k.select_scalar_true(c, x.reshape(()).view(u)[()], b, flat_out)
    else:
        return np.where(cond, x, y)
    return out


def relu_backward(g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`g` where relu's output is not <= 0, else 0 (PyTorch's test: a NaN output passes `g`)."""
    if g.shape == out.shape and g.dtype == out.dtype and g.dtype in (np.float32, np.float64) and g.size >= 4096:
        from ._numba_kernels import relu_grad

        result = np.empty(g.shape, dtype=g.dtype)
        relu_grad(np.ascontiguousarray(g).reshape(-1), np.ascontiguousarray(out).reshape(-1), result.reshape(-1))
        return result
    return where(out <= 0, np.zeros((), g.dtype), g)
