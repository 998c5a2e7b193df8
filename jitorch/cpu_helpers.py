"""Fixed CPU helper kernels that numpy lacks. The Numba ones load lazily (first use compiles them,
about a second, then they come from Numba's disk cache)."""

from __future__ import annotations

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (float16/bfloat16 are computed in float32)."""
    from ._numba_kernels import erf as erf_kernel

    if x.dtype in (np.float32, np.float64):
        return erf_kernel(x)
    return erf_kernel(x.astype(np.float32)).astype(x.dtype)


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
