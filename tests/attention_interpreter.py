"""The flash-attention kernels of `jitorch.codegen.triton_attention` without a GPU: run in Triton's CPU
interpreter on numpy arrays, and compiled ahead of time for sm_90.

`attention` and `attention_backward` are the primitives exactly as the cuda backend computes them
(`triton_attention.attention(xp, run, ...)`, the same host code: strided inputs, packed gradients,
the launch plans), over numpy instead of CuPy, with `run` interpreting each launch: the arrays go
to the interpreter as torch CPU tensors (`torch.from_numpy`, no copy; strides kept). float16 and
float32 only: Triton 3.9's interpreter multiplies bfloat16 blocks wrongly (`tl.dot` of two bfloat16
blocks is off by orders of magnitude there), so bfloat16 is left to the gpu tests.

`InterpretedAttentionBackend` serves the `cuda` device type with the CPU's kernels but these two,
and says `fuses_attention` as the cuda backend does, so that `F.scaled_dot_product_attention`,
`nn.MultiheadAttention` and compiled programs take the fused path on a machine without a GPU; it
counts the primitives it ran.

The interpreter must be on before Triton is first imported (TRITON_INTERPRET=1), so the tests that
interpret run in a process of their own; `compile_for_sm90(variants)` compiles in another one with
the interpreter off (`python -m tests.attention_interpreter`).
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from functools import partial

import numpy as np

from jitorch.backends import get_float32_matmul_precision
from jitorch.backends.cpu import CPUBackend
from jitorch.codegen import triton_attention as plan

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETED_DTYPES = ("float32", "float16")


def run_interpreted(launches: list[plan.Launch]) -> None:
    """Run each launch in Triton's interpreter, numpy arrays passed as torch CPU tensors."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    for launch in launches:
        function = plan.define(launch.kernel)
        assert isinstance(function, InterpretedFunction), "Triton was imported without TRITON_INTERPRET=1"
        with warnings.catch_warnings():  # a broadcast input is read-only: the kernels only read it
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            args = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in launch.args]
        function[launch.grid](*args, **launch.constexprs, **launch.config.options())


def attention(q, k, v, *, is_causal: bool, scale: float) -> np.ndarray:
    """The `attention` primitive as the cuda backend computes it, interpreted."""
    return plan.attention(np, run_interpreted, q, k, v, is_causal=is_causal, scale=scale,
                          precision=get_float32_matmul_precision())


def attention_backward(q, k, v, out, grad_out, *, is_causal: bool, scale: float) -> np.ndarray:
    """The `attention_backward` primitive as the cuda backend computes it, interpreted."""
    return plan.attention_backward(np, run_interpreted, q, k, v, out, grad_out, is_causal=is_causal, scale=scale,
                                   precision=get_float32_matmul_precision())


class InterpretedAttentionBackend(CPUBackend):
    """The `cuda` device type on numpy buffers (copied on every transfer), the CPU's kernels, and
    attention through the interpreted Triton kernels; `ran` counts each attention primitive run."""

    device_type = "cuda"

    def __init__(self) -> None:
        self.ran = {"attention": 0, "attention_backward": 0}
        self.kernels = dict(CPUBackend.kernels)
        for name, kernel in (("attention", attention), ("attention_backward", attention_backward)):
            self.kernels[name] = partial(self._counted, name, kernel)

    def _counted(self, name, kernel, *arrays, **params):
        self.ran[name] += 1
        return kernel(*arrays, **params)

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def fuses_attention(self, dtype: np.dtype, head_dim: int, value_head_dim: int) -> bool:
        return np.dtype(dtype).name in INTERPRETED_DTYPES and max(head_dim, value_head_dim) <= plan.MAX_HEAD_DIM


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90


def variants(head_dims: tuple[tuple[int, int], ...], precisions: tuple[tuple[str, str], ...],
             causal: tuple[bool, ...] = (False, True)) -> list[tuple]:
    """(kernel, signature, constexprs, options) of every kernel the launch plans use for these
    (E, Ev) head dims, (dtype, float32 matmul precision) pairs and causal settings, with shapes
    that take each kernel's usual arguments (sizes and strides of a (2, 3, 100, E) attention)."""
    found = {}
    for (e, ev), (dtype, precision), is_causal in ((d, p, c) for d in head_dims for p in precisions for c in causal):
        q, k = _operand((2, 3, 100, e)), _operand((2, 3, 100, e))
        v, out = _operand((2, 3, 100, ev)), _operand((2, 3, 100, ev))
        launches = plan.forward_launches(q, k, v, out, None, dtype, is_causal=is_causal, scale=0.125,
                                         precision=precision)
        launches += plan.backward_launches(q, k, v, out, out, None, None, q, k, v, dtype,
                                           is_causal=is_causal, scale=0.125, precision=precision)
        for launch in launches:
            signature = plan.signature(launch.kernel, dtype, launch.args)
            key = (launch.kernel, tuple(signature.items()), tuple(launch.constexprs.items()))
            found.setdefault(key, (launch.kernel, signature, launch.constexprs, launch.config.options()))
    return list(found.values())


def _operand(shape: tuple[int, ...]) -> plan.Operand:
    strides, step = [], 1
    for size in reversed(shape):
        strides.insert(0, step)
        step *= size
    return plan.Operand(None, shape, tuple(strides))


def compile_for_sm90(found: list[tuple]) -> list[dict]:
    """Compile each variant for sm_90 in a new process with the interpreter off: per variant, its
    kernel's name and the shared memory it takes; an AssertionError with Triton's message for the
    first that fails."""
    from tests.triton_interpreter_backend import without_interpreter

    fusion = {"TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}
    return without_interpreter("tests.attention_interpreter", found, fusion)


def _compile_main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = []
    for kernel, signature, constexprs, options in pickle.load(sys.stdin.buffer):
        try:
            compiled = triton.compile(ASTSource(plan.define(kernel), signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options=options)
        except Exception as err:
            raise SystemExit(f"{kernel} with {constexprs}, {signature} does not compile for sm_90: {err}") from err
        results.append({"kernel": kernel, "constexprs": constexprs, "shared": compiled.metadata.shared})
    sys.stdout.buffer.write(pickle.dumps(results))


if __name__ == "__main__":
    _compile_main()
