"""The CPU backend's eager kernels: one numpy function per primitive (numpy arrays and the node's
params in, one numpy array out), with BLAS through numpy and the fixed helper loops numpy does
badly (`helpers.py`: where's select, relu's backward, row max, rows added at indices, erf,
im2col and col2im)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ... import dtypes as _dt
from ... import philox
from ...primitives import conv_out_size, numpy_key, reduced_shape, sum_dtype
from .helpers import UINT_OF_SIZE, add_rows_at, amax_rows, col2im, erf, im2col, relu_backward, sum_by_blas, where

KERNELS: dict[str, Callable] = {}


def _errstate(fn):
    def impl(*arrays):
        with np.errstate(all="ignore"):
            return fn(*arrays)

    return impl


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _rsqrt(x):
    return 1 / np.sqrt(x)


KERNELS["neg"] = np.negative
KERNELS["exp"] = _errstate(np.exp)
KERNELS["log"] = _errstate(np.log)
KERNELS["log1p"] = _errstate(np.log1p)
KERNELS["expm1"] = _errstate(np.expm1)
KERNELS["sqrt"] = _errstate(np.sqrt)
KERNELS["rsqrt"] = _errstate(_rsqrt)
KERNELS["sin"] = np.sin
KERNELS["cos"] = np.cos
KERNELS["tanh"] = np.tanh
KERNELS["sigmoid"] = _errstate(_sigmoid)
KERNELS["abs"] = np.abs
KERNELS["sign"] = np.sign
KERNELS["floor"] = np.floor
KERNELS["ceil"] = np.ceil
KERNELS["round"] = np.round
KERNELS["trunc"] = np.trunc
KERNELS["reciprocal"] = _errstate(np.reciprocal)
KERNELS["erf"] = erf
KERNELS["logical_not"] = np.logical_not
KERNELS["isnan"] = np.isnan
KERNELS["isinf"] = np.isinf


def _relu_impl(x):
    return np.maximum(x, 0)  # NaN stays NaN, as in PyTorch


KERNELS["relu"] = _relu_impl
KERNELS["relu_backward"] = relu_backward


def _cast_impl(x, dtype):
    return x.astype(dtype.np, copy=False)

KERNELS["cast"] = _cast_impl
KERNELS["add"] = np.add
KERNELS["sub"] = np.subtract
KERNELS["mul"] = np.multiply
KERNELS["div"] = _errstate(np.true_divide)
KERNELS["pow"] = _errstate(np.power)
KERNELS["maximum"] = np.maximum
KERNELS["minimum"] = np.minimum
KERNELS["remainder"] = _errstate(np.remainder)
KERNELS["floor_divide"] = _errstate(np.floor_divide)
for _name, _fn in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal), ("logical_and", np.logical_and),
                   ("logical_or", np.logical_or), ("logical_xor", np.logical_xor)]:
    KERNELS[_name] = _fn


KERNELS["bitwise_and"] = np.bitwise_and
KERNELS["bitwise_or"] = np.bitwise_or
KERNELS["bitwise_xor"] = np.bitwise_xor
KERNELS["bitwise_not"] = np.invert
KERNELS["where"] = where


def _accumulating(fn):
    def impl(x, dims, keepdim):
        if x.dtype.kind == "f" and x.dtype.itemsize < 4 or x.dtype == _dt.bfloat16.np:
            # PyTorch accumulates half types in float32
            return fn(x.astype(np.float32), axis=dims, keepdims=keepdim).astype(x.dtype)
        return np.asarray(fn(x, axis=dims, keepdims=keepdim))

    return impl


def _np_sum(x, axis, keepdims):
    out = sum_by_blas(x, axis)
    if out is not None:
        return out.reshape(reduced_shape(x.shape, axis, keepdims))
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=sum_dtype(x.dtype))


def _np_prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=sum_dtype(x.dtype))

KERNELS["sum"] = _accumulating(_np_sum)
KERNELS["prod"] = _accumulating(_np_prod)


def _np_amax(x, axis, keepdims):
    out = amax_rows(x, axis)
    if out is not None:
        return out.reshape(reduced_shape(x.shape, axis, keepdims))
    if x.dtype == np.bool_:  # any(): an empty reduction is False (np.amax has no identity)
        return np.any(x, axis=axis, keepdims=keepdims)
    return np.amax(x, axis=axis, keepdims=keepdims)


def _np_amin(x, axis, keepdims):
    if x.dtype == np.bool_:  # all(): an empty reduction is True
        return np.all(x, axis=axis, keepdims=keepdims)
    return np.amin(x, axis=axis, keepdims=keepdims)

KERNELS["amax"] = _accumulating(_np_amax)
KERNELS["amin"] = _accumulating(_np_amin)


def _arg_impl(fn):
    def impl(x, dim, keepdim):
        if dim is None:
            out = fn(x.reshape(-1))
            return np.asarray(out, dtype=np.int64).reshape((1,) * x.ndim if keepdim else ())
        return fn(x, axis=dim, keepdims=keepdim).astype(np.int64, copy=False)

    return impl

KERNELS["argmax"] = _arg_impl(np.argmax)
KERNELS["argmin"] = _arg_impl(np.argmin)


def _cumsum_impl(x, dim):
    # reshape: numpy flattens a 0-d input to shape (1,); PyTorch keeps it 0-d
    return np.cumsum(x, axis=dim, dtype=sum_dtype(x.dtype)).reshape(x.shape)

KERNELS["cumsum"] = _cumsum_impl


def _reshape_impl(x, shape):
    return np.reshape(x, shape)

KERNELS["reshape"] = _reshape_impl
KERNELS["permute"] = lambda x, dims: np.transpose(x, dims)
KERNELS["expand"] = np.broadcast_to
KERNELS["flip"] = lambda x, dims: np.flip(x, dims).copy()
KERNELS["copy"] = lambda x: np.array(x, copy=True, order="C")


def _pad_impl(x, pads, value):
    return np.pad(x, pads, mode="constant", constant_values=value)

KERNELS["pad"] = _pad_impl


def _getitem_impl(x, *tensors, key):
    index = numpy_key(key, tensors)
    if not tensors and Ellipsis not in key:
        index += (Ellipsis,)  # all ints would give numpy a scalar copy; PyTorch's x[1, 2] is a 0-d view
    return x[index]

KERNELS["getitem"] = _getitem_impl


def _index_put_impl(x, v, *tensors, key, accumulate):
    out = np.array(x, copy=True)
    idx = numpy_key(key, tensors)
    if accumulate and any(type(i) is np.ndarray for i in idx):
        if not (len(idx) == 1 and type(idx[0]) is np.ndarray and add_rows_at(out, idx[0], v)):
            np.add.at(out, idx, v)  # repeated indices must all add up
    elif accumulate:
        out[idx] += v
    else:
        out[idx] = v
    return out

KERNELS["index_put"] = _index_put_impl


def _cat_impl(*xs, dim):
    return np.concatenate(xs, axis=dim)

KERNELS["cat"] = _cat_impl


def _matmul_impl(a, b):
    if a.dtype.itemsize < 4 and a.dtype.kind == "f" or a.dtype == _dt.bfloat16.np:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)

KERNELS["matmul"] = _matmul_impl


def _einsum_impl(*xs, equation):
    return np.einsum(equation, *xs, optimize=len(xs) > 2)

KERNELS["einsum"] = _einsum_impl


def _gather_impl(x, index, dim):
    return np.take_along_axis(x, index, axis=dim)


def _grid(index, dim):
    """Full index arrays for a scatter along `dim` (numpy's advanced-indexing form)."""
    idx = list(np.indices(index.shape, sparse=True))
    idx[dim] = index
    return tuple(idx)


def _scatter_add_impl(x, index, src, dim):
    out = np.array(x, copy=True)
    src = src[tuple(slice(0, s) for s in index.shape)]
    np.add.at(out, _grid(index, dim), src)
    return out


def _scatter_impl(x, index, src, dim):
    out = np.array(x, copy=True)
    src = src[tuple(slice(0, s) for s in index.shape)]
    out[_grid(index, dim)] = src
    return out

KERNELS["gather"] = _gather_impl
KERNELS["scatter_add"] = _scatter_add_impl
KERNELS["scatter"] = _scatter_impl


def _argsort_impl(x, dim, descending):
    if descending:
        # a stable descending order: sort the negated keys (bool/ints via their order)
        keys = -x.astype(np.float64) if x.dtype.kind == "b" else -x
        return np.argsort(keys, axis=dim, kind="stable").astype(np.int64)
    return np.argsort(x, axis=dim, kind="stable").astype(np.int64)

KERNELS["argsort"] = _argsort_impl


def _unfold_impl(x, kernel, dilation, padding, stride):
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    if xp.size >= 4096:
        u = UINT_OF_SIZE[xp.dtype.itemsize]  # pure data movement: one kernel for every dtype
        out = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
        im2col(xp.view(u), kh, kw, dh, dw, sh, sw, oh, ow, out.view(u))
        return out
    sn, sc, sy, sx = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, (n, c, kh, kw, oh, ow), (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw), writeable=False
    )
    return view.reshape(n, c * kh * kw, oh * ow)


def _fold_impl(cols, output_size, kernel, dilation, padding, stride):
    (h, w), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = output_size, kernel, dilation, padding, stride
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    if cols.dtype in (np.float32, np.float64):
        col2im(np.ascontiguousarray(cols), kh, kw, dh, dw, sh, sw, oh, ow, out)
        return out[:, :, ph: ph + h, pw: pw + w]
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw] += (
                cols[:, :, i, j]
            )
    return out[:, :, ph: ph + h, pw: pw + w]

KERNELS["unfold"] = _unfold_impl
KERNELS["fold"] = _fold_impl


def _random_impl(seed, counter, *, shape, dtype, dist, offset):
    """Philox draws for counters counter + offset onwards (one per element), keyed by the seed."""
    first = int(counter) + offset
    counters = np.arange(first, first + math.prod(shape), dtype=np.int64)
    return philox.draw(dist, int(seed), counters, dtype.np).reshape(shape)


KERNELS["random"] = _random_impl
