"""The primitive table: every primitive jitorch knows, each declared once, holding no kernel.

A primitive has
- `kind`: what sort of operation it is (elementwise, reduce, movement, ...), which fusion reads;
- `infer`: its shape/dtype rule (used by the meta device and the tracer): abstract values (anything
  with `.shape` and a numpy `.dtype`) and params in, (shape, numpy dtype) out;
- `saves`: the inputs (and whether the output) its vector-Jacobian product reads, so an in-place
  change to exactly those is caught at backward time; `saves_by_input`, where the gradient of each
  input reads different ones, what each reads (-1: the output), so a node saves only what the
  gradients it computes read (`a * b` with only `a` needing one saves `b`, as PyTorch does).

What a primitive computes lives with each backend (`jitorch.backends.<device>`: the eager kernels,
and the renderer of fused code); how it differentiates lives in `jitorch.gradients`. Everything else
(softmax, layer_norm, var, clamp, Adam, ...) is a composite in Python over these.
Params are hashable values (ints, tuples, DTypes) so an IR node can be printed, hashed and cached.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import numpy as np

from .errors import ShapeError
from .symbolic import is_symbolic

PRIMS: dict[str, Prim] = {}

# Primitives whose output may be a view of their first input (shares its storage and version).
VIEW_PRIMS = frozenset({"reshape", "permute", "expand", "getitem"})


class PrimKind(enum.Enum):
    ELEMENTWISE = "elementwise"
    REDUCE = "reduce"
    SCAN = "scan"
    MOVEMENT = "movement"
    INDEX = "index"
    MATMUL = "matmul"
    SORT = "sort"
    RANDOM = "random"
    EXTERN = "extern"  # not in the table: a compiled program's backward as one autograd step


class Prim:
    """One primitive operation. See the module docstring for the fields."""

    __slots__ = ("name", "kind", "infer", "saves", "saves_out", "saves_by_input", "saves_for")

    def __init__(self, name: str, kind: PrimKind, infer: Callable | None,
                 saves: tuple[int, ...] | None = (), saves_out: bool = False,
                 saves_by_input: tuple[tuple[int, ...], ...] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.infer = infer
        self.saves = saves
        self.saves_out = saves_out
        self.saves_by_input = saves_by_input
        self.saves_for: dict[tuple[bool, ...], tuple[tuple[int, ...], bool]] = {}  # needs -> (saves, saves_out)

    def saved_when(self, needs: tuple[bool, ...]) -> tuple[tuple[int, ...], bool]:
        """(inputs saved, whether the output is) for a node whose inputs need gradients as `needs`:
        what the gradients it computes read (`saves_by_input`), worked out once per pattern."""
        found = self.saves_for.get(needs)
        if found is None:
            read = {j for reads, need in zip(self.saves_by_input, needs) if need for j in reads}
            found = self.saves_for[needs] = (tuple(i for i in self.saves if i in read), -1 in read)
        return found

    def __repr__(self) -> str:
        return f"Prim({self.name})"


def defprim(name: str, kind: PrimKind, infer: Callable, saves: tuple[int, ...] | None = (),
            saves_out: bool = False, saves_by_input: tuple[tuple[int, ...], ...] | None = None) -> Prim:
    """Declare a primitive. `saves=None` means its vjp reads every input; `saves_by_input[i]` lists
    what input i's gradient reads (-1: the output), when that differs per input."""
    if name in PRIMS:
        raise ValueError(f"primitive {name!r} is declared twice")
    if saves_by_input is not None:  # `saves` and `saves_out` stay the union: what the vjp may read
        read = {j for reads in saves_by_input for j in reads}
        saves, saves_out = tuple(sorted(j for j in read if j >= 0)), -1 in read
    prim = Prim(name, kind, infer, saves, saves_out, saves_by_input)
    PRIMS[name] = prim
    return prim


# ---------------------------------------------------------------------------------------------
# shape rules
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


def reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in dims)


def sum_dtype(dtype):
    return np.dtype(np.int64) if dtype.kind in "biu" else dtype


defprim("neg", PrimKind.ELEMENTWISE, _same_dtype)
defprim("exp", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("log", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("log1p", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("expm1", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("sqrt", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("rsqrt", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("sin", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("cos", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("tanh", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("sigmoid", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("abs", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("sign", PrimKind.ELEMENTWISE, _same_dtype)
defprim("floor", PrimKind.ELEMENTWISE, _same_dtype)
defprim("ceil", PrimKind.ELEMENTWISE, _same_dtype)
defprim("round", PrimKind.ELEMENTWISE, _same_dtype)
defprim("trunc", PrimKind.ELEMENTWISE, _same_dtype)
defprim("reciprocal", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("erf", PrimKind.ELEMENTWISE, _same_dtype, saves=(0,))
defprim("logical_not", PrimKind.ELEMENTWISE, _bool_out)
defprim("isnan", PrimKind.ELEMENTWISE, _bool_out)
defprim("isinf", PrimKind.ELEMENTWISE, _bool_out)
defprim("relu", PrimKind.ELEMENTWISE, _same_dtype, saves_out=True)
defprim("relu_backward", PrimKind.ELEMENTWISE, _same_dtype, saves=(1,))


def _cast_infer(x, dtype):
    return x.shape, dtype.np

defprim("cast", PrimKind.ELEMENTWISE, _cast_infer)
defprim("add", PrimKind.ELEMENTWISE, _same_dtype)
defprim("sub", PrimKind.ELEMENTWISE, _same_dtype)
defprim("mul", PrimKind.ELEMENTWISE, _same_dtype, saves_by_input=((1,), (0,)))
defprim("div", PrimKind.ELEMENTWISE, _same_dtype, saves_by_input=((1,), (1, -1)))
defprim("pow", PrimKind.ELEMENTWISE, _same_dtype, saves=(0, 1), saves_out=True)
defprim("maximum", PrimKind.ELEMENTWISE, _same_dtype, saves=(0, 1))
defprim("minimum", PrimKind.ELEMENTWISE, _same_dtype, saves=(0, 1))
defprim("remainder", PrimKind.ELEMENTWISE, _same_dtype, saves_by_input=((), (0, 1)))
defprim("floor_divide", PrimKind.ELEMENTWISE, _same_dtype)
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"):
    defprim(_name, PrimKind.ELEMENTWISE, _bool_out)


# integer bit operations (`&`, `|`, `^`, `~` on int tensors); on bools they are the logical ops
defprim("bitwise_and", PrimKind.ELEMENTWISE, _same_dtype)
defprim("bitwise_or", PrimKind.ELEMENTWISE, _same_dtype)
defprim("bitwise_xor", PrimKind.ELEMENTWISE, _same_dtype)
defprim("bitwise_not", PrimKind.ELEMENTWISE, _same_dtype)


def _where_infer(c, x, y):
    return broadcast_shapes(c.shape, x.shape, y.shape), x.dtype

defprim("where", PrimKind.ELEMENTWISE, _where_infer, saves=(0,))


def _reduce_infer(x, dims, keepdim):
    return reduced_shape(x.shape, dims, keepdim), x.dtype


def _sum_infer(x, dims, keepdim):
    return reduced_shape(x.shape, dims, keepdim), sum_dtype(x.dtype)

defprim("sum", PrimKind.REDUCE, _sum_infer)
defprim("prod", PrimKind.REDUCE, _sum_infer, saves=(0,), saves_out=True)
defprim("amax", PrimKind.REDUCE, _reduce_infer, saves=(0,), saves_out=True)
defprim("amin", PrimKind.REDUCE, _reduce_infer, saves=(0,), saves_out=True)


def _arg_infer(x, dim, keepdim):
    dims = tuple(range(len(x.shape))) if dim is None else (dim,)
    return reduced_shape(x.shape, dims, keepdim), np.dtype(np.int64)

defprim("argmax", PrimKind.REDUCE, _arg_infer)
defprim("argmin", PrimKind.REDUCE, _arg_infer)


def _cumsum_infer(x, dim):
    return x.shape, sum_dtype(x.dtype)

defprim("cumsum", PrimKind.SCAN, _cumsum_infer)


def _reshape_infer(x, shape):
    return tuple(shape), x.dtype

defprim("reshape", PrimKind.MOVEMENT, _reshape_infer)


def _permute_infer(x, dims):
    return tuple(x.shape[d] for d in dims), x.dtype

defprim("permute", PrimKind.MOVEMENT, _permute_infer)
defprim("expand", PrimKind.MOVEMENT, _reshape_infer)
defprim("flip", PrimKind.MOVEMENT, lambda x, dims: (x.shape, x.dtype))
defprim("copy", PrimKind.ELEMENTWISE, _same_dtype)


def _pad_infer(x, pads, value):
    return tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)), x.dtype

defprim("pad", PrimKind.MOVEMENT, _pad_infer)


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

def _getitem_infer(x, *tensors, key):
    if is_symbolic((tuple(x.shape), key, *(tuple(t.shape) for t in tensors))):
        return getitem_shape(tuple(x.shape), key, [tuple(t.shape) for t in tensors]), x.dtype
    # numpy as a shape calculator: index a zero-stride stand-in (basic indexing costs nothing)
    index = numpy_key(key, [np.broadcast_to(np.zeros((), t.dtype), t.shape) for t in tensors])
    out = np.broadcast_to(np.zeros((), x.dtype), x.shape)[index]
    return np.shape(out), x.dtype


def getitem_shape(shape: tuple, key: tuple, index_shapes: list[tuple]) -> tuple:
    """The shape `x[key]` has (numpy's rules, as `_getitem_infer` computes them with numpy), by
    arithmetic on the sizes, so that it holds for symbolic ones: a slice of a symbolic dim has a
    symbolic length."""
    consumed = sum(item is not None and item is not Ellipsis for item in key)
    out: list = []
    advanced: list[tuple] = []  # the index tensors' shapes
    advanced_at, adjacent, last = None, True, None
    dim = 0
    for k, item in enumerate(key):
        if item is None:
            out.append(1)
        elif item is Ellipsis:
            out.extend(shape[dim:dim + len(shape) - consumed])
            dim += len(shape) - consumed
        elif type(item) is tuple and item[0] == "slice":
            out.append(_slice_length(shape[dim], *item[1:]))
            dim += 1
        elif type(item) is tuple:  # ("tensor", i)
            if advanced_at is None:
                advanced_at = len(out)
            elif last != k - 1:
                adjacent = False
            advanced.append(index_shapes[item[1]])
            last = k
            dim += 1
        else:  # an int
            dim += 1
    out.extend(shape[dim:])
    if advanced:
        index = broadcast_shapes(*advanced)
        at = advanced_at if adjacent else 0
        out[at:at] = index
    return tuple(out)


def _slice_length(size, start, stop, step) -> int:
    """len(range(size)[start:stop:step]) as Python computes it (comparisons on symbolic sizes guard)."""
    step = 1 if step is None else step
    start = 0 if start is None else (start + size if start < 0 else start)
    stop = size if stop is None else (stop + size if stop < 0 else stop)
    start, stop = max(0, min(start, size)), max(0, min(stop, size))
    return max(0, (stop - start + step - 1) // step)


defprim("getitem", PrimKind.MOVEMENT, _getitem_infer)


def _index_put_infer(x, v, *tensors, key, accumulate):
    return x.shape, x.dtype

defprim("index_put", PrimKind.INDEX, _index_put_infer)


def _cat_infer(*xs, dim):
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    return tuple(shape), xs[0].dtype

defprim("cat", PrimKind.MOVEMENT, _cat_infer)


def _matmul_infer(a, b):
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)} "
            f"({a.shape[-1]} != {b.shape[-2]}). Transpose one operand or fix the layer sizes."
        )
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), a.dtype

defprim("matmul", PrimKind.MATMUL, _matmul_infer, saves_by_input=((1,), (0,)))


def _einsum_infer(*xs, equation):
    lhs, out = equation.split("->")
    sizes: dict[str, int] = {}
    for subs, x in zip(lhs.split(","), xs):
        for c, d in zip(subs, x.shape):
            if sizes.setdefault(c, d) != d and d != 1:
                if sizes[c] != 1:
                    raise ShapeError(f"einsum {equation}: subscript {c!r} has sizes {sizes[c]} and {d}")
                sizes[c] = d
    dtype = np.result_type(*[x.dtype for x in xs])
    return tuple(sizes[c] for c in out), dtype


defprim("einsum", PrimKind.MATMUL, _einsum_infer, saves=None)


def _check_attention_operands(name: str, q, k, v) -> None:
    """q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) of one float dtype, or a ShapeError/TypeError
    naming all three."""
    shown = f"query {tuple(q.shape)} {q.dtype}, key {tuple(k.shape)} {k.dtype}, value {tuple(v.shape)} {v.dtype}"
    if not (len(q.shape) == len(k.shape) == len(v.shape) == 4):
        raise ShapeError(f"{name}: query, key and value must be 4-D (batch, heads, length, embedding); got {shown}")
    if q.shape[:2] != k.shape[:2] or q.shape[:2] != v.shape[:2]:
        raise ShapeError(f"{name}: query, key and value must share their (batch, heads) dims; got {shown}. "
                         "Expand or reshape them to a common batch first.")
    if q.shape[3] != k.shape[3] or k.shape[2] != v.shape[2]:
        raise ShapeError(f"{name}: query and key must have the same embedding size and key and value the same "
                         f"length; got {shown}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype.kind not in "fV":  # ml_dtypes' bfloat16 is of kind "V"
        raise TypeError(f"{name}: query, key and value must have one floating dtype; got {shown}")


def _attention_infer(q, k, v, is_causal, scale):
    _check_attention_operands("attention", q, k, v)
    return q.shape[:3] + v.shape[3:], q.dtype


def attention_backward_sizes(q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...]
                             ) -> tuple[int, int, int]:
    """The element counts of dq, dk and dv, which `attention_backward` packs one after the other."""
    return math.prod(q_shape), math.prod(k_shape), math.prod(v_shape)


def attention_gradients(packed, q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...],
                        needed: tuple[bool, bool, bool] = (True, True, True)) -> tuple:
    """dq, dk and dv as (B, H, length, E) views of `attention_backward`'s packed output (an array or
    a Tensor), None where not `needed`. They are stored heads-inside, as the (B, length, H * E)
    projections around attention lay them out, so that turning a gradient back into one (a permute
    and a reshape) is a view, not a copy: where q, k and v have one shape (self-attention) as one
    (B, length, 3, H, E) array, the layout of the gradient of a fused q/k/v projection's output
    (the concatenation of the three is then a view too); else one (B, length, H, E) after another."""
    if tuple(q_shape) == tuple(k_shape) == tuple(v_shape):
        b, h, length, e = q_shape
        rows = packed.reshape(b, length, 3, h, e)
        return tuple(rows[:, :, i].swapaxes(1, 2) if needs else None for i, needs in enumerate(needed))
    grads, start = [], 0
    for shape, size, needs in zip((q_shape, k_shape, v_shape), attention_backward_sizes(q_shape, k_shape, v_shape),
                                  needed):
        b, h, length, e = shape
        grads.append(packed[start:start + size].reshape(b, length, h, e).swapaxes(1, 2) if needs else None)
        start += size
    return tuple(grads)


def _attention_backward_infer(q, k, v, out, grad_out, is_causal, scale):
    _check_attention_operands("attention_backward", q, k, v)
    expected = q.shape[:3] + v.shape[3:]
    if tuple(out.shape) != expected or tuple(grad_out.shape) != expected:
        raise ShapeError(f"attention_backward: out {tuple(out.shape)} and grad_out {tuple(grad_out.shape)} must "
                         f"both have the attention's output shape {expected}")
    return (sum(attention_backward_sizes(q.shape, k.shape, v.shape)),), q.dtype


# Attention, softmax(q k^T * scale) v with an optional causal mask (query i sees keys j <= i), over
# (B, H, L, E) queries and (B, H, S, E), (B, H, S, Ev) keys and values: one primitive, so that a
# backend may compute it without the (B, H, L, S) scores (a flash-attention kernel on the GPU).
# One output per primitive: its backward returns dq, dk and dv packed flat in that order (views of
# it are the gradients: `attention_gradients`), and recomputes the softmax's row statistics from q
# and k instead of taking them from the forward.
defprim("attention", PrimKind.MATMUL, _attention_infer, saves=(0, 1, 2), saves_out=True)
defprim("attention_backward", PrimKind.MATMUL, _attention_backward_infer)


def _gather_infer(x, index, dim):
    return index.shape, x.dtype


def _scatter_infer(x, index, src, dim):
    return x.shape, x.dtype

defprim("gather", PrimKind.INDEX, _gather_infer, saves=(1,))
defprim("scatter_add", PrimKind.INDEX, _scatter_infer, saves=(1,))
defprim("scatter", PrimKind.INDEX, _scatter_infer, saves=(1,))
defprim("argsort", PrimKind.SORT, lambda x, dim, descending: (x.shape, np.dtype(np.int64)))


def conv_out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _unfold_infer(x, kernel, dilation, padding, stride):
    n, c, h, w = x.shape
    oh = conv_out_size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = conv_out_size(w, kernel[1], stride[1], padding[1], dilation[1])
    return (n, c * kernel[0] * kernel[1], oh * ow), x.dtype


def _fold_infer(cols, output_size, kernel, dilation, padding, stride):
    c = cols.shape[1] // (kernel[0] * kernel[1])
    return (cols.shape[0], c) + tuple(output_size), cols.dtype

defprim("unfold", PrimKind.MOVEMENT, _unfold_infer)
defprim("fold", PrimKind.MOVEMENT, _fold_infer)


def _random_infer(seed, counter, *, shape, dtype, dist, offset):
    return tuple(shape), dtype.np

defprim("random", PrimKind.RANDOM, _random_infer)


# ---------------------------------------------------------------------------------------------
# linear algebra (`jitorch.linalg`): factorizations and solves over the last two dims, batched over
# the leading ones. They are of kind MATMUL, which no renderer fuses and the joint split never
# recomputes: each runs as its eager kernel (`xp.linalg`) inside a compiled program too. One output
# per primitive: a factorization with several (qr, eigh, svd, slogdet) packs them flat along its last
# dim, in the order `linalg_parts` gives, and `jitorch.linalg` unpacks views of it.


class LinAlgError(RuntimeError, ValueError):
    """A matrix a factorization or solve cannot take (singular, not positive-definite): a
    RuntimeError, as PyTorch's `torch.linalg.LinAlgError`, and a ValueError, so that dispatch adds
    the op's input shapes to its message."""


def check_square(name: str, shape: tuple[int, ...]) -> None:
    """A ShapeError naming `shape` unless it is a (batch of) square matrices."""
    if len(shape) < 2:
        raise ShapeError(f"{name}: The input tensor A must have at least 2 dimensions; got shape {tuple(shape)}. "
                         "Add a batch or matrix dim with unsqueeze.")
    if shape[-1] != shape[-2]:
        raise ShapeError(f"{name}: A must be batches of square matrices, but they are {shape[-2]} by {shape[-1]} "
                         f"matrices (shape {tuple(shape)})")


def linalg_parts(name: str, shape: tuple[int, ...], params: dict) -> list[tuple[int, ...]]:
    """The matrix shapes of the outputs packed in a linear-algebra primitive's output, in order, for
    an input of `shape` (batch dims first)."""
    m, n = shape[-2], shape[-1]
    k = min(m, n)
    if name == "slogdet":
        return [(), ()]  # sign, log|det|
    if name == "qr":
        q_cols = m if params["mode"] == "complete" else k
        return [(m, q_cols), (q_cols, n)]
    if name == "eigh":
        return [(n,), (n, n)]  # eigenvalues (ascending), eigenvectors as columns
    if name == "svd":
        full = params["full_matrices"]
        return [(m, m if full else k), (k,), (n if full else k, n)]
    raise KeyError(name)


def _packed_infer(name: str):
    def infer(a, **params):
        if name in ("slogdet", "eigh"):
            check_square(f"linalg.{name}", a.shape)
        size = sum(math.prod(part) for part in linalg_parts(name, a.shape, params))
        return tuple(a.shape[:-2]) + (size,), a.dtype
    return infer


def _square_infer(name: str):
    def infer(a, **params):
        check_square(f"linalg.{name}", a.shape)
        return a.shape, a.dtype
    return infer


def _det_infer(a):
    check_square("linalg.det", a.shape)
    return a.shape[:-2], a.dtype


def check_solve_operands(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    """A ShapeError naming both shapes unless A X = B is solvable: square A, B with A's rows."""
    check_square("linalg.solve", a_shape)
    if len(b_shape) < 2 or b_shape[-2] != a_shape[-1]:
        raise ShapeError(f"linalg.solve: Incompatible shapes of A and B for the equation AX = B "
                         f"({tuple(a_shape[-2:])} and {tuple(b_shape[-2:])}); A is {tuple(a_shape)}, "
                         f"B {tuple(b_shape)}")


def _solve_infer(a, b):
    check_solve_operands(tuple(a.shape), tuple(b.shape))
    return broadcast_shapes(a.shape[:-2], b.shape[:-2]) + tuple(b.shape[-2:]), a.dtype


def _svdvals_infer(a):
    return tuple(a.shape[:-2]) + (min(a.shape[-2:]),), a.dtype


defprim("inv", PrimKind.MATMUL, _square_infer("inv"), saves_out=True)
defprim("det", PrimKind.MATMUL, _det_infer, saves=(0,), saves_out=True)
defprim("slogdet", PrimKind.MATMUL, _packed_infer("slogdet"), saves=(0,))
defprim("solve", PrimKind.MATMUL, _solve_infer, saves=(0,), saves_out=True)
defprim("cholesky", PrimKind.MATMUL, _square_infer("cholesky"), saves_out=True)
defprim("qr", PrimKind.MATMUL, _packed_infer("qr"), saves_out=True)
defprim("eigh", PrimKind.MATMUL, _packed_infer("eigh"), saves_out=True)
defprim("svd", PrimKind.MATMUL, _packed_infer("svd"), saves_out=True)
defprim("svdvals", PrimKind.MATMUL, _svdvals_infer, saves=(0,))
