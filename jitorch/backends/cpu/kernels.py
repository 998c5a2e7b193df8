"""The CPU backend's eager kernels: the shared numpy kernels (`make_kernels(numpy)`, in
`jitorch.backends.array_kernels`) with BLAS through numpy, and, where numpy is slow, the fixed
helper loops of `helpers.py` (where's select, relu's backward, row max, sums through BLAS, rows
added at indices, erf, im2col and col2im), each falling back to the shared kernel for the inputs it
does not take."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ...ir.layouts import c_strides
from ...primitives import conv_out_size, reduced_shape
from .. import array_kernels as shared
from .helpers import (
    UINT_OF_SIZE,
    add_rows_at,
    amax_rows,
    col2im,
    erf,
    im2col,
    relu,
    relu_backward,
    sum_by_blas,
    where,
)


def _sum(x, axis, keepdims):
    out = sum_by_blas(x, axis)
    if out is not None:
        return out.reshape(reduced_shape(x.shape, axis, keepdims))
    return shared.sum_(np, x, axis, keepdims)


def _amax(x, axis, keepdims):
    out = amax_rows(x, axis)
    if out is not None:
        return out.reshape(reduced_shape(x.shape, axis, keepdims))
    return shared.amax(np, x, axis, keepdims)


def _add_at(out, idx, v):
    """np.add.at, by a loop for rows added at indices along dim 0 (an embedding's gradient)."""
    if not (len(idx) == 1 and type(idx[0]) is np.ndarray and add_rows_at(out, idx[0], v)):
        np.add.at(out, idx, v)


def _unfold_shape(x, kernel, dilation, padding, stride) -> tuple[int, int, int]:
    n, c, h, w = x.shape
    oh = conv_out_size(h, kernel[0], stride[0], padding[0], dilation[0])
    return n, c * kernel[0] * kernel[1], oh * conv_out_size(w, kernel[1], stride[1], padding[1], dilation[1])


def _unfold(x, kernel, dilation, padding, stride):
    return _unfold_into(np.empty(_unfold_shape(x, kernel, dilation, padding, stride), dtype=x.dtype), x, kernel,
                        dilation, padding, stride)


def _unfold_into(out, x, kernel, dilation, padding, stride):
    """unfold written into the memory of `out` (a C-contiguous buffer of unfold's size and dtype) by
    the im2col loop, laid out as (C*kh*kw, N, L): the result is a (N, C*kh*kw, L) view of it whose
    permute to (C*kh*kw, N, L), and so the (C*kh*kw, N*L) matrix of a convolution's one GEMM, is
    free. The GEMM's weight gradient reads it transposed, and col2im takes its input gradient in
    the same layout (`_fold_into`)."""
    n, k, length = _unfold_shape(x, kernel, dilation, padding, stride)
    cols = out.reshape(k, n, length).transpose(_UNFOLD_ORDER)
    u = UINT_OF_SIZE[x.dtype.itemsize]  # pure data movement: one kernel for every dtype
    im2col(np.ascontiguousarray(x).view(u), kernel, dilation, padding, stride, cols.view(u))
    return cols


_UNFOLD_ORDER = (1, 0, 2)  # unfold's (N, C*kh*kw, L) dims in its buffer's (C*kh*kw, N, L)


def unfold_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The byte strides of the (N, C*kh*kw, L) array of `shape` that `_unfold_into` answers."""
    buffer = c_strides(tuple(shape[d] for d in _UNFOLD_ORDER), itemsize)
    return tuple(buffer[_UNFOLD_ORDER.index(d)] for d in range(3))


def _matmul_into(out, a, b):
    """a @ b written into `out` by BLAS; half types go the way of the shared kernel (float32 math)."""
    if a.dtype != out.dtype or b.dtype != out.dtype or out.dtype not in (np.float32, np.float64):
        return SHARED["matmul"](a, b)
    return np.matmul(a, b, out=out)


def _fold(cols, output_size, kernel, dilation, padding, stride):
    out = np.empty((cols.shape[0], cols.shape[1] // (kernel[0] * kernel[1]), *output_size), dtype=cols.dtype)
    return _fold_into(out, cols, output_size, kernel, dilation, padding, stride)


def _fold_into(out, cols, output_size, kernel, dilation, padding, stride):
    """fold written into `out` (C-contiguous, fold's output shape and dtype) by the col2im loop,
    which reads the columns in whatever layout they come (`_unfold_into`'s, from a convolution's
    input gradient GEMM), as long as their last axis is contiguous."""
    if cols.dtype not in (np.float32, np.float64):
        return shared.fold(np, cols, output_size, kernel, dilation, padding, stride)
    if cols.shape[2] > 1 and cols.strides[2] != cols.itemsize:
        cols = np.ascontiguousarray(cols)
    col2im(cols, kernel, dilation, padding, stride, out)
    return out


SHARED: dict[str, Callable] = shared.make_kernels(np)
OVERRIDES: dict[str, Callable] = {
    "erf": erf,
    "relu": relu,
    "relu_backward": relu_backward,
    "where": where,
    "sum": shared.in_float32_for_half(np, _sum),
    "amax": shared.in_float32_for_half(np, _amax),
    "index_put": partial(shared.index_put, np, _add_at),
    "unfold": _unfold,
    "fold": _fold,
}
KERNELS: dict[str, Callable] = SHARED | OVERRIDES
# kernels that write their result into a buffer the caller gives (a compiled program's memory plan)
KERNELS_INTO: dict[str, Callable] = {"matmul": _matmul_into, "unfold": _unfold_into, "fold": _fold_into}
