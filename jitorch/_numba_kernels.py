"""The two names `primitives.py` imports for convolutions, im2col and col2im, forwarded from
`cpu_helpers`, where the CPU helper loops are LLVM IR now (Numba's start-up cost about 0.45 s in
each process). Once `primitives.py` imports them from `cpu_helpers`, this module can go."""

from .cpu_helpers import col2im, im2col

__all__ = ["col2im", "im2col"]
