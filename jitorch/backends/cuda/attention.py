"""The cuda backend's kernels of the `attention` and `attention_backward` primitives: the flash
attention kernels of `jitorch.codegen.triton_attention`, run on CuPy arrays and CuPy's current
stream through jitorch's Triton driver.

Each launch goes through the compiled kernel's C launcher (`triton_driver.launch_function`), a few
microseconds of Python, as the fused kernels of compiled programs do (`launch.py`). A kernel is
compiled (`JITFunction.warmup`, cached by Triton in memory and on disk) once per variant: the
kernel, its constants (head dims, causal or not, dot precision, blocks), its element type, the
properties of its arguments Triton specializes on (each address and integer divisible by 16 or
not, an integer equal to 1) and the device. The launch function is kept per variant, the sizes and
strides (a few per model) and the grid, so that a call computes no more than a dict key.

Inputs whose head dim is strided are copied first (the kernels read rows of the head dim as
contiguous vectors); any other strides, broadcast (0) included, are read as they are. Types or head
dims the kernels do not take (float64, heads wider than 128) run on the shared kernel of
`jitorch.backends.array_kernels`, which materializes the scores, as do all of them on a machine
without Triton.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import numpy as np

from ...codegen import triton_attention as plan
from .. import array_kernels as shared
from .. import get_float32_matmul_precision
from .gpu_check import cupy

HAVE_TRITON = importlib.util.find_spec("triton") is not None
_REFERENCE_FORWARD = partial(shared.attention, cupy)
_REFERENCE_BACKWARD = partial(shared.attention_backward, cupy)


def fused(dtype, head_dim: int, value_head_dim: int) -> bool:
    """Whether the Triton kernels take queries and keys of `dtype` and these head dims."""
    return (HAVE_TRITON and _dtype_name(dtype) in plan.TRITON_TYPE
            and max(head_dim, value_head_dim) <= plan.MAX_HEAD_DIM)


def attention(q, k, v, *, is_causal: bool, scale: float):
    """softmax(q k^T * scale) v (causal: query i sees keys j <= i) over (B, H, L, E) queries and
    (B, H, S, E), (B, H, S, Ev) keys and values, without materializing the scores."""
    if not fused(q.dtype, q.shape[-1], v.shape[-1]):
        return _REFERENCE_FORWARD(q, k, v, is_causal=is_causal, scale=scale)
    return plan.attention(cupy, _run, q, k, v, is_causal=is_causal, scale=scale,
                          precision=get_float32_matmul_precision())


def attention_backward(q, k, v, out, grad_out, *, is_causal: bool, scale: float):
    """dq, dk, dv of `attention` packed flat in that order (each C-contiguous in it), for the
    output gradient `grad_out` of `out`."""
    if not fused(q.dtype, q.shape[-1], v.shape[-1]):
        return _REFERENCE_BACKWARD(q, k, v, out, grad_out, is_causal=is_causal, scale=scale)
    return plan.attention_backward(cupy, _run, q, k, v, out, grad_out, is_causal=is_causal, scale=scale,
                                   precision=get_float32_matmul_precision())


# ---------------------------------------------------------------------------------------------
# launching


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


_launches: dict[tuple, tuple[Callable, int]] = {}  # variant and grid -> (launch, scratch bytes)


def _run(launches: list[plan.Launch]) -> None:
    """Queue `launches` on CuPy's current stream, in order."""
    stream = cupy.cuda.get_current_stream().ptr
    device = cupy.cuda.runtime.getDevice()
    for launch in launches:
        n = launch.n_arrays
        pointers = [a.data.ptr for a in launch.args[:n]]
        scalars = launch.args[n:]
        constants = tuple(launch.constexprs.values())
        # a variant per element type, address alignment and scalar values (a few per model: Triton
        # specializes on the scalars' divisibility by 16, and compiles each distinct variant once)
        key = (device, launch.kernel, launch.args[0].dtype, tuple(p & 15 == 0 for p in pointers), scalars,
               constants, launch.config, launch.grid)
        found = _launches.get(key) or _compile(key, launch)
        run, scratch_bytes = found
        every = (*pointers, *scalars, *constants)
        if scratch_bytes:
            scratch = cupy.empty(scratch_bytes, np.uint8)  # (back to the pool after queueing: stream-ordered)
            run(stream, every, scratch.data.ptr)
        else:
            run(stream, every)


def _compile(key: tuple, launch: plan.Launch) -> tuple[Callable, int]:
    """Compile the variant of `launch` for the current device and prepare its launch over its grid."""
    from . import triton_driver
    from .launch import load_kernel_function

    function = load_kernel_function(plan.SOURCE, launch.kernel)
    # Triton reads only an address's divisibility (and its element type) while compiling
    args = [triton_driver.Pointer(16 if a.data.ptr % 16 == 0 else 8, _element_type(a.dtype))
            for a in launch.args[:launch.n_arrays]]
    found = _launches[key] = triton_driver.compile_launch(function, [*args, *launch.args[launch.n_arrays:]],
                                                          launch.grid, **launch.constexprs, **launch.config.options())
    return found


def _element_type(dtype) -> str:
    return plan.TRITON_TYPE[_dtype_name(dtype)]
