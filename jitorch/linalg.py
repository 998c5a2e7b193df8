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
from .dispatch import dispatch
from .errors import ShapeError
from .ops import as_operand, movedim, where
from .primitives import PRIMS, LinAlgError, check_solve_operands, check_square, linalg_parts
from .tensor import Tensor, _wrap_dim

__all__ = ["LinAlgError", "cholesky", "det", "eigh", "eigvalsh", "inv", "lstsq", "matrix_norm", "norm", "qr",
           "slogdet", "solve", "svd", "svdvals", "vector_norm"]

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
