"""Code generators: a kernel description (`jitorch.ir.fusion.KernelDesc`) rendered as source for one
backend: `llvm` for the CPU (LLVM IR through llvmlite), `triton` for NVIDIA GPUs.

Each renderer keeps its primitives' expressions in tables by kind; what it can render follows from
those tables by one rule, `renders`, shared by both."""

from __future__ import annotations

from collections.abc import Container

from ..ir.fusion import is_row_reduction
from ..ir.graph import Node, Value

HALF = ("float16", "bfloat16")  # storage types: kernels compute in float32 and round each value to them


def is_float(v: Value) -> bool:
    return v.dtype.name in ("float32", "float64", *HALF)


def renders(node: Node, dtypes: Container[str], *, float_only: Container[str], numeric: Container[str],
            float_tests: Container[str], any_dtype: Container[str], reductions: Container[str]) -> bool:
    """Whether a renderer with these tables can compute `node` in a fused kernel: every value of a
    dtype it has, and the op in the table that takes those dtypes (reductions only over the last
    dim, keeping it, in the input's float type; random draws in float32 or float64)."""
    values = (*node.inputs, node.out)
    if any(v.dtype.name not in dtypes for v in values):
        return False
    if node.op == "random":
        return node.out.dtype.name in ("float32", "float64")
    if node.op in reductions:
        return is_row_reduction(node) and is_float(node.out) and node.out.dtype == node.inputs[0].dtype
    if node.op in float_only:
        return all(is_float(v) for v in values)
    if node.op in numeric:
        return all(v.dtype.name != "bool" for v in values)
    if node.op in float_tests:
        return is_float(node.inputs[0])
    return node.op in any_dtype
