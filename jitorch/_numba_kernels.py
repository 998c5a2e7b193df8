"""Numba kernels for the few CPU helpers numpy does badly. They compile on first use of each type
signature and are cached on disk (`cache=True` needs functions at module level of a real file,
hence a module of their own, imported lazily)."""

import math

import numba
import numpy as np


@numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
def erf(x):
    return math.erf(x)


# `where` as a plain loop: LLVM turns `a if c else b` into a vector select. numpy's np.where (and a
# bitwise select) branch or make several passes over the data.
# The arrays arrive as unsigned-integer views of the data, so one kernel serves every dtype.


@numba.njit(cache=True, boundscheck=False)
def select_scalar_false(cond, a, b, out):
    for i in range(out.size):
        out[i] = a[i] if cond[i] else b


@numba.njit(cache=True, boundscheck=False)
def select_scalar_true(cond, a, b, out):
    for i in range(out.size):
        out[i] = a if cond[i] else b[i]


@numba.njit(cache=True, boundscheck=False)
def select(cond, a, b, out):
    for i in range(out.size):
        out[i] = a[i] if cond[i] else b[i]


# im2col / col2im for convolution: numpy's strided-view copy and a Python loop of strided adds are
# several times slower on the small images CNNs see.


@numba.njit(cache=True, boundscheck=False)
def im2col(xp, kh, kw, dh, dw, sh, sw, oh, ow, out):
    """xp (N, C, Hp, Wp) padded -> out (N, C*kh*kw, oh*ow), unfold's layout."""
    for n in range(xp.shape[0]):
        for c in range(xp.shape[1]):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for y in range(oh):
                        iy = i * dh + y * sh
                        for x in range(ow):
                            out[n, row, y * ow + x] = xp[n, c, iy, j * dw + x * sw]


@numba.njit(cache=True, boundscheck=False)
def col2im(cols, kh, kw, dh, dw, sh, sw, oh, ow, out):
    """The adjoint: add cols (N, C*kh*kw, oh*ow) into out (N, C, Hp, Wp), which starts at zero."""
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for y in range(oh):
                        iy = i * dh + y * sh
                        for x in range(ow):
                            out[n, c, iy, j * dw + x * sw] += cols[n, row, y * ow + x]


@numba.njit(cache=True, boundscheck=False)
def relu_grad(g, out_value, result):
    """relu's backward in one pass: the gradient where the output is not <= 0 (NaN passes)."""
    for i in range(result.size):
        result[i] = 0 if out_value[i] <= 0 else g[i]


# Rows added into a table at repeated indices (an embedding's gradient): np.add.at takes a slow
# generic path per element.


@numba.njit(cache=True, boundscheck=False)
def scatter_add_rows(out, index, values):
    """out[index[i], :] += values[i, :] for each i (indices already in range)."""
    for i in range(index.size):
        row = index[i]
        for c in range(out.shape[1]):
            out[row, c] += values[i, c]


# The max of each row: numpy reduces a short trailing axis with one inner-loop call per row, and
# a plain loop here would chain every compare on the one before. Eight running maxima let the CPU
# overlap the compares (and LLVM pack them into vectors); NaN is counted apart, since a compare
# with NaN is false and the running maxima would skip it.


@numba.njit(cache=True, boundscheck=False)
def row_max(x, out):
    """out[r] = max over c of x[r, c] for a (rows, cols >= 1) array; NaN if the row has one."""
    rows, cols = x.shape
    whole = cols - cols % 8
    for r in range(rows):
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[r, 0]
        for c in range(0, whole, 8):
            m0 = max_of(m0, x[r, c])
            m1 = max_of(m1, x[r, c + 1])
            m2 = max_of(m2, x[r, c + 2])
            m3 = max_of(m3, x[r, c + 3])
            m4 = max_of(m4, x[r, c + 4])
            m5 = max_of(m5, x[r, c + 5])
            m6 = max_of(m6, x[r, c + 6])
            m7 = max_of(m7, x[r, c + 7])
        for c in range(whole, cols):
            m0 = max_of(m0, x[r, c])
        nans = 0
        for c in range(cols):
            nans += x[r, c] != x[r, c]
        m = max_of(max_of(max_of(m0, m1), max_of(m2, m3)), max_of(max_of(m4, m5), max_of(m6, m7)))
        out[r] = m if nans == 0 else np.nan


@numba.njit(inline="always")
def max_of(a, b):
    return b if b > a else a
