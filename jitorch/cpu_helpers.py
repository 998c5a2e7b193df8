"""Fixed CPU helper kernels that numpy lacks. The Numba ones load lazily (first use compiles them,
about a second, then they come from Numba's disk cache)."""

from __future__ import annotations

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (float16/bfloat16 are computed in float32)."""
    from ._numba_kernels import erf as erf_kernel

    if x.dtype in (np.float32, np.float64):
        return erf_kernel(x)
    return erf_kernel(x.astype(np.float32)).astype(x.dtype)
