"""The eager kernels, defined once over an array namespace: `make_kernels(numpy)` for the CPU,
`make_kernels(cupy)` for the GPU.

Each kernel takes the backend's arrays and the node's params (as keywords, named as in the
primitive table) and returns one array. Everything here is written against `xp`, where numpy and
CuPy agree: ufuncs, reductions, reshape/transpose/broadcast_to, pad, concatenate,
take_along_axis, einsum, cumsum, stable argsort, matmul and the Philox random numbers. numpy has
no erf, so each backend brings its own (the CPU an LLVM loop, the GPU CuPy's); what else a backend
does better or differently it overrides in its own `kernels.py` (the CPU its LLVM helper loops; the
GPU the float32 matmul precision, and wider types where CuPy has no bfloat16 kernel), starting from
these.

    >>> import numpy as np
    >>> make_kernels(np)["add"](np.ones(2), np.ones(2))
    array([2., 2.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np

from .. import dtypes as _dt
from .. import philox
from ..primitives import LinAlgError, attention_gradients, conv_out_size, numpy_key, sum_dtype

_BFLOAT16 = _dt.bfloat16.np


def is_half(dtype: np.dtype) -> bool:
    """float16 or bfloat16: types PyTorch accumulates and multiplies in float32."""
    return dtype.kind == "f" and dtype.itemsize < 4 or dtype == _BFLOAT16


def ignoring_fp_errors(xp, fn: Callable) -> Callable:
    """`fn` with numpy's floating-point warnings off (log(0) is -inf, as in PyTorch, without a
    RuntimeWarning). A namespace without `errstate` (CuPy: GPU kernels raise no such warnings)
    gets `fn` itself."""
    errstate = getattr(xp, "errstate", None)
    if errstate is None:
        return fn

    def run(*arrays):
        with errstate(all="ignore"):
            return fn(*arrays)

    return run


def in_float32_for_half(xp, reduce: Callable) -> Callable:
    """A reduction kernel `(x, dims, keepdim)` from `reduce(x, axis, keepdims)`: half types are
    reduced in float32 and rounded once at the end, as PyTorch accumulates them."""

    def run(x, dims, keepdim):
        if is_half(x.dtype):
            return reduce(x.astype(np.float32), axis=dims, keepdims=keepdim).astype(x.dtype)
        return xp.asarray(reduce(x, axis=dims, keepdims=keepdim))

    return run


def once_for_half(fn: Callable) -> Callable:
    """A pointwise kernel of several steps, `fn(x)`, computed in float32 for a half type and rounded
    once at the end, as PyTorch computes them (and as fused kernels compute every half value)."""

    def run(x):
        if is_half(x.dtype):
            return fn(x.astype(np.float32)).astype(x.dtype)
        return fn(x)

    return run


# ---------------------------------------------------------------------------------------------
# the kernels that are more than one function of the namespace (those that use it take `xp` first)


def _sigmoid(xp, x):
    return 1 / (1 + xp.exp(-x))


def _rsqrt(xp, x):
    return 1 / xp.sqrt(x)


def _relu(xp, x):
    """0 where x < 0, else x: NaN and -0.0 stay what they are, as PyTorch's relu keeps them."""
    return xp.where(x < 0, xp.zeros((), x.dtype), x)


def _relu_backward(xp, g, out):
    """`g` where relu's output is not <= 0, else 0 (PyTorch's test: a NaN output passes `g`)."""
    return xp.where(out <= 0, xp.zeros((), g.dtype), g)


def in_operand_dtype(fn: Callable) -> Callable:
    """A binary kernel whose result keeps its operands' dtype, as the primitive's rule says: numpy
    computes power, floor_divide and remainder of bools in int8."""

    def run(a, b):
        out = fn(a, b)
        return out if out.dtype == a.dtype else out.astype(a.dtype)

    return run


def _cast(x, dtype):
    return x.astype(dtype.np, copy=False)


def as_rows(x, dims: tuple[int, ...]) -> tuple[object, bool] | None:
    """A C-contiguous `x` as a 2-D (rows, cols) view, and whether `dims` are its trailing dims
    (reduce each row) rather than its leading ones (reduce each column); None for any other
    array or set of dims. (A backend sums such dims as one product with a vector of ones.)"""
    if not dims or not x.flags.c_contiguous:
        return None
    count, dims = len(dims), tuple(sorted(dims))
    if dims == tuple(range(x.ndim - count, x.ndim)):
        split, trailing = x.ndim - count, True
    elif dims == tuple(range(count)):
        split, trailing = count, False
    else:
        return None
    # (sizes, not -1: x may be empty)
    return x.reshape(math.prod(x.shape[:split]), math.prod(x.shape[split:])), trailing


# (the array methods, not xp.sum(x, ...): numpy's module functions cost a Python wrapper per call,
# a good part of a small reduction's time in a compiled program's step)
def sum_(xp, x, axis, keepdims):
    return x.sum(axis=axis, keepdims=keepdims, dtype=sum_dtype(x.dtype))


def _prod(xp, x, axis, keepdims):
    return x.prod(axis=axis, keepdims=keepdims, dtype=sum_dtype(x.dtype))


def amax(xp, x, axis, keepdims):
    if x.dtype == np.bool_:  # any(): an empty reduction is False (amax has no identity)
        return x.any(axis=axis, keepdims=keepdims)
    return x.max(axis=axis, keepdims=keepdims)


def _amin(xp, x, axis, keepdims):
    if x.dtype == np.bool_:  # all(): an empty reduction is True
        return x.all(axis=axis, keepdims=keepdims)
    return x.min(axis=axis, keepdims=keepdims)


def _arg_reduce(xp, reduce, x, dim, keepdim):
    if dim is None:
        out = reduce(x.reshape(-1))
        return xp.asarray(out, dtype=np.int64).reshape((1,) * x.ndim if keepdim else ())
    return reduce(x, axis=dim, keepdims=keepdim).astype(np.int64, copy=False)


def cumsum(xp, x, dim):
    # a 0-d input scans as one element and stays 0-d, as in PyTorch
    return xp.cumsum(x.reshape(x.shape or (1,)), axis=dim, dtype=sum_dtype(x.dtype)).reshape(x.shape)


def _reshape(xp, x, shape):
    return xp.reshape(x, shape)


def _permute(xp, x, dims):
    return xp.transpose(x, dims)


def _copy(xp, x):
    return xp.array(x, copy=True, order="C")


def _flip(xp, x, dims):
    return xp.flip(x, dims).copy()


def _pad(xp, x, pads, value):
    return xp.pad(x, pads, mode="constant", constant_values=value)


def _getitem(x, *tensors, key):
    index = numpy_key(key, tensors)
    if not tensors and Ellipsis not in key:
        index += (Ellipsis,)  # all ints would give numpy a scalar copy; PyTorch's x[1, 2] is a 0-d view
    return x[index]


def index_put(xp, add_at: Callable, x, v, *tensors, key, accumulate):
    """x with x[key] = v (or += v, where repeated indices all add up, through `add_at`, numpy's
    `np.add.at`)."""
    out = xp.array(x, copy=True)
    idx = numpy_key(key, tensors)
    if accumulate and any(type(i) is xp.ndarray for i in idx):
        add_at(out, idx, v)
    elif accumulate:
        out[idx] += v
    else:
        out[idx] = v
    return out


def _cat(xp, *xs, dim):
    return xp.concatenate(xs, axis=dim)


def cat_or_view(xp, address: Callable, allocation: Callable, *xs, dim):
    """`cat` for a value a compiled program keeps to itself: a view of the pieces' memory where
    they lie side by side along `dim` in one allocation with one set of strides (the pieces of
    one buffer cut along dim, as attention's packed q/k/v gradients), else a copy. Eagerly a cat
    always copies, as PyTorch's: a result aliasing its inputs would see their in-place changes.
    `address(x)`: where x's first element is; `allocation(x)`: an object owning x's memory,
    the same for every view of it."""
    first = xs[0]
    if len(xs) < 2 or not first.ndim:
        return xp.concatenate(xs, axis=dim)
    dim %= first.ndim
    strides, step, owner = first.strides, first.strides[dim], allocation(first)
    at, total = address(first), 0
    for x in xs:
        if (x.dtype != first.dtype or x.strides != strides or x.ndim != first.ndim or x.shape[dim] == 0
                or x.shape[:dim] != first.shape[:dim] or x.shape[dim + 1:] != first.shape[dim + 1:]
                or step <= 0 or address(x) != at or allocation(x) is not owner):
            return xp.concatenate(xs, axis=dim)
        at += x.shape[dim] * step
        total += x.shape[dim]
    return xp.lib.stride_tricks.as_strided(first, first.shape[:dim] + (total,) + first.shape[dim + 1:], strides)


def _matmul(xp, a, b):
    if is_half(a.dtype):  # PyTorch multiplies half types with float32 accumulation
        return xp.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return xp.matmul(a, b)


def _einsum(xp, *xs, equation):
    if xs and is_half(xs[0].dtype):  # (numpy's einsum takes no bfloat16; half types accumulate in float32)
        wide = [x.astype(np.float32) for x in xs]
        return xp.einsum(equation, *wide, optimize=len(xs) > 2).astype(xs[0].dtype)
    return xp.einsum(equation, *xs, optimize=len(xs) > 2)


def _gather(xp, x, index, dim):
    return xp.take_along_axis(x, index, axis=dim)


def _grid(xp, index, dim: int) -> tuple:
    """Full index arrays for a scatter along `dim` (the advanced-indexing form): `index` itself
    along `dim`, a broadcastable arange along every other dim."""
    ndim = index.ndim
    return tuple(index if d == dim else xp.arange(n).reshape((1,) * d + (n,) + (1,) * (ndim - d - 1))
                 for d, n in enumerate(index.shape))


def scatter_add(xp, add_at: Callable, x, index, src, dim):
    """x with src added at index along dim (repeated indices all add up, through `add_at`)."""
    out = xp.array(x, copy=True)
    src = src[tuple(slice(0, s) for s in index.shape)]
    add_at(out, _grid(xp, index, dim), src)
    return out


def _scatter(xp, x, index, src, dim):
    out = xp.array(x, copy=True)
    src = src[tuple(slice(0, s) for s in index.shape)]
    out[_grid(xp, index, dim)] = src
    return out


def _argsort(xp, x, dim, descending):
    if x.dtype.kind == "b":
        x = x.astype(np.float64 if descending else np.uint8)  # bools sort as numbers (CuPy sorts no bools)
    # a stable descending order: sort reversed keys; ~x for integers, which, unlike -x, never overflows
    # (-x of uint8 wraps; ~x of int8 -128 is 127)
    keys = (~x if x.dtype.kind in "iu" else -x) if descending else x
    return xp.argsort(keys, axis=dim, kind="stable").astype(np.int64, copy=False)


def unfold(xp, x, kernel, dilation, padding, stride):
    """im2col: x (N, C, H, W) -> (N, C*kh*kw, oh*ow), through a strided view of the padded image
    copied once (a fresh array, never a view of `x`)."""
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    padded = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else xp.ascontiguousarray(x)
    sn, sc, sy, sx = padded.strides
    windows = xp.lib.stride_tricks.as_strided(
        padded, (n, c, kh, kw, oh, ow), (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw))
    return windows.copy().reshape(n, c * kh * kw, oh * ow)


def fold(xp, cols, output_size, kernel, dilation, padding, stride):
    """col2im, the adjoint of `unfold`: each window's columns added into the (padded) image, one
    strided add per kernel offset."""
    (h, w), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = output_size, kernel, dilation, padding, stride
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    out = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw] += (
                cols[:, :, i, j]
            )
    return out[:, :, ph: ph + h, pw: pw + w]


def _random(xp, seed, counter, *, shape, dtype, dist, offset):
    """Philox draws for counters counter + offset onwards (one per element), keyed by the seed:
    the same numbers on every backend (`jitorch.philox`)."""
    first = int(counter) + offset
    counters = xp.arange(first, first + math.prod(shape), dtype=np.int64)
    return philox.draw(dist, int(seed), counters, dtype.np).reshape(shape)


def _attention_probabilities(xp, q, k, is_causal, scale):
    """softmax(q k^T * scale) over the keys, a causal mask keeping keys j <= i for query i (the
    scores materialized, each row shifted by its maximum). Empty key rows give empty rows."""
    scores = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale
    if is_causal:
        keep = xp.asarray(np.tril(np.ones(scores.shape[-2:], dtype=bool)))
        scores = xp.where(keep, scores, -np.inf)
    if scores.shape[-1] == 0:
        return scores
    scores = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return scores / scores.sum(axis=-1, keepdims=True)


def _attention_wide(q, *arrays):
    """The arrays in the type attention computes in: float32 for half types (as the GPU's kernels
    accumulate), else their own."""
    wide = np.float32 if is_half(q.dtype) else q.dtype
    return [a.astype(wide, copy=False) for a in (q, *arrays)]


def attention(xp, q, k, v, *, is_causal, scale):
    """The `attention` primitive with the scores materialized: the reference that the fused GPU
    kernels (`jitorch.codegen.triton_attention`) are tested against, and what a backend without
    one runs."""
    wq, wk, wv = _attention_wide(q, k, v)
    return xp.matmul(_attention_probabilities(xp, wq, wk, is_causal, scale), wv).astype(q.dtype, copy=False)


def attention_backward(xp, q, k, v, out, grad_out, *, is_causal, scale):
    """dq, dk, dv of `attention` for the output gradient `grad_out`, packed flat as
    `primitives.attention_gradients` reads them (heads-inside). With
    P the probabilities and dP = grad_out v^T: dv = P^T grad_out; dS = P * (dP - delta), delta
    being each row's sum of grad_out * out (= sum P * dP); dq = dS k * scale; dk = dS^T q * scale."""
    wq, wk, wv, wout, wg = _attention_wide(q, k, v, out, grad_out)
    p = _attention_probabilities(xp, wq, wk, is_causal, scale)
    dv = xp.matmul(xp.swapaxes(p, -1, -2), wg)
    delta = (wg * wout).sum(axis=-1, keepdims=True)
    ds = p * (xp.matmul(wg, xp.swapaxes(wv, -1, -2)) - delta)
    dq = xp.matmul(ds, wk) * scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), wq) * scale
    packed = xp.empty(q.size + k.size + v.size, q.dtype)
    for view, g in zip(attention_gradients(packed, q.shape, k.shape, v.shape), (dq, dk, dv)):
        view[...] = g.astype(q.dtype, copy=False)
    return packed


# ---------------------------------------------------------------------------------------------
# linear algebra over `xp.linalg` (batched over leading dims; several outputs packed flat, in the
# order `linalg_parts` gives)


def _packed(xp, batch: tuple[int, ...], *parts):
    """The parts (each `batch` + its matrix shape) concatenated flat along one last dim."""
    flat = [p.reshape(batch + (math.prod(p.shape[len(batch):]),)) for p in parts]
    return xp.concatenate(flat, axis=-1)


def _fails(probe: Callable, matrix) -> bool:
    try:
        probe(matrix)
    except np.linalg.LinAlgError:
        return True
    return False


def _raising_linalg_errors(name: str, probe: Callable, describe: Callable) -> Callable:
    """A decorator: the kernel `(xp, a, ...)` raising a LinAlgError that names the failing matrix
    of the batch and says what went wrong (`describe(matrix)`), where numpy's own says only
    "Singular matrix". `probe` is the one-matrix computation that fails. (CuPy raises no such
    error: it returns NaNs.)"""

    def wrap(kernel: Callable) -> Callable:
        def run(xp, a, *rest, **params):
            try:
                return kernel(xp, a, *rest, **params)
            except np.linalg.LinAlgError:
                matrices = a.reshape((-1,) + a.shape[-2:])
                index = next((i for i, m in enumerate(matrices) if _fails(probe, m)), 0)
                where = f"(Batch element {index}): " if a.ndim > 2 else ""
                raise LinAlgError(f"linalg.{name}: {where}{describe(matrices[index])}") from None
        return run

    return wrap


def _singular(what: str) -> Callable:
    return lambda matrix: (f"The input matrix is singular, so {what} could not be completed. Check it for linearly "
                           "dependent rows or columns, or use jitorch.linalg.lstsq for a least-squares solution.")


def _not_positive_definite(matrix) -> str:
    order = next(k for k in range(1, matrix.shape[-1] + 1) if _fails(np.linalg.cholesky, matrix[:k, :k]))
    return ("The factorization could not be completed because the input is not positive-definite (the leading "
            f"minor of order {order} is not positive-definite).")


@_raising_linalg_errors("inv", np.linalg.inv, _singular("the inversion"))
def _inv(xp, a):
    return xp.linalg.inv(a)


@_raising_linalg_errors("solve", np.linalg.inv, _singular("the solve"))
def _solve(xp, a, b):
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    return xp.linalg.solve(xp.broadcast_to(a, batch + a.shape[-2:]), xp.broadcast_to(b, batch + b.shape[-2:]))


@_raising_linalg_errors("cholesky", np.linalg.cholesky, _not_positive_definite)
def _cholesky(xp, a, upper):
    lower = xp.linalg.cholesky(a)
    return xp.ascontiguousarray(xp.swapaxes(lower, -1, -2)) if upper else lower


def _det(xp, a):
    return xp.asarray(xp.linalg.det(a))


def _slogdet(xp, a):
    sign, logabsdet = xp.linalg.slogdet(a)
    return _packed(xp, a.shape[:-2], sign, logabsdet)


def _qr(xp, a, mode):
    q, r = xp.linalg.qr(a, mode=mode)
    return _packed(xp, a.shape[:-2], q, r)


def _eigh(xp, a, UPLO):
    eigenvalues, eigenvectors = xp.linalg.eigh(a, UPLO=UPLO)
    return _packed(xp, a.shape[:-2], eigenvalues, eigenvectors)


def _svd(xp, a, full_matrices):
    u, s, vh = xp.linalg.svd(a, full_matrices=full_matrices)
    return _packed(xp, a.shape[:-2], u, s, vh)


def _svdvals(xp, a):
    return xp.linalg.svd(a, compute_uv=False)


# ---------------------------------------------------------------------------------------------


def make_kernels(xp) -> dict[str, Callable]:
    """The eager kernel of every primitive but `erf`, over the array namespace `xp` (numpy or cupy)."""
    quiet = partial(ignoring_fp_errors, xp)
    kernels: dict[str, Callable] = {
        "neg": xp.negative,
        "exp": quiet(xp.exp),
        "log": quiet(xp.log),
        "log1p": quiet(xp.log1p),
        "expm1": quiet(xp.expm1),
        "sqrt": quiet(xp.sqrt),
        "rsqrt": quiet(once_for_half(partial(_rsqrt, xp))),
        "sin": xp.sin,
        "cos": xp.cos,
        "tanh": xp.tanh,
        "sigmoid": quiet(once_for_half(partial(_sigmoid, xp))),
        "abs": xp.abs,
        "sign": xp.sign,
        "floor": xp.floor,
        "ceil": xp.ceil,
        "round": xp.round,
        "trunc": xp.trunc,
        "reciprocal": quiet(xp.reciprocal),
        "logical_not": xp.logical_not,
        "isnan": xp.isnan,
        "isinf": xp.isinf,
        "relu": partial(_relu, xp),
        "relu_backward": partial(_relu_backward, xp),
        "cast": _cast,
        "add": xp.add,
        "sub": xp.subtract,
        "mul": xp.multiply,
        "div": quiet(xp.true_divide),
        "pow": in_operand_dtype(quiet(xp.power)),
        "maximum": xp.maximum,
        "minimum": xp.minimum,
        "remainder": in_operand_dtype(quiet(xp.remainder)),
        "floor_divide": in_operand_dtype(quiet(xp.floor_divide)),
        "eq": xp.equal,
        "ne": xp.not_equal,
        "lt": xp.less,
        "le": xp.less_equal,
        "gt": xp.greater,
        "ge": xp.greater_equal,
        "logical_and": xp.logical_and,
        "logical_or": xp.logical_or,
        "logical_xor": xp.logical_xor,
        "bitwise_and": xp.bitwise_and,
        "bitwise_or": xp.bitwise_or,
        "bitwise_xor": xp.bitwise_xor,
        "bitwise_not": xp.invert,
        "where": xp.where,
        "sum": in_float32_for_half(xp, partial(sum_, xp)),
        "prod": in_float32_for_half(xp, partial(_prod, xp)),
        "amax": in_float32_for_half(xp, partial(amax, xp)),
        "amin": in_float32_for_half(xp, partial(_amin, xp)),
        "argmax": partial(_arg_reduce, xp, xp.argmax),
        "argmin": partial(_arg_reduce, xp, xp.argmin),
        "cumsum": partial(cumsum, xp),
        "reshape": partial(_reshape, xp),
        "permute": partial(_permute, xp),
        "expand": xp.broadcast_to,
        "flip": partial(_flip, xp),
        "copy": partial(_copy, xp),
        "pad": partial(_pad, xp),
        "getitem": _getitem,
        "index_put": partial(index_put, xp, xp.add.at),
        "cat": partial(_cat, xp),
        "matmul": partial(_matmul, xp),
        "einsum": partial(_einsum, xp),
        "gather": partial(_gather, xp),
        "scatter_add": partial(scatter_add, xp, xp.add.at),
        "scatter": partial(_scatter, xp),
        "argsort": partial(_argsort, xp),
        "unfold": partial(unfold, xp),
        "fold": partial(fold, xp),
        "random": partial(_random, xp),
        "attention": partial(attention, xp),
        "attention_backward": partial(attention_backward, xp),
        "inv": partial(_inv, xp),
        "det": partial(_det, xp),
        "slogdet": partial(_slogdet, xp),
        "solve": partial(_solve, xp),
        "cholesky": partial(_cholesky, xp),
        "qr": partial(_qr, xp),
        "eigh": partial(_eigh, xp),
        "svd": partial(_svd, xp),
        "svdvals": partial(_svdvals, xp),
    }
    return kernels
