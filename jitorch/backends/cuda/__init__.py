"""The CUDA backend: CuPy arrays as buffers and CuPy (cuBLAS, CUB, NVRTC-compiled elementwise
kernels) as eager kernels, the way numpy serves the CPU.

This package imports no CuPy: `backend.py` does, when `jitorch.backends` first needs the `cuda`
backend (`register_lazy`); on a machine without CuPy, a driver or a GPU that import fails and
`jitorch.backends.unavailable_reason("cuda")` says why. What this module holds needs no GPU:
PyTorch's switch `jitorch.backends.cuda.matmul.allow_tf32`.

Layout: `backend.py` (`CUDABackend`: buffers, host <-> device copies, fusion capabilities,
registration), `gpu_check.py` (CuPy, once it is known to reach a GPU), `kernels.py` (the shared
eager kernels of `jitorch.backends.array_kernels` over CuPy, and CuPy's own where it differs from
numpy), `triton_driver.py` (jitorch's Triton driver: device, stream and capability from CuPy,
never torch) and `launch.py` (fused kernels rendered by `jitorch.codegen.triton`, compiled and
launched through Triton's low-level launcher with arguments prepared once).
"""

from __future__ import annotations

from .. import get_float32_matmul_precision, set_float32_matmul_precision


class _MatmulSettings:
    """`jitorch.backends.cuda.matmul`, as PyTorch's `torch.backends.cuda.matmul`:

        >>> jitorch.backends.cuda.matmul.allow_tf32 = True  # set_float32_matmul_precision("high")
    """

    __slots__ = ()  # a misspelt setting is an error, not a new attribute

    @property
    def allow_tf32(self) -> bool:
        """Whether float32 matrix products may use TF32 tensor cores (a precision other than
        "highest")."""
        return get_float32_matmul_precision() != "highest"

    @allow_tf32.setter
    def allow_tf32(self, allow: bool) -> None:
        set_float32_matmul_precision("high" if allow else "highest")


matmul = _MatmulSettings()
