"""The primitive table: every primitive jitorch knows, each declared once.

A primitive has
- `impl`: the eager CPU kernel (numpy arrays in, one numpy array out);
- `infer`: the shape/dtype rule (used by the meta device and the tracer);
- `vjp`: its vector-Jacobian product, written with Tensor ops so backward is itself traceable and
  differentiable. `vjp(g, node)` returns one gradient (or None) per input; gradients of broadcast
  inputs may keep the broadcast shape: the autograd engine sums them back to the input's shape;
- `saves`: the inputs (and whether the output) its vjp reads, so an in-place change to exactly those
  is caught at backward time.

Everything else (softmax, layer_norm, var, clamp, Adam, ...) is a composite in Python over these.
Params are hashable values (ints, tuples, DTypes) so an IR node can be printed, hashed and cached.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import dtypes as _dt
from .cpu_helpers import UINT_OF_SIZE, add_rows_at, amax_rows, sum_by_blas

PRIMS: dict[str, Prim] = {}

# Primitives whose output may be a view of their first input (shares its storage and version).
VIEW_PRIMS = frozenset({"reshape", "permute", "expand", "getitem"})


class Prim:
    """One primitive operation. See the module docstring for the fields."""

    __slots__ = ("name", "kind", "impl", "infer", "vjp", "saves", "saves_out")

    def __init__(self, name: str, kind: str, impl: Callable, infer: Callable, vjp: Callable | None,
                 saves: tuple[int, ...] | None = (), saves_out: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.impl = impl
        self.infer = infer
        self.vjp = vjp if vjp is not None else _no_grad_vjp
        self.saves = saves
        self.saves_out = saves_out

    def __repr__(self) -> str:
        return f"Prim({self.name})"


def defprim(name: str, kind: str, impl: Callable, infer: Callable, vjp: Callable | None = None,
            saves: tuple[int, ...] | None = (), saves_out: bool = False) -> Prim:
    """Declare a primitive. `saves=None` means the vjp reads every input."""
    if name in PRIMS:
        raise ValueError(f"primitive {name!r} is declared twice")
    prim = Prim(name, kind, impl, infer, vjp, saves, saves_out)
    PRIMS[name] = prim
    return prim


def _no_grad_vjp(g, node):
    return (None,) * len(node.inputs)


def apply(name: str, *inputs, **params):
    """Apply primitive `name` to Tensors whose shapes and dtypes are already right (vjps use it to
    skip the user-facing ops' argument checks; it still records autograd and tracing)."""
    from .dispatch import dispatch

    return dispatch(PRIMS[name], inputs, params)


# ---------------------------------------------------------------------------------------------
# shape rules

class ShapeError(RuntimeError, ValueError):
    """A shape rule's error: a RuntimeError, as PyTorch raises, and also a ValueError, so code that
    catches numpy's shape errors (dispatch, the tracer) catches it too."""


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of several shapes, or a ShapeError that names all of them."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for s in shapes:
        for i, d in enumerate(s, ndim - len(s)):
            if d != 1:
                if out[i] != 1 and out[i] != d:
                    shown = " and ".join(str(tuple(x)) for x in shapes)
                    raise ShapeError(
                        f"shapes {shown} cannot be broadcast together: dimension {i - ndim} has sizes "
                        f"{out[i]} and {d}. Reshape or unsqueeze one operand so each dimension matches "
                        "or is 1."
                    )
                out[i] = d
    return tuple(out)


def _same_dtype(*avals):
    return broadcast_shapes(*(a.shape for a in avals)), avals[0].dtype


def _bool_out(*avals):
    return broadcast_shapes(*(a.shape for a in avals)), np.dtype(np.bool_)


def _reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in dims)


def _sum_dtype(dtype):
    return np.dtype(np.int64) if dtype.kind in "biu" else dtype


def _abstract(impl):
    """A shape rule that runs the numpy kernel on zero-stride stand-ins: for rare, cheap ops."""

    def infer(*avals, **params):
        dummies = [np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in avals]
        out = impl(*dummies, **params)
        return out.shape, out.dtype

    return infer


# ---------------------------------------------------------------------------------------------
# elementwise

def _unary(name, fn, vjp=None, saves=(), saves_out=False, infer=None):
    return defprim(name, "elementwise", fn, infer or _same_dtype, vjp, saves, saves_out)


def _binary(name, fn, vjp=None, saves=(), saves_out=False, infer=None):
    return defprim(name, "elementwise", fn, infer or _same_dtype, vjp, saves, saves_out)


def _errstate(fn):
    def impl(*arrays):
        with np.errstate(all="ignore"):
            return fn(*arrays)

    return impl


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _rsqrt(x):
    return 1 / np.sqrt(x)


def _erf(x):
    from .cpu_helpers import erf

    return erf(x)


_unary("neg", np.negative, lambda g, n: (-g,))
_unary("exp", _errstate(np.exp), lambda g, n: (g * n.out,), saves_out=True)
_unary("log", _errstate(np.log), lambda g, n: (g / n.inputs[0],), saves=(0,))
_unary("log1p", _errstate(np.log1p), lambda g, n: (g / (n.inputs[0] + 1),), saves=(0,))
_unary("expm1", _errstate(np.expm1), lambda g, n: (g * (n.out + 1),), saves_out=True)
_unary("sqrt", _errstate(np.sqrt), lambda g, n: (g / (2 * n.out),), saves_out=True)
_unary("rsqrt", _errstate(_rsqrt), lambda g, n: (-0.5 * g * n.out ** 3,), saves_out=True)
_unary("sin", np.sin, lambda g, n: (g * n.inputs[0].cos(),), saves=(0,))
_unary("cos", np.cos, lambda g, n: (-g * n.inputs[0].sin(),), saves=(0,))
_unary("tanh", np.tanh, lambda g, n: (g * (1 - n.out * n.out),), saves_out=True)
_unary("sigmoid", _errstate(_sigmoid), lambda g, n: (g * n.out * (1 - n.out),), saves_out=True)
_unary("abs", np.abs, lambda g, n: (g * n.inputs[0].sign(),), saves=(0,))
_unary("sign", np.sign, lambda g, n: (g * 0,))
_unary("floor", np.floor, lambda g, n: (g * 0,))
_unary("ceil", np.ceil, lambda g, n: (g * 0,))
_unary("round", np.round, lambda g, n: (g * 0,))
_unary("trunc", np.trunc, lambda g, n: (g * 0,))
_unary("reciprocal", _errstate(np.reciprocal), lambda g, n: (-g * n.out * n.out,), saves_out=True)
_unary("erf", _erf,
       lambda g, n: (g * (2 / np.sqrt(np.pi)) * (-(n.inputs[0] * n.inputs[0])).exp(),), saves=(0,))
_unary("logical_not", np.logical_not, infer=_bool_out)
_unary("isnan", np.isnan, infer=_bool_out)
_unary("isinf", np.isinf, infer=_bool_out)


def _relu_impl(x):
    return np.maximum(x, 0)  # NaN stays NaN, as in PyTorch


def _relu_backward_impl(g, out):
    from .cpu_helpers import relu_backward

    return relu_backward(g, out)


# relu is a primitive (not where(x > 0, x, 0)) for PyTorch's NaN semantics and one pass each way;
# its backward is one too, and is itself differentiable in g (double backward).
_unary("relu", _relu_impl, lambda g, n: (g._relu_backward(n.out),), saves_out=True)
defprim("relu_backward", "elementwise", _relu_backward_impl, _same_dtype,
        lambda gg, n: (gg._relu_backward(n.inputs[1]), None), saves=(1,))


def _cast_impl(x, dtype):
    return x.astype(dtype.np, copy=False)


def _cast_infer(x, dtype):
    return x.shape, dtype.np


def _cast_vjp(g, n):
    src = n.inputs[0].dtype
    return (g.to(src) if src.is_floating_point else None,)


defprim("cast", "elementwise", _cast_impl, _cast_infer, _cast_vjp)


def _pow_vjp(g, n):
    x, y = n.inputs
    gx = g * y * x ** (y - 1)
    # d/dy x**y = x**y log x; PyTorch defines it as 0 where x == 0 and y >= 0.
    gy = None
    if n.needs[1]:
        safe = (x == 0).logical_and(y >= 0)
        gy = (g * n.out * x.log()).where(safe.logical_not(), 0.0)
    return gx, gy


def _maximum_vjp(g, n):
    x, y = n.inputs
    # ties split the gradient evenly, as PyTorch does
    wx = (x > y).to(g.dtype) + (x == y).to(g.dtype) * 0.5
    return g * wx, g * (1 - wx)


def _minimum_vjp(g, n):
    x, y = n.inputs
    wx = (x < y).to(g.dtype) + (x == y).to(g.dtype) * 0.5
    return g * wx, g * (1 - wx)


def _div_vjp(g, n):
    x, y = n.inputs
    return g / y, (-g * n.out / y if n.needs[1] else None)


_binary("add", np.add, lambda g, n: (g, g))
_binary("sub", np.subtract, lambda g, n: (g, -g))
_binary("mul", np.multiply, lambda g, n: (g * n.inputs[1], g * n.inputs[0]), saves=(0, 1))
_binary("div", _errstate(np.true_divide), _div_vjp, saves=(1,), saves_out=True)
_binary("pow", _errstate(np.power), _pow_vjp, saves=(0, 1), saves_out=True)
_binary("maximum", np.maximum, _maximum_vjp, saves=(0, 1))
_binary("minimum", np.minimum, _minimum_vjp, saves=(0, 1))
_binary("remainder", _errstate(np.remainder), lambda g, n: (g, -g * (n.inputs[0] / n.inputs[1]).floor()),
        saves=(0, 1))
_binary("floor_divide", _errstate(np.floor_divide))
for _name, _fn in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal), ("logical_and", np.logical_and),
                   ("logical_or", np.logical_or), ("logical_xor", np.logical_xor)]:
    _binary(_name, _fn, infer=_bool_out)
# integer bit operations (`&`, `|`, `^`, `~` on int tensors); on bools they are the logical ops
_binary("bitwise_and", np.bitwise_and)
_binary("bitwise_or", np.bitwise_or)
_binary("bitwise_xor", np.bitwise_xor)
_unary("bitwise_not", np.invert)


def _where_infer(c, x, y):
    return broadcast_shapes(c.shape, x.shape, y.shape), x.dtype


def _where_vjp(g, n):
    c = n.inputs[0]
    zero = g.new_zeros(())
    # relu's where(x > 0, x, 0) needs only the first branch: skip the other full-size select
    return (None, g.where(c, zero) if n.needs[1] else None, zero.where(c, g) if n.needs[2] else None)


def _where_impl(cond, x, y):
    from .cpu_helpers import where

    return where(cond, x, y)


defprim("where", "elementwise", _where_impl, _where_infer, _where_vjp, saves=(0,))


# ---------------------------------------------------------------------------------------------
# reductions (dims is a tuple of non-negative ints)

def _accumulating(fn):
    def impl(x, dims, keepdim):
        if x.dtype.kind == "f" and x.dtype.itemsize < 4 or x.dtype == _dt.bfloat16.np:
            # PyTorch accumulates half types in float32
            return fn(x.astype(np.float32), axis=dims, keepdims=keepdim).astype(x.dtype)
        return np.asarray(fn(x, axis=dims, keepdims=keepdim))

    return impl


def _reduce_infer(x, dims, keepdim):
    return _reduced_shape(x.shape, dims, keepdim), x.dtype


def _sum_infer(x, dims, keepdim):
    return _reduced_shape(x.shape, dims, keepdim), _sum_dtype(x.dtype)


def _restore(g, n):
    """Reshape a reduction's gradient (or output) to broadcast against the input."""
    x = n.inputs[0]
    dims, keepdim = n.params["dims"], n.params["keepdim"]
    if not keepdim:
        g = apply("reshape", g, shape=_reduced_shape(x.shape, dims, True))
    return g


def _sum_vjp(g, n):
    g = _restore(g, n)
    shape = n.inputs[0].shape
    return (g if g.shape == shape else apply("expand", g, shape=tuple(shape)),)


def _extreme_vjp(g, n):
    x = n.inputs[0]
    out = _restore(n.out, n)
    mask = (x == out).to(g.dtype)
    count = mask.sum(n.params["dims"], keepdim=True)
    return (_restore(g, n) * mask / count,)


def _prod_vjp(g, n):
    return (_restore(g, n) * _restore(n.out, n) / n.inputs[0],)


def _np_sum(x, axis, keepdims):
    out = sum_by_blas(x, axis)
    if out is not None:
        return out.reshape(_reduced_shape(x.shape, axis, keepdims))
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype))


def _np_prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype))


defprim("sum", "reduce", _accumulating(_np_sum), _sum_infer, _sum_vjp)
defprim("prod", "reduce", _accumulating(_np_prod), _sum_infer, _prod_vjp, saves=(0,), saves_out=True)
def _np_amax(x, axis, keepdims):
    out = amax_rows(x, axis)
    if out is not None:
        return out.reshape(_reduced_shape(x.shape, axis, keepdims))
    if x.dtype == np.bool_:  # any(): an empty reduction is False (np.amax has no identity)
        return np.any(x, axis=axis, keepdims=keepdims)
    return np.amax(x, axis=axis, keepdims=keepdims)


def _np_amin(x, axis, keepdims):
    if x.dtype == np.bool_:  # all(): an empty reduction is True
        return np.all(x, axis=axis, keepdims=keepdims)
    return np.amin(x, axis=axis, keepdims=keepdims)


defprim("amax", "reduce", _accumulating(_np_amax), _reduce_infer, _extreme_vjp, saves=(0,), saves_out=True)
defprim("amin", "reduce", _accumulating(_np_amin), _reduce_infer, _extreme_vjp, saves=(0,), saves_out=True)


def _arg_impl(fn):
    def impl(x, dim, keepdim):
        if dim is None:
            out = fn(x.reshape(-1))
            return np.asarray(out, dtype=np.int64).reshape((1,) * x.ndim if keepdim else ())
        return fn(x, axis=dim, keepdims=keepdim).astype(np.int64, copy=False)

    return impl


def _arg_infer(x, dim, keepdim):
    dims = tuple(range(len(x.shape))) if dim is None else (dim,)
    return _reduced_shape(x.shape, dims, keepdim), np.dtype(np.int64)


defprim("argmax", "reduce", _arg_impl(np.argmax), _arg_infer)
defprim("argmin", "reduce", _arg_impl(np.argmin), _arg_infer)


def _cumsum_impl(x, dim):
    # reshape: numpy flattens a 0-d input to shape (1,); PyTorch keeps it 0-d
    return np.cumsum(x, axis=dim, dtype=_sum_dtype(x.dtype)).reshape(x.shape)


def _cumsum_infer(x, dim):
    return x.shape, _sum_dtype(x.dtype)


def _cumsum_vjp(g, n):
    d = n.params["dim"]
    return (g.flip(d).cumsum(d).flip(d),)


defprim("cumsum", "scan", _cumsum_impl, _cumsum_infer, _cumsum_vjp)


# ---------------------------------------------------------------------------------------------
# movement: views where numpy can make them

def _reshape_impl(x, shape):
    return np.reshape(x, shape)


def _reshape_infer(x, shape):
    return tuple(shape), x.dtype


defprim("reshape", "movement", _reshape_impl, _reshape_infer,
        lambda g, n: (g.reshape(n.inputs[0].shape),))


def _permute_infer(x, dims):
    return tuple(x.shape[d] for d in dims), x.dtype


def _permute_vjp(g, n):
    return (g.permute(tuple(np.argsort(n.params["dims"]).tolist())),)


defprim("permute", "movement", lambda x, dims: np.transpose(x, dims), _permute_infer, _permute_vjp)
defprim("expand", "movement", np.broadcast_to, _reshape_infer, lambda g, n: (g,))
# a copy, as PyTorch's flip is (numpy's is a view: writes into it would reach the input)
defprim("flip", "movement", lambda x, dims: np.flip(x, dims).copy(), lambda x, dims: (x.shape, x.dtype),
        lambda g, n: (g.flip(n.params["dims"]),))
# C order: numpy's default ("K") would keep a transposed layout, and contiguous() must not
defprim("copy", "elementwise", lambda x: np.array(x, copy=True, order="C"), _same_dtype, lambda g, n: (g,))


def _pad_impl(x, pads, value):
    return np.pad(x, pads, mode="constant", constant_values=value)


def _pad_infer(x, pads, value):
    return tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)), x.dtype


def _pad_vjp(g, n):
    key = tuple(("slice", lo, lo + d, 1) for d, (lo, hi) in zip(n.inputs[0].shape, n.params["pads"]))
    return (g._index(key, ()),)


defprim("pad", "movement", _pad_impl, _pad_infer, _pad_vjp)


def numpy_key(key: tuple, tensors: tuple) -> tuple:
    """Turn a getitem key of hashable items into a numpy index (slices and index arrays)."""
    out = []
    for item in key:
        if type(item) is tuple:
            if item[0] == "slice":
                out.append(slice(item[1], item[2], item[3]))
            else:
                out.append(tensors[item[1]])
        else:
            out.append(item)
    return tuple(out)


def _getitem_impl(x, *tensors, key):
    index = numpy_key(key, tensors)
    if not tensors and Ellipsis not in key:
        index += (Ellipsis,)  # all ints would give numpy a scalar copy; PyTorch's x[1, 2] is a 0-d view
    return x[index]


def _getitem_vjp(g, n):
    x, *tensors = n.inputs
    zeros = g.new_zeros(x.shape)
    return (zeros._index_put(g, n.params["key"], tensors, accumulate=True),) + (None,) * len(tensors)


defprim("getitem", "movement", _getitem_impl, _abstract(_getitem_impl), _getitem_vjp)


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


def _index_put_infer(x, v, *tensors, key, accumulate):
    return x.shape, x.dtype


def _index_put_vjp(g, n):
    x, v, *tensors = n.inputs
    key = n.params["key"]
    gx = g if n.params["accumulate"] else g._index_put(g.new_zeros(()), key, tensors, accumulate=False)
    gv = g._index(key, tensors)
    if gv.shape != v.shape:
        from .autograd import _sum_to_shape

        gv = _sum_to_shape(gv, v.shape)
    return (gx, gv) + (None,) * len(tensors)


defprim("index_put", "index", _index_put_impl, _index_put_infer, _index_put_vjp)


def _cat_impl(*xs, dim):
    return np.concatenate(xs, axis=dim)


def _cat_infer(*xs, dim):
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    return tuple(shape), xs[0].dtype


def _cat_vjp(g, n):
    dim = n.params["dim"]
    grads, start = [], 0
    for x in n.inputs:
        size = x.shape[dim]
        grads.append(g.narrow(dim, start, size))
        start += size
    return tuple(grads)


defprim("cat", "movement", _cat_impl, _cat_infer, _cat_vjp)


# ---------------------------------------------------------------------------------------------
# matmul, einsum

def _matmul_impl(a, b):
    if a.dtype.itemsize < 4 and a.dtype.kind == "f" or a.dtype == _dt.bfloat16.np:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


def _matmul_infer(a, b):
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)} "
            f"({a.shape[-1]} != {b.shape[-2]}). Transpose one operand or fix the layer sizes."
        )
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def _matmul_vjp(g, n):
    a, b = n.inputs
    ga = g @ b.mT if n.needs[0] else None
    gb = a.mT @ g if n.needs[1] else None
    return ga, gb


defprim("matmul", "matmul", _matmul_impl, _matmul_infer, _matmul_vjp, saves=(0, 1))


def _einsum_impl(*xs, equation):
    return np.einsum(equation, *xs, optimize=len(xs) > 2)


def _einsum_vjp(g, n):
    from .ops import einsum

    lhs, out_sub = n.params["equation"].split("->")
    subs = lhs.split(",")
    grads = []
    for i, x in enumerate(n.inputs):
        if not n.needs[i]:
            grads.append(None)
            continue
        others = [s for j, s in enumerate(subs) if j != i]
        operands = [t for j, t in enumerate(n.inputs) if j != i]
        available = set(out_sub).union(*others)
        unique = "".join(dict.fromkeys(subs[i]))  # a letter repeated in one operand ("ii") once
        sizes = tuple(x.shape[subs[i].index(c)] for c in unique)
        target = "".join(c for c in unique if c in available)
        gi = einsum(",".join([out_sub] + others) + "->" + target, g, *operands)
        if target != unique:  # letters summed only within operand i broadcast back
            gi = gi.reshape(tuple(n if c in available else 1 for c, n in zip(unique, sizes))).expand(sizes)
        if unique != subs[i]:
            gi = _onto_diagonal(gi, unique, subs[i], n.params["equation"])
        grads.append(gi)
    return tuple(grads)


def _onto_diagonal(g, unique: str, subs: str, equation: str):
    """Spread the gradient of an operand with repeated letters (`ii`) onto its diagonal, where the
    forward read it: multiply by an identity matrix for each repeat (einsum, so it stays traceable)."""
    from .ops import as_operand, einsum

    fresh = iter(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation)
    out_subs, eye_subs, eyes = [], [], []
    seen = set()
    for c in subs:
        if c not in seen:
            seen.add(c)
            out_subs.append(c)
            continue
        f = next(fresh)
        out_subs.append(f)
        eye_subs.append(c + f)
        size = g.shape[unique.index(c)]
        eyes.append(as_operand(np.eye(size, dtype=g._data.dtype), g))
    return einsum(",".join([unique] + eye_subs) + "->" + "".join(out_subs), g, *eyes)


defprim("einsum", "matmul", _einsum_impl, _abstract(_einsum_impl), _einsum_vjp, saves=None)


# ---------------------------------------------------------------------------------------------
# index ops

def _gather_impl(x, index, dim):
    return np.take_along_axis(x, index, axis=dim)


def _gather_infer(x, index, dim):
    return index.shape, x.dtype


def _gather_vjp(g, n):
    x, index = n.inputs
    return apply("scatter_add", g.new_zeros(x.shape), index, g, dim=n.params["dim"]), None


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


def _scatter_infer(x, index, src, dim):
    return x.shape, x.dtype


def _src_grad(g, index, src, dim):
    gs = g.gather(dim, index)
    if gs.shape != src.shape:
        gs = gs.new_zeros(src.shape)._index_put(gs, tuple(("slice", 0, s, 1) for s in gs.shape), (),
                                                accumulate=False)
    return gs


def _scatter_add_vjp(g, n):
    x, index, src = n.inputs
    return g, None, _src_grad(g, index, src, n.params["dim"])


def _scatter_vjp(g, n):
    x, index, src = n.inputs
    dim = n.params["dim"]
    gx = g.scatter(dim, index, g.new_zeros(index.shape))
    return gx, None, _src_grad(g, index, src, dim)


defprim("gather", "index", _gather_impl, _gather_infer, _gather_vjp, saves=(1,))
defprim("scatter_add", "index", _scatter_add_impl, _scatter_infer, _scatter_add_vjp, saves=(1,))
defprim("scatter", "index", _scatter_impl, _scatter_infer, _scatter_vjp, saves=(1,))


def _argsort_impl(x, dim, descending):
    if descending:
        # a stable descending order: sort the negated keys (bool/ints via their order)
        keys = -x.astype(np.float64) if x.dtype.kind == "b" else -x
        return np.argsort(keys, axis=dim, kind="stable").astype(np.int64)
    return np.argsort(x, axis=dim, kind="stable").astype(np.int64)


defprim("argsort", "sort", _argsort_impl, lambda x, dim, descending: (x.shape, np.dtype(np.int64)))


# ---------------------------------------------------------------------------------------------
# im2col for convolution and pooling (an extern: numpy does the strided gather)

def _out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _unfold_impl(x, kernel, dilation, padding, stride):
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    if xp.size >= 4096:
        from ._numba_kernels import im2col

        u = UINT_OF_SIZE[xp.dtype.itemsize]  # pure data movement: one kernel for every dtype
        out = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
        im2col(xp.view(u), kh, kw, dh, dw, sh, sw, oh, ow, out.view(u))
        return out
    sn, sc, sy, sx = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, (n, c, kh, kw, oh, ow), (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw), writeable=False
    )
    return view.reshape(n, c * kh * kw, oh * ow)


def _unfold_infer(x, kernel, dilation, padding, stride):
    n, c, h, w = x.shape
    oh = _out_size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = _out_size(w, kernel[1], stride[1], padding[1], dilation[1])
    return (n, c * kernel[0] * kernel[1], oh * ow), x.dtype


def _fold_impl(cols, output_size, kernel, dilation, padding, stride):
    (h, w), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = output_size, kernel, dilation, padding, stride
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    if cols.dtype in (np.float32, np.float64):
        from ._numba_kernels import col2im

        col2im(np.ascontiguousarray(cols), kh, kw, dh, dw, sh, sw, oh, ow, out)
        return out[:, :, ph: ph + h, pw: pw + w]
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw] += (
                cols[:, :, i, j]
            )
    return out[:, :, ph: ph + h, pw: pw + w]


def _fold_infer(cols, output_size, kernel, dilation, padding, stride):
    c = cols.shape[1] // (kernel[0] * kernel[1])
    return (cols.shape[0], c) + tuple(output_size), cols.dtype


def _unfold_vjp(g, n):
    from .ops import fold

    p = n.params
    return (fold(g, n.inputs[0].shape[2:], p["kernel"], p["dilation"], p["padding"], p["stride"]),)


def _fold_vjp(g, n):
    from .ops import unfold

    p = n.params
    return (unfold(g, p["kernel"], p["dilation"], p["padding"], p["stride"]),)


defprim("unfold", "movement", _unfold_impl, _unfold_infer, _unfold_vjp)
defprim("fold", "movement", _fold_impl, _fold_infer, _fold_vjp)


# ---------------------------------------------------------------------------------------------
# random numbers inside compiled functions: the seed is a graph input, so each call draws anew


def _random_impl(seed, *, shape, dtype, dist, index):
    rng = np.random.Generator(np.random.PCG64([int(seed), index]))
    work = np.float64 if dtype is _dt.float64 else np.float32
    if dist == "uniform":
        out = rng.random(shape, dtype=work)
    else:
        out = rng.standard_normal(shape, dtype=work)
    return out.astype(dtype.np, copy=False)


def _random_infer(seed, *, shape, dtype, dist, index):
    return tuple(shape), dtype.np


defprim("random", "random", _random_impl, _random_infer)
