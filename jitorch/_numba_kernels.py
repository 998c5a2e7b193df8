"""Numba kernels, compiled on first import of this module and cached on disk (`cache=True` needs
functions at module level of a real file, hence a module of their own, imported lazily)."""

import math

import numba


@numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
def erf(x):
    return math.erf(x)
