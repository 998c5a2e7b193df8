"""Gradient rules: the vector-Jacobian product of every differentiable primitive, in one table.

`VJP[name](g, node)` returns one gradient (or None) per input of the node (`node.inputs`,
`node.params`, `node.out`, `node.needs[i]`: whether input i wants one). Rules are written with
Tensor ops, so a backward pass is itself traceable (`jitorch.compile` records it) and
differentiable (double backward). Gradients of broadcast inputs may keep the broadcast shape: the
autograd engine sums them back to the input's shape. A primitive with no entry has no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import autograd, linalg
from ._trace_state import trace_state
from .autograd import sum_to_shape
from .dispatch import dispatch
from .ops import as_operand, cat, diag_embed, einsum, fold, unfold, where
from .primitives import PRIMS, attention_gradients, reduced_shape
from .tensor import Tensor

VJP: dict[str, Callable] = {}


def apply(name: str, *inputs, **params):
    """Apply primitive `name` to Tensors whose shapes and dtypes are already right (skipping the
    user-facing ops' argument checks; it still records autograd and tracing)."""
    return dispatch(PRIMS[name], inputs, params)


VJP["neg"] = lambda g, n: (-g,)


VJP["exp"] = lambda g, n: (g * n.out,)


VJP["log"] = lambda g, n: (g / n.inputs[0],)


VJP["log1p"] = lambda g, n: (g / (n.inputs[0] + 1),)


VJP["expm1"] = lambda g, n: (g * (n.out + 1),)


VJP["sqrt"] = lambda g, n: (g / (2 * n.out),)


VJP["rsqrt"] = lambda g, n: (-0.5 * g * n.out ** 3,)


VJP["sin"] = lambda g, n: (g * n.inputs[0].cos(),)


VJP["cos"] = lambda g, n: (-g * n.inputs[0].sin(),)


VJP["tanh"] = lambda g, n: (g * (1 - n.out * n.out),)


VJP["sigmoid"] = lambda g, n: (g * n.out * (1 - n.out),)


VJP["abs"] = lambda g, n: (g * n.inputs[0].sign(),)


VJP["sign"] = lambda g, n: (g * 0,)


VJP["floor"] = lambda g, n: (g * 0,)


VJP["ceil"] = lambda g, n: (g * 0,)


VJP["round"] = lambda g, n: (g * 0,)


VJP["trunc"] = lambda g, n: (g * 0,)


VJP["reciprocal"] = lambda g, n: (-g * n.out * n.out,)


VJP["erf"] = lambda g, n: (g * (2 / np.sqrt(np.pi)) * (-(n.inputs[0] * n.inputs[0])).exp(),)


VJP["relu"] = lambda g, n: (g._relu_backward(n.out),)


VJP["relu_backward"] = lambda gg, n: (gg._relu_backward(n.inputs[1]), None)


def _cast_vjp(g, n):
    src = n.inputs[0].dtype
    return (g.to(src) if src.is_floating_point else None,)

VJP["cast"] = _cast_vjp


def _pow_vjp(g, n):
    x, y = n.inputs
    gx = g * y * x ** (y - 1) if n.needs[0] else None
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
    return (g * wx if n.needs[0] else None), (g * (1 - wx) if n.needs[1] else None)


def _minimum_vjp(g, n):
    x, y = n.inputs
    wx = (x < y).to(g.dtype) + (x == y).to(g.dtype) * 0.5
    return (g * wx if n.needs[0] else None), (g * (1 - wx) if n.needs[1] else None)


def _div_vjp(g, n):
    x, y = n.inputs
    return (g / y if n.needs[0] else None), (-g * n.out / y if n.needs[1] else None)

VJP["add"] = lambda g, n: (g, g)


VJP["sub"] = lambda g, n: (g, -g if n.needs[1] else None)


# (an input that needs no gradient, a constant or the data, gets no product: `Node.needs`)
VJP["mul"] = lambda g, n: (g * n.inputs[1] if n.needs[0] else None, g * n.inputs[0] if n.needs[1] else None)


VJP["div"] = _div_vjp


VJP["pow"] = _pow_vjp


VJP["maximum"] = _maximum_vjp


VJP["minimum"] = _minimum_vjp


VJP["remainder"] = lambda g, n: (g, -g * (n.inputs[0] / n.inputs[1]).floor() if n.needs[1] else None)


def _where_vjp(g, n):
    c = n.inputs[0]
    zero = g.new_zeros(())
    # relu's where(x > 0, x, 0) needs only the first branch: skip the other full-size select
    return (None, g.where(c, zero) if n.needs[1] else None, zero.where(c, g) if n.needs[2] else None)

VJP["where"] = _where_vjp


def _restore(g, n):
    """Reshape a reduction's gradient (or output) to broadcast against the input."""
    x = n.inputs[0]
    dims, keepdim = n.params["dims"], n.params["keepdim"]
    if not keepdim:
        g = apply("reshape", g, shape=reduced_shape(x.shape, dims, True))
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

VJP["sum"] = _sum_vjp


VJP["prod"] = _prod_vjp


VJP["amax"] = _extreme_vjp


VJP["amin"] = _extreme_vjp


def _cumsum_vjp(g, n):
    d = n.params["dim"]
    return (g.flip(d).cumsum(d).flip(d),)

VJP["cumsum"] = _cumsum_vjp


VJP["reshape"] = lambda g, n: (g.reshape(n.inputs[0].shape),)


def _permute_vjp(g, n):
    return (g.permute(tuple(np.argsort(n.params["dims"]).tolist())),)

VJP["permute"] = _permute_vjp


VJP["expand"] = lambda g, n: (g,)


VJP["flip"] = lambda g, n: (g.flip(n.params["dims"]),)


VJP["copy"] = lambda g, n: (g,)


def _pad_vjp(g, n):
    key = tuple(("slice", lo, lo + d, 1) for d, (lo, hi) in zip(n.inputs[0].shape, n.params["pads"]))
    return (g._index(key, ()),)

VJP["pad"] = _pad_vjp


class SliceGrad(autograd.PartialGrad):
    """The gradient of x from slices of it (`x[key]` for basic keys), kept as (key, gradient)
    pieces until whole. Slices of step 1 and indices that cut one dim without overlapping (what
    split, chunk and unbind make, as the three projections of attention's packed weight) become one
    concatenation per dim, zeros filling the gaps; anything else is added into one buffer of
    zeros. Adding each piece's zero-padded gradient instead costs a fill, a scatter and an add of
    the whole of x per piece."""

    def __init__(self, like: Tensor, shape: tuple, pieces: list) -> None:
        self.like, self.shape, self.pieces = like, shape, pieces

    def _sizes(self) -> tuple:
        return self.shape

    def plus(self, other):
        if isinstance(other, SliceGrad) and other.shape == self.shape:
            return SliceGrad(self.like, self.shape, self.pieces + other.pieces)
        return self.whole() + autograd._whole(other)

    def whole(self) -> Tensor:
        groups: dict[int, list] = {}  # cut dim -> [(range along it, gradient)]
        loose, total = [], None
        for key, g in self.pieces:
            ranges = _slice_ranges(key, self.shape)
            cuts = [] if ranges is None else [d for d, r in enumerate(ranges) if r != (0, self.shape[d])]
            if ranges is not None and not cuts:
                total = g.reshape(self.shape) if total is None else total + g.reshape(self.shape)
            elif ranges is not None and len(cuts) == 1:
                groups.setdefault(cuts[0], []).append((ranges[cuts[0]], g))
            else:
                loose.append((key, g))
        for cut, group in groups.items():
            group.sort(key=lambda piece: piece[0])
            if any(a[0][1] > b[0][0] for a, b in zip(group, group[1:])):  # overlapping: added in
                loose += [(_range_key(cut, r), g) for r, g in group]
                continue
            part = self._joined(cut, group)
            total = part if total is None else total + part
        if loose:
            out = self.like.new_zeros(self.shape)
            for key, g in loose:
                out = out._index_put(g, key, (), accumulate=True)
            total = out if total is None else total + out
        return total

    def _joined(self, cut: int, group: list) -> Tensor:
        """The pieces of one cut dim as one tensor of x's shape: a concatenation, zeros between."""
        shape = self.shape
        parts, at = [], 0
        for (lo, hi), g in group:
            if lo > at:
                parts.append(self.like.new_zeros(shape[:cut] + (lo - at,) + shape[cut + 1:]))
            parts.append(g.reshape(shape[:cut] + (hi - lo,) + shape[cut + 1:]))
            at = hi
        if at < shape[cut]:
            parts.append(self.like.new_zeros(shape[:cut] + (shape[cut] - at,) + shape[cut + 1:]))
        return cat(parts, cut) if len(parts) > 1 else parts[0]


def _range_key(dim: int, span: tuple[int, int]) -> tuple:
    return (("slice", None, None, None),) * dim + (("slice", span[0], span[1], 1),)


def _slice_ranges(key: tuple, shape: tuple) -> list[tuple[int, int]] | None:
    """Per dim of x, the [lo, hi) that `key` keeps, where it is slices of step 1 and indices (and
    nothing else) over integer sizes; else None."""
    if len(key) > len(shape):
        return None
    ranges = []
    for item, size in zip(key + (("slice", None, None, None),) * (len(shape) - len(key)), shape):
        if type(size) is not int:
            return None
        if type(item) is int and -size <= item < size:  # (an index: a slice of one, its dim dropped)
            ranges.append((item % size, item % size + 1))
            continue
        if type(item) is not tuple or item[0] != "slice":
            return None
        lo, hi, step = slice(*item[1:]).indices(size)
        if step != 1:
            return None
        ranges.append((lo, max(lo, hi)))
    return ranges


def _getitem_vjp(g, n):
    x, *tensors = n.inputs
    if not tensors and trace_state.tracer is None:  # (a trace's are the compiler's: `slices_as_cat`)
        return (SliceGrad(g, tuple(x.shape), [(n.params["key"], g)]),)
    zeros = g.new_zeros(x.shape)
    return (zeros._index_put(g, n.params["key"], tensors, accumulate=True),) + (None,) * len(tensors)

VJP["getitem"] = _getitem_vjp


def _index_put_vjp(g, n):
    x, v, *tensors = n.inputs
    key = n.params["key"]
    gx = g if n.params["accumulate"] else g._index_put(g.new_zeros(()), key, tensors, accumulate=False)
    gv = g._index(key, tensors)
    if gv.shape != v.shape:
        gv = sum_to_shape(gv, v.shape)
    return (gx, gv) + (None,) * len(tensors)

VJP["index_put"] = _index_put_vjp


def _cat_vjp(g, n):
    dim = n.params["dim"]
    grads, start = [], 0
    for x in n.inputs:
        size = x.shape[dim]
        grads.append(g.narrow(dim, start, size))
        start += size
    return tuple(grads)

VJP["cat"] = _cat_vjp


def _matmul_vjp(g, n):
    a, b = n.inputs
    ga = g @ b.mT if n.needs[0] else None
    gb = a.mT @ g if n.needs[1] else None
    return ga, gb

VJP["matmul"] = _matmul_vjp


def _einsum_vjp(g, n):
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

VJP["einsum"] = _einsum_vjp


def _gather_vjp(g, n):
    x, index = n.inputs
    return apply("scatter_add", g.new_zeros(x.shape), index, g, dim=n.params["dim"]), None


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

VJP["gather"] = _gather_vjp


VJP["scatter_add"] = _scatter_add_vjp


VJP["scatter"] = _scatter_vjp


def _unfold_vjp(g, n):
    p = n.params
    return (fold(g, n.inputs[0].shape[2:], p["kernel"], p["dilation"], p["padding"], p["stride"]),)


def _fold_vjp(g, n):
    p = n.params
    return (unfold(g, p["kernel"], p["dilation"], p["padding"], p["stride"]),)

VJP["unfold"] = _unfold_vjp


VJP["fold"] = _fold_vjp


def _attention_vjp(g, n):
    q, k, v = n.inputs
    if autograd._grad_mode.enabled:  # backward with create_graph=True: a gradient that is differentiable
        return _attention_vjp_with_ops(g, n)
    packed = apply("attention_backward", q, k, v, n.out, g, **n.params)
    return attention_gradients(packed, tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(n.needs))


def _attention_vjp_with_ops(g, n):
    """The attention's gradients written with ops on its materialized probabilities, so that
    autograd can differentiate them again (`attention_backward` has no vjp of its own)."""
    q, k, v = n.inputs
    scale = n.params["scale"]
    scores = (q * scale) @ k.mT
    if n.params["is_causal"]:
        keep = as_operand(np.tril(np.ones(tuple(scores.shape[-2:]), dtype=bool)), q)
        scores = scores.masked_fill(keep.logical_not(), float("-inf"))
    p = scores.softmax(-1)
    dp = g @ v.mT
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    return (ds @ k) * scale, (ds.mT @ q) * scale, p.mT @ g

VJP["attention"] = _attention_vjp


# ---------------------------------------------------------------------------------------------
# linear algebra: the matrix-calculus rules of PyTorch's derivatives.yaml (real matrices). A packed
# output's gradient arrives packed, zeros for the parts nothing read, and is unpacked like it.


def _packed_parts(g, n):
    """(the node's outputs, their gradients), each unpacked from the packed output."""
    shape = tuple(n.inputs[0].shape)
    return linalg.unpack(n.out, n.prim.name, shape, n.params), linalg.unpack(g, n.prim.name, shape, n.params)


def _as_matrix_scale(x):
    """(...) -> (..., 1, 1): a per-matrix scalar that broadcasts against the matrices."""
    return x.unsqueeze(-1).unsqueeze(-1)


VJP["inv"] = lambda g, n: (-(n.out.mT @ g @ n.out.mT),)


def _cofactors(A):
    """A's cofactor matrix, det(A) A^-T where A is invertible, through the SVD A = U S Vh so that
    it is finite for singular A too (as PyTorch's det gradient is): det(U) det(Vh) U diag(prod of
    the other singular values) Vh."""
    U, S, Vh = linalg.svd(A, full_matrices=False)
    eye = linalg.eye_like(S, S.shape[-1])
    others = where(eye > 0, 1.0, S.unsqueeze(-2)).prod(-1)
    return _as_matrix_scale(linalg.det(U) * linalg.det(Vh)) * (U * others.unsqueeze(-2)) @ Vh


VJP["det"] = lambda g, n: (_as_matrix_scale(g) * _cofactors(n.inputs[0]),)


def _slogdet_vjp(g, n):
    grad_logabsdet = g.narrow(-1, 1, 1).squeeze(-1)  # the sign is piecewise constant: no gradient
    return (_as_matrix_scale(grad_logabsdet) * linalg.inv(n.inputs[0]).mT,)

VJP["slogdet"] = _slogdet_vjp


def _solve_vjp(g, n):
    A, _ = n.inputs
    gB = apply("solve", A.mT, g)
    return (-(gB @ n.out.mT) if n.needs[0] else None), gB

VJP["solve"] = _solve_vjp


def _cholesky_vjp(g, n):
    """gA = L^-T Phi(L^T gL) L^-1, Phi taking the lower triangle with its diagonal halved, made
    symmetric (Murray 2016, arXiv:1602.07527)."""
    L, gL = (n.out.mT, g.mT) if n.params["upper"] else (n.out, g)
    P = (L.mT @ gL).tril()
    M = 0.5 * (P + P.tril(-1).mT)
    return (linalg.solve(L.mT, linalg.solve(L.mT, M).mT).mT,)

VJP["cholesky"] = _cholesky_vjp


def _qr_tall_vjp(gQ, gR, Q, R):
    """A = QR with Q m x n, R n x n (m >= n): gA = (gQ + Q copyltu(M)) R^-T, M = R gR^T - gQ^T Q,
    copyltu(M) the symmetric matrix with M's lower triangle."""
    M = R @ gR.mT - gQ.mT @ Q
    return linalg.solve(R, (gQ + Q @ (M.tril() + M.tril(-1).mT)).mT).mT


def _qr_vjp(g, n):
    (Q, R), (gQ, gR) = _packed_parts(g, n)
    m, cols = Q.shape[-2], R.shape[-1]
    if n.params["mode"] == "complete" and m > cols:
        raise NotImplementedError(f"The QR decomposition of {tuple(n.inputs[0].shape)} is not differentiable when "
                                  "mode='complete' and nrows > ncols. Use mode='reduced'.")
    if m >= cols:
        return (_qr_tall_vjp(gQ, gR, Q, R),)
    # A = [X | Y] with X m x m: X = QU and Y = QV, R = [U | V]
    Y, gU, gV = n.inputs[0].narrow(-1, m, cols - m), gR.narrow(-1, 0, m), gR.narrow(-1, m, cols - m)
    gX = _qr_tall_vjp(gQ + Y @ gV.mT, gU, Q, R.narrow(-1, 0, m))
    return (cat([gX, Q @ gV], -1),)

VJP["qr"] = _qr_vjp


def _eigh_vjp(g, n):
    """gA = V (diag(gL) + skew(V^T gV) / E) V^T, E_ij = L_j - L_i off the diagonal."""
    (L, V), (gL, gV) = _packed_parts(g, n)
    eye = linalg.eye_like(L, L.shape[-1])
    VtgV = V.mT @ gV
    E = L.unsqueeze(-2) - L.unsqueeze(-1) + eye
    inner = 0.5 * (VtgV - VtgV.mT) / E * (1 - eye) + diag_embed(gL)
    return (V @ inner @ V.mT,)

VJP["eigh"] = _eigh_vjp


def _svd_vjp(g, n):
    """PyTorch's svd_backward for the reduced factors (real case). Of full factors only the reduced
    part counts, as in PyTorch: the extra columns of U and rows of Vh are any orthonormal completion."""
    (U, S, Vh), (gU, gS, gVh) = _packed_parts(g, n)
    k = S.shape[-1]
    U, gU, Vh, gVh = U.narrow(-1, 0, k), gU.narrow(-1, 0, k), Vh.narrow(-2, 0, k), gVh.narrow(-2, 0, k)
    m, cols = U.shape[-2], Vh.shape[-1]
    eye = linalg.eye_like(S, S.shape[-1])
    UtgU = U.mT @ gU
    VtgV = Vh @ gVh.mT
    S2 = S * S
    E = S2.unsqueeze(-2) - S2.unsqueeze(-1) + eye
    inner = ((UtgU - UtgU.mT) * S.unsqueeze(-2) + S.unsqueeze(-1) * (VtgV - VtgV.mT)) / E + diag_embed(gS)
    if m > cols:
        gUSinv = gU / S.unsqueeze(-2)
        return ((U @ inner + gUSinv - U @ (U.mT @ gUSinv)) @ Vh,)
    if m < cols:
        SinvgVh = gVh / S.unsqueeze(-1)
        return (U @ (inner @ Vh + SinvgVh - (SinvgVh @ Vh.mT) @ Vh),)
    return (U @ inner @ Vh,)

VJP["svd"] = _svd_vjp


def _svdvals_vjp(g, n):
    U, _, Vh = linalg.svd(n.inputs[0], full_matrices=False)
    return (U @ (g.unsqueeze(-1) * Vh),)

VJP["svdvals"] = _svdvals_vjp


autograd.use_vjps(VJP)
