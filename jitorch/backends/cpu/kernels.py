"""The CPU backend's eager kernels: the shared numpy kernels (`make_kernels(numpy)`, in
`jitorch.backends.array_kernels`) with BLAS through numpy, and, where numpy is slow, the fixed
helper loops of `helpers.py` (where's select, relu's backward, row max, sums through BLAS, rows
added at indices, erf, im2col and col2im), each falling back to the shared kernel for the inputs it
does not take."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ...primitives import conv_out_size, reduced_shape
from .. import array_kernels as shared
from .helpers import UINT_OF_SIZE, add_rows_at, amax_rows, col2im, erf, im2col, relu, relu_backward, sum_by_blas, where


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


def _unfold(x, kernel, dilation, padding, stride):
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, padding, stride
    if n * c * (h + 2 * ph) * (w + 2 * pw) < 4096:  # the padded image is small: a strided copy is fine
        return shared.unfold(np, x, kernel, dilation, padding, stride)
    oh, ow = conv_out_size(h, kh, sh, ph, dilation[0]), conv_out_size(w, kw, sw, pw, dilation[1])
    return _unfold_into(np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype), x, kernel, dilation, padding, stride)


def _unfold_into(out, x, kernel, dilation, padding, stride):
    """unfold written into `out` (C-contiguous, unfold's output shape and dtype), by the im2col loop."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    oh, ow = conv_out_size(x.shape[2], kh, sh, ph, dh), conv_out_size(x.shape[3], kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    u = UINT_OF_SIZE[xp.dtype.itemsize]  # pure data movement: one kernel for every dtype
    im2col(xp.view(u), kh, kw, dh, dw, sh, sw, oh, ow, out.view(u))
    return out


def _matmul_into(out, a, b):
    """a @ b written into `out` by BLAS; half types go the way of the shared kernel (float32 math)."""
    if a.dtype != out.dtype or b.dtype != out.dtype or out.dtype not in (np.float32, np.float64):
        return SHARED["matmul"](a, b)
    return np.matmul(a, b, out=out)


def _fold(cols, output_size, kernel, dilation, padding, stride):
    if cols.dtype not in (np.float32, np.float64):
        return shared.fold(np, cols, output_size, kernel, dilation, padding, stride)
    (h, w), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = output_size, kernel, dilation, padding, stride
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    col2im(np.ascontiguousarray(cols), kh, kw, dh, dw, sh, sw, oh, ow, out)
    return out[:, :, ph: ph + h, pw: pw + w]


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
KERNELS_INTO: dict[str, Callable] = {"matmul": _matmul_into, "unfold": _unfold_into}
