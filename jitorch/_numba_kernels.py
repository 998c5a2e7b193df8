"""Numba kernels for the few CPU helpers numpy does badly. They compile on first use of each type
signature and are cached on disk (`cache=True` needs functions at module level of a real file,
hence a module of their own, imported lazily)."""

import math

import numba


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
