"""`jitorch.linalg`: PyTorch's `torch.linalg`, over batches of matrices (the last two dims).

Norms are composites of ops. Factorizations and solves are primitives (`jitorch.primitives`: inv,
det, slogdet, solve, cholesky, qr, eigh, svd, svdvals) with eager kernels over `xp.linalg` and
gradient rules in `jitorch.gradients`; those with several outputs pack them flat and are unpacked
here. `lstsq` is a composite of qr and solve, so it differentiates through them.

    >>> import jitorch as jt
    >>> A = jt.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=jt.float64)
    >>> jt.linalg.solve(A, jt.tensor([1.0, 2.0], dtype=jt.float64))
    tensor([0.0909, 0.6364], dtype=jitorch.float64)
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from . import dtypes as _dt
from . import ops as _ops
from .dispatch import dispatch
from .errors import ShapeError
from .ops import as_operand, movedim, where
from .primitives import PRIMS, LinAlgError, broadcast_shapes, check_solve_operands, check_square, linalg_parts
from .tensor import Tensor, _wrap_dim

__all__ = ["LinAlgError", "cholesky", "cond", "cross", "det", "diagonal", "eigh", "eigvalsh", "inv", "lstsq", "matmul",
           "matrix_norm", "matrix_power", "matrix_rank", "multi_dot", "norm", "pinv", "qr", "slogdet", "solve",
           "solve_triangular", "svd", "svdvals", "vander", "vecdot", "vector_norm"]

slogdet_result = namedtuple("linalg_slogdet", ["sign", "logabsdet"])
qr_result = namedtuple("linalg_qr", ["Q", "R"])
eigh_result = namedtuple("linalg_eigh", ["eigenvalues", "eigenvectors"])
svd_result = namedtuple("linalg_svd", ["U", "S", "Vh"])
lstsq_result = namedtuple("linalg_lstsq", ["solution", "residuals", "rank", "singular_values"])

_LINALG_DTYPES = (_dt.float32, _dt.float64)


def _checked(name: str, A: Tensor, square: bool = True) -> Tensor:
    """`A` if it is a float32/float64 (batch of) matrices (square ones where `square`), else the
    error PyTorch raises, naming the shape and what to do."""
    if A.dtype not in _LINALG_DTYPES:
        raise TypeError(f"linalg.{name}: Expected a floating point tensor as input. Got {A.dtype.name} (shape "
                        f"{tuple(A.shape)}). Convert it with .double() or .float() first.")
    if square:
        check_square(f"linalg.{name}", tuple(A.shape))
    elif A.ndim < 2:
        raise ShapeError(f"linalg.{name}: The input tensor A must have at least 2 dimensions; got shape "
                         f"{tuple(A.shape)}. Add a matrix dim with unsqueeze.")
    return A


def _apply(name: str, *inputs: Tensor, **params) -> Tensor:
    return dispatch(PRIMS[name], inputs, params)


def unpack(packed: Tensor, name: str, shape: tuple[int, ...], params: dict) -> list[Tensor]:
    """The outputs packed flat in a linear-algebra primitive's output (for an input of `shape`), as
    views shaped batch + each part's matrix shape."""
    batch, parts, start = tuple(shape[:-2]), [], 0
    for part in linalg_parts(name, tuple(shape), params):
        size = math.prod(part)
        parts.append(packed.narrow(-1, start, size).reshape(batch + part))
        start += size
    return parts


def _factor(name: str, A: Tensor, **params) -> list[Tensor]:
    return unpack(_apply(name, A, **params), name, tuple(A.shape), params)


def eye_like(A: Tensor, n: int) -> Tensor:
    """The n x n identity in `A`'s dtype, on its device."""
    return as_operand(np.eye(n, dtype=A.dtype.np), A)


# ---------------------------------------------------------------------------------------------
# inverses, determinants and solves


def inv(A: Tensor) -> Tensor:
    """The inverse of each square matrix; a LinAlgError naming the batch element if one is singular."""
    return _apply("inv", _checked("inv", A))


def det(A: Tensor) -> Tensor:
    """The determinant of each square matrix, (..., n, n) -> (...)."""
    return _apply("det", _checked("det", A))


def slogdet(A: Tensor) -> slogdet_result:
    """(sign, log|det|) of each square matrix: the determinant without overflow or underflow."""
    sign, logabsdet = _factor("slogdet", _checked("slogdet", A))
    return slogdet_result(sign, logabsdet)


def _is_vector_rhs(A: Tensor, B: Tensor) -> bool:
    """PyTorch's rule: B is a (batch of) vectors if it is 1-D or has A's shape without its last dim."""
    return B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))


def solve(A: Tensor, B: Tensor, *, left: bool = True) -> Tensor:
    """X with A X = B (or X A = B with left=False), for square A (..., n, n) and B (..., n, k) or a
    batch of vectors (..., n); batch dims broadcast. Better conditioned and cheaper than inv(A) @ B."""
    _checked("solve", A)
    if B.dtype is not A.dtype:
        raise TypeError(f"linalg.solve: Expected A and B to have the same dtype, but found A of type "
                        f"{A.dtype.name} and B of type {B.dtype.name} instead. Convert one with .to(dtype).")
    if not left:
        return solve(A.mT, B.mT).mT
    rhs = B.unsqueeze(-1) if _is_vector_rhs(A, B) else B
    check_solve_operands(tuple(A.shape), tuple(rhs.shape))
    X = _apply("solve", A, rhs)
    return X.squeeze(-1) if rhs is not B else X


def cholesky(A: Tensor, *, upper: bool = False) -> Tensor:
    """L lower triangular with A = L L^T for symmetric positive-definite A (upper=True: U = L^T).
    Only the lower triangle of A is read."""
    return _apply("cholesky", _checked("cholesky", A), upper=bool(upper))


def lstsq(A: Tensor, B: Tensor, rcond: float | None = None, *, driver: str | None = None) -> lstsq_result:
    """The least-squares solution X of A X = B, for A (..., m, n) of full rank (the minimum-norm
    solution when m < n), through a QR factorization so that it differentiates through qr and solve.
    As PyTorch's CPU default ('gelsy') it returns the rank but empty residuals and singular values;
    driver 'gelsd' or 'gelss' also gives those (residuals where m > n)."""
    _checked("lstsq", A, square=False)
    if B.ndim < A.ndim - 1:
        raise ShapeError(f"linalg.lstsq: B must have at least A's number of dims less one; got A {tuple(A.shape)} "
                         f"and B {tuple(B.shape)}. Unsqueeze B's batch dims.")
    vector = B.ndim == A.ndim - 1
    rhs = B.unsqueeze(-1) if vector else B
    m, n = A.shape[-2], A.shape[-1]
    if m >= n:
        Q, R = qr(A)
        X = solve(R, Q.mT @ rhs)
    else:
        Q, R = qr(A.mT)
        X = Q @ solve(R.mT, rhs)
    sv = svdvals(A)
    rcond = _dt.finfo(A.dtype).eps * max(m, n) if rcond is None else rcond
    rank = (sv > rcond * sv.amax(-1, keepdim=True)).sum(-1)
    empty = A.new_zeros((0,))
    residuals, singular_values = empty, empty
    if driver in ("gelsd", "gelss"):
        singular_values = sv
        if m > n and bool((rank == n).all()):
            residuals = ((A @ X - rhs) ** 2).sum(-2)
    return lstsq_result(X.squeeze(-1) if vector else X, residuals, rank, singular_values)


def solve_triangular(A: Tensor, B: Tensor, *, upper: bool, left: bool = True, unitriangular: bool = False) -> Tensor:
    """X with A X = B (or X A = B with left=False) for triangular A (..., n, n), reading only its
    upper or lower triangle (and taking its diagonal as ones if `unitriangular`), so no gradient
    reaches the other. B (..., n, k) is a batch of matrices; batch dims broadcast."""
    _checked("solve_triangular", A)
    if B.ndim < 2:
        raise ShapeError(f"linalg.solve_triangular: The input tensor B must have at least 2 dimensions; got shape "
                         f"{tuple(B.shape)}. Add a column dim with unsqueeze(-1).")
    n = A.shape[-1]
    T = A.triu(1 if unitriangular else 0) if upper else A.tril(-1 if unitriangular else 0)
    if unitriangular:
        T = T + eye_like(A, n)
    if not left:
        return solve_triangular(A.mT, B.mT, upper=not upper, unitriangular=unitriangular).mT
    batch = broadcast_shapes(tuple(T.shape[:-2]), tuple(B.shape[:-2]))
    return solve(T.expand(batch + (n, n)), B.expand(batch + tuple(B.shape[-2:])))


def _tolerances(A: Tensor, S_max: Tensor, atol, rtol) -> Tensor:
    """PyTorch's cutoff for pinv and matrix_rank: max(atol, rtol * largest singular value), rtol
    defaulting to eps * max(m, n) when neither is given and to 0 when only atol is."""
    if rtol is None:
        rtol = _dt.finfo(A.dtype).eps * max(A.shape[-2:]) if atol is None or _is_zero(atol) else 0.0
    cutoff = S_max * rtol
    if atol is not None:
        cutoff = _ops.maximum(cutoff, atol if isinstance(atol, Tensor) else as_operand(atol, cutoff, cutoff.dtype))
    return cutoff


def _is_zero(value) -> bool:
    return not isinstance(value, Tensor) and value == 0


def pinv(A: Tensor, rcond=None, hermitian: bool = False, *, atol=None, rtol=None) -> Tensor:
    """The Moore-Penrose pseudo-inverse of each matrix (..., m, n) -> (..., n, m), through an SVD
    (with hermitian=True an eigendecomposition reading the lower triangle): singular values at or
    below max(atol, rtol * the largest) count as zero. `rcond` is PyTorch's older name for rtol.
    The gradient is PyTorch's: that of the pseudo-inverse at a fixed rank (see `_pinv_tangent`).

        >>> jt.linalg.pinv(jt.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=jt.float64))  # rank 1
        tensor([[0.0400, 0.0800],
                [0.0400, 0.0800]], dtype=jitorch.float64)
    """
    _checked("pinv", A, square=hermitian)
    if rcond is not None:
        if rtol is not None or atol is not None:
            raise TypeError("linalg.pinv: rcond (the older name of rtol) can't be given with rtol or atol; pass only "
                            "rtol and atol")
        rtol = rcond
    if min(A.shape[-2:]) == 0:
        return A.new_zeros(tuple(A.shape[:-2]) + (A.shape[-1], A.shape[-2]))
    A_value = A.detach()
    if hermitian:
        eigenvalues, V = eigh(A_value)
        cutoff = _tolerances(A, eigenvalues.abs().amax(-1, keepdim=True), atol, rtol)
        keep = eigenvalues.abs() > cutoff
        inverted = where(keep, 1.0 / where(keep, eigenvalues, 1.0), 0.0)
        P = (V * inverted.unsqueeze(-2)) @ V.mT
    else:
        U, S, Vh = svd(A_value, full_matrices=False)
        keep = S > _tolerances(A, S.amax(-1, keepdim=True), atol, rtol)
        inverted = where(keep, 1.0 / where(keep, S, 1.0), 0.0)
        P = (Vh.mT * inverted.unsqueeze(-2)) @ U.mT
    if not A.requires_grad:
        return P
    tangent = _pinv_tangent(A, A_value, P)
    return P + (tangent - tangent.detach())  # P's value, the tangent's gradient


def _pinv_tangent(A: Tensor, A_value: Tensor, P: Tensor) -> Tensor:
    """A function of A, linear in it, whose derivative at A_value is that of the pseudo-inverse P at a
    fixed rank (Golub and Pereyra): dP = -P dA P + P P^T dA^T (I - A P) + (I - P A) dA^T P^T P.
    Through an SVD the gradient would also carry the truncated singular values' 1/(s_i^2 - s_j^2)
    couplings; this is the one PyTorch gives, whatever the cutoff."""
    m, n = A.shape[-2], A.shape[-1]
    from_left = eye_like(A, m) - A_value @ P
    from_right = eye_like(A, n) - P @ A_value
    return -(P @ A @ P) + (P @ P.mT) @ A.mT @ from_left + from_right @ A.mT @ (P.mT @ P)


def matrix_rank(A: Tensor, tol=None, hermitian: bool = False, *, atol=None, rtol=None) -> Tensor:
    """The number of singular values (|eigenvalues| with hermitian=True) above max(atol, rtol * the
    largest) of each matrix, as int64; `tol` is PyTorch's older name for atol."""
    _checked("matrix_rank", A, square=hermitian)
    if tol is not None:
        if atol is not None:
            raise RuntimeError("linalg.matrix_rank: tol and atol are the same argument (tol is its older name); "
                               "pass only atol")
        atol = tol
    S = eigvalsh(A).abs() if hermitian else svdvals(A)
    if S.shape[-1] == 0:
        return S.sum(-1).to(_dt.int64)
    cutoff = _tolerances(A, S.amax(-1, keepdim=True), atol, rtol)
    return (S > cutoff).sum(-1)


def matrix_power(A: Tensor, n: int) -> Tensor:
    """A multiplied by itself n times (by repeated squaring: about 2 log2(n) matmuls); n = 0 gives
    the identity, n < 0 the power of inv(A). Any dtype for n >= 0, float32/float64 for n < 0."""
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"linalg.matrix_power: A must be batches of square matrices, but they are "
                         f"{A.shape[-2] if A.ndim >= 2 else 1} by {A.shape[-1] if A.ndim else 1} matrices (shape "
                         f"{tuple(A.shape)})")
    if not isinstance(n, (int, np.integer)):
        raise TypeError(f"linalg.matrix_power: n must be an int, got {type(n).__name__}")
    n = int(n)
    if n == 0:
        # the identity, but as a function of A (zero gradient), as PyTorch's copy of the identity into A
        identity = as_operand(np.eye(A.shape[-1], dtype=A.dtype.np), A)
        return where(as_operand(np.ones(A.shape[-2:], dtype=bool), A), identity, A)
    if n < 0:
        A, n = inv(A), -n
    result, square = None, A
    while n:
        if n & 1:
            result = square if result is None else result @ square
        n >>= 1
        if n:
            square = square @ square
    return result


def cond(A: Tensor, p=None) -> Tensor:
    """The condition number of each matrix in the norm `p`: for None or 2 (-2) the ratio of the
    largest (smallest) singular value to the smallest (largest); otherwise norm(A) * norm(inv(A))."""
    if p in (None, 2, -2):
        S = svdvals(_checked("cond", A, square=False))
        return S.amax(-1) / S.amin(-1) if p in (None, 2) else S.amin(-1) / S.amax(-1)
    _checked("cond", A)
    return matrix_norm(A, p) * matrix_norm(inv(A), p)


# ---------------------------------------------------------------------------------------------
# products and views


def matmul(input: Tensor, other: Tensor) -> Tensor:
    """`jitorch.matmul`, under its torch.linalg name."""
    return _ops.matmul(input, other)


def vecdot(x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
    """The dot product of the vectors along `dim` (batch dims broadcast)."""
    return (x * y).sum(dim)


def multi_dot(tensors) -> Tensor:
    """The product of a chain of matrices, the first and last of which may be vectors (a row and a
    column vector); multiplied in the order that costs fewest multiplications, as PyTorch does."""
    tensors = list(tensors)
    if len(tensors) < 2:
        raise RuntimeError(f"multi_dot(): expected at least 2 tensors but got {len(tensors)}")
    first_vector, last_vector = tensors[0].ndim == 1, tensors[-1].ndim == 1
    mats = [tensors[0].unsqueeze(0) if first_vector else tensors[0], *tensors[1:-1],
            tensors[-1].unsqueeze(-1) if last_vector else tensors[-1]]
    for i, m in enumerate(mats):
        if m.ndim != 2:
            which = "the first tensor" if i == 0 else "the last tensor" if i == len(mats) - 1 else f"tensor {i}"
            allowed = "1D or 2D" if i in (0, len(mats) - 1) else "2D"
            raise RuntimeError(f"multi_dot(): {which} must be {allowed} but got {tensors[i].ndim}D (shape "
                               f"{tuple(tensors[i].shape)})")
    for i in range(len(mats) - 1):
        if mats[i].shape[1] != mats[i + 1].shape[0]:
            raise RuntimeError(f"multi_dot(): tensors {i} and {i + 1} with shapes {tuple(tensors[i].shape)} and "
                               f"{tuple(tensors[i + 1].shape)} cannot be multiplied")
    out = _chain_product(mats, _chain_order([m.shape[0] for m in mats] + [mats[-1].shape[1]]), 0, len(mats) - 1)
    if first_vector:
        out = out.squeeze(0)
    return out.squeeze(-1) if last_vector else out


def _chain_order(dims: list[int]) -> list[list[int]]:
    """The classic matrix-chain dynamic program: split[i][j] is where the cheapest product of
    matrices i..j divides (matrix i being dims[i] x dims[i + 1])."""
    n = len(dims) - 1
    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            cost[i][j], split[i][j] = min(
                (cost[i][k] + cost[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1], k) for k in range(i, j))
    return split


def _chain_product(mats: list[Tensor], split: list[list[int]], i: int, j: int) -> Tensor:
    if i == j:
        return mats[i]
    k = split[i][j]
    return _chain_product(mats, split, i, k) @ _chain_product(mats, split, k + 1, j)


def cross(input: Tensor, other: Tensor, *, dim: int = -1) -> Tensor:
    """The 3-D cross product along `dim` (default the last), batch dims broadcast."""
    if input.ndim != other.ndim:
        raise RuntimeError(f"linalg.cross: inputs must have the same number of dimensions (got shapes "
                           f"{tuple(input.shape)} and {tuple(other.shape)}); unsqueeze the smaller one")
    return _ops.cross(input, other, dim=dim)


def diagonal(A: Tensor, *, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """`jitorch.diagonal` over the last two dims by default."""
    return _ops.diagonal(A, offset, dim1, dim2)


def vander(x: Tensor, *, N: int | None = None) -> Tensor:
    """The Vandermonde matrix of the last dim of x: columns x^0, x^1, ..., x^(N-1) (N defaults to
    x's length)."""
    if x.ndim < 1:
        raise RuntimeError("linalg.vander: x must have at least one dimension (got a 0-d tensor)")
    N = x.shape[-1] if N is None else int(N)
    if N <= 1:
        raise RuntimeError(f"N must be greater than 1. Got N={N} (x of shape {tuple(x.shape)})")
    column = x.unsqueeze(-1)
    powers = [column.new_ones(tuple(column.shape)), column]
    for _ in range(2, N):
        powers.append(powers[-1] * column)
    return _ops.cat(powers, -1)


# ---------------------------------------------------------------------------------------------
# factorizations


def qr(A: Tensor, mode: str = "reduced") -> qr_result:
    """A = Q R with Q's columns orthonormal and R upper triangular; mode 'reduced' (Q m x k, k =
    min(m, n)), 'complete' (Q m x m) or 'r' (R only; Q is empty)."""
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"qr received unrecognized mode '{mode}' but expected one of 'reduced' (default), 'r', "
                         "or 'complete'")
    Q, R = _factor("qr", _checked("qr", A, square=False), mode="reduced" if mode == "r" else mode)
    return qr_result(A.new_zeros((0,)) if mode == "r" else Q, R)


def eigh(A: Tensor, UPLO: str = "L") -> eigh_result:
    """Eigenvalues (ascending) and eigenvectors (columns) of symmetric matrices, reading the lower
    (UPLO='L') or upper ('U') triangle."""
    if UPLO not in ("L", "U"):
        raise ValueError(f"linalg.eigh: Expected UPLO argument to be 'L' or 'U', but got {UPLO!r}")
    eigenvalues, eigenvectors = _factor("eigh", _checked("eigh", A), UPLO=UPLO)
    return eigh_result(eigenvalues, eigenvectors)


def eigvalsh(A: Tensor, UPLO: str = "L") -> Tensor:
    """The eigenvalues (ascending) of symmetric matrices."""
    return eigh(A, UPLO).eigenvalues


def svd(A: Tensor, full_matrices: bool = True) -> svd_result:
    """A = U diag(S) Vh with S descending; full_matrices=False gives the reduced factors (the ones
    that have a gradient)."""
    U, S, Vh = _factor("svd", _checked("svd", A, square=False), full_matrices=bool(full_matrices))
    return svd_result(U, S, Vh)


def svdvals(A: Tensor) -> Tensor:
    """The singular values of each matrix, descending: differentiable even where they repeat."""
    return _apply("svdvals", _checked("svdvals", A, square=False))


# ---------------------------------------------------------------------------------------------
# norms


def _float_input(name: str, x: Tensor, dtype) -> Tensor:
    if dtype is not None:
        x = x.to(_dt.get_dtype(dtype))
    if not x.dtype.is_floating_point:
        raise TypeError(f"linalg.{name}: Expected a floating point tensor as input. Got {x.dtype.name} (shape "
                        f"{tuple(x.shape)}). Pass dtype=jitorch.float32 or convert it first.")
    return x


def _root(total: Tensor, p: float) -> Tensor:
    """total ** (1/p) with a zero gradient where total is 0 (as PyTorch's norm gradient is at 0)."""
    zero = total == 0
    return where(zero, 0.0, where(zero, 1.0, total) ** (1.0 / p))


def vector_norm(x: Tensor, ord: float = 2, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """The vector `ord`-norm over `dim` (all elements when None): sum(|x|^ord)^(1/ord); inf and -inf
    are the largest and smallest |x|, 0 counts the nonzero elements."""
    x = _float_input("vector_norm", x, dtype)
    dims = tuple(range(x.ndim)) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    if ord == math.inf:
        return x.abs().amax(dims, keepdim=keepdim)
    if ord == -math.inf:
        return x.abs().amin(dims, keepdim=keepdim)
    if ord == 0:
        return (x != 0).sum(dims, keepdim=keepdim).to(x.dtype)
    if ord == 1:
        return x.abs().sum(dims, keepdim=keepdim)
    if ord == 2:
        return _root((x * x).sum(dims, keepdim=keepdim), 2)
    return _root((x.abs() ** ord).sum(dims, keepdim=keepdim), ord)


def _matrix_dims(A: Tensor, dim) -> tuple[int, int]:
    if len(dim) != 2:
        raise ValueError(f"linalg.matrix_norm: dim must be a 2-tuple. Got {tuple(dim)}")
    rows, cols = (_wrap_dim(d, A.ndim) for d in dim)
    if rows == cols:
        raise ValueError(f"linalg.matrix_norm: dims must be different. Got ({dim[0]}, {dim[1]})")
    return rows, cols


def _over_singular_values(A: Tensor, rows: int, cols: int, keepdim: bool, reduce) -> Tensor:
    """`reduce(svdvals)` of the matrices in dims (rows, cols), keeping those dims as 1s if asked."""
    out = reduce(svdvals(movedim(A, (rows, cols), (-2, -1))))
    if keepdim:
        for d in sorted((rows, cols)):
            out = out.unsqueeze(d)
    return out


def matrix_norm(A: Tensor, ord="fro", dim=(-2, -1), keepdim: bool = False, *, dtype=None) -> Tensor:
    """The matrix norm over dims `dim`: 'fro' (Frobenius), 'nuc' (sum of singular values), 2 / -2
    (largest / smallest singular value), 1 / -1 (max / min column sum of |A|), inf / -inf (max / min
    row sum of |A|)."""
    A = _float_input("matrix_norm", A, dtype)
    if A.ndim < 2:
        raise ShapeError(f"linalg.matrix_norm: The input tensor A must have at least 2 dimensions; got shape "
                         f"{tuple(A.shape)}")
    rows, cols = _matrix_dims(A, dim)
    if ord == "fro":
        return vector_norm(A, 2, (rows, cols), keepdim)
    if ord == "nuc":
        return _over_singular_values(A, rows, cols, keepdim, lambda s: s.sum(-1))
    if ord in (2, -2):
        return _over_singular_values(A, rows, cols, keepdim, lambda s: s.amax(-1) if ord == 2 else s.amin(-1))
    if ord in (1, -1, math.inf, -math.inf):
        summed, extreme = (rows, cols) if ord in (1, -1) else (cols, rows)
        sums = A.abs().sum(summed, keepdim=True)
        out = sums.amax(extreme, keepdim=True) if ord > 0 else sums.amin(extreme, keepdim=True)
        return out if keepdim else out.squeeze((rows, cols))
    raise RuntimeError(f"linalg.matrix_norm: Order {ord} not supported. Use 'fro', 'nuc', 1, -1, 2, -2, inf or -inf.")


def norm(A: Tensor, ord=None, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """A vector norm (dim an int, or ord=None over all elements, or a 1-D input) or a matrix norm
    (dim a pair, or a 2-D input with ord given), as `torch.linalg.norm` chooses."""
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if len(dims) == 2:
            return matrix_norm(A, "fro" if ord is None else ord, dims, keepdim, dtype=dtype)
        return vector_norm(A, 2 if ord is None else ord, dims, keepdim, dtype=dtype)
    if ord is None:
        return vector_norm(A, 2, None, keepdim, dtype=dtype)
    if A.ndim == 2:
        return matrix_norm(A, ord, (-2, -1), keepdim, dtype=dtype)
    if A.ndim == 1:
        return vector_norm(A, ord, None, keepdim, dtype=dtype)
    raise RuntimeError(f"linalg.norm: If dim is not specified but ord is, the input must be 1D or 2D. Got "
                       f"{A.ndim}D (shape {tuple(A.shape)}). Pass dim.")
