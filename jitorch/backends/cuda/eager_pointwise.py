"""Eager elementwise ops on the GPU as one-node Triton kernels, launched the way compiled programs
launch theirs.

A CuPy ufunc costs about 10-15 us of host time per call (argument parsing, broadcasting, its kernel
cache, the launch), against a few for a Triton kernel launched through its compiled launcher with
arguments prepared once (`launch.py`). Eager training is a stream of small ops, so for the common
case, every tensor operand of one shape and C-contiguous, the rest 0-d, an op runs here instead: the
Triton renderer's own kernel of that one node (`jitorch.codegen.triton`, the same code compiled
programs fuse), one flat loop sized at run time. One kernel serves every length: it is rendered once
per op, dtypes and operand pattern, over a placeholder length, and Triton compiles a variant per
specialization of its arguments (addresses 16-byte aligned or not, the length a multiple of 16 or
1). Anything else (broadcasts, strided views, empty tensors, other dtypes) goes to CuPy.

Only ops whose result is bit for bit CuPy's are taken (the arithmetic, comparisons, selections,
float casts, relu, sqrt): the fast exp/log approximations of fused kernels stay out of eager results.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np

from ... import dtypes as _dt
from ...ir.fusion import Kernel, describe
from ...ir.graph import Node, Value
from ...primitives import PRIMS
from .gpu_check import cupy
from .scalars import device_array

# ops rendered exactly as CuPy computes them (IEEE arithmetic, exact comparisons and selections)
EXACT_OPS = frozenset({"add", "sub", "mul", "div", "neg", "abs", "maximum", "minimum", "eq", "ne", "lt", "le",
                       "gt", "ge", "where", "logical_and", "logical_or", "logical_not", "relu",
                       "relu_backward", "sqrt", "reciprocal", "cast", "copy"})
_DTYPES = frozenset(map(np.dtype, (np.float32, np.float64, np.int32, np.int64, np.bool_)))
_PLACEHOLDER = 1 << 20  # the length the kernel's text is rendered over; launches pass the real one


def _renderer():
    """`jitorch.codegen.triton` (imported when first needed, as the backend imports it)."""
    from ...codegen import triton as renderer

    return renderer


class FlatKernel:
    """One op over same-shaped contiguous operands (and 0-d ones): `run(arrays, shape) -> out`."""

    def __init__(self, op: str, params: dict, in_dtypes: tuple[np.dtype, ...], scalars: tuple[bool, ...],
                 out_dtype: np.dtype) -> None:
        inputs = [Value(k, () if scalar else (_PLACEHOLDER,), _dt.from_numpy_dtype(dtype))
                  for k, (dtype, scalar) in enumerate(zip(in_dtypes, scalars))]
        out = Value(len(inputs), (_PLACEHOLDER,), _dt.from_numpy_dtype(out_dtype))
        node = out.node = Node(op, tuple(inputs), dict(params), out, "eager")
        renderer = _renderer()
        if renderer is None or not renderer.fusible(node):
            raise NotImplementedError(op)
        from .launch import Arguments, load_kernel_function  # (imports Triton)

        kernel = Kernel((_PLACEHOLDER,), 0, [node], inputs, [out], {v.id for v in inputs})
        self.source = source = renderer.render(describe(kernel))
        self.function = load_kernel_function(source.text, source.name)
        self.out_dtype = out_dtype
        self.arguments = Arguments(source.params, len(inputs), 1, len(source.constexprs))
        element = {(p.kind, p.operand): p.type.removeprefix("*") for p in source.params}
        self.pointer_types = [element[("input", k)] for k in range(len(inputs))] + [element[("output", 0)]]
        self._launches: dict[tuple, Callable] = {}  # (device, aligned, n's specialization, BLOCK, grid) -> launch
        self._sized: dict[tuple, tuple[Callable, int]] = {}  # (n, aligned, device) -> (launch, BLOCK)

    def run(self, values: list, shape: tuple[int, ...], aligned: bool):
        """Launch over operands whose addresses are `values` (every one 16-byte aligned: `aligned`) on
        the current stream; returns the output. `values` is extended, by the output's address, the
        length and BLOCK, into the launch's arguments."""
        n = prod(shape)
        sized = (n, aligned, cupy.cuda.runtime.getDevice())
        found = self._sized.get(sized)
        if found is None:
            found = self._sized[sized] = self._size(*sized)
        launch, block = found
        out = cupy.empty(shape, self.out_dtype)  # (the pool's blocks are 512-byte aligned)
        values += (out.data.ptr, n, block)
        launch(cupy.cuda.get_current_stream().ptr, self.arguments.pick(values))
        return out

    def _size(self, n: int, aligned: bool, device: int) -> tuple[Callable, int]:
        """The launch (and its BLOCK) for `n` elements: the variant Triton compiles for such a call."""
        config = self.source.configs((n,))[0]
        block = config.constexprs["BLOCK"]
        grid = (n + block - 1) // block
        key = (device, aligned, n % 16 == 0, n == 1, n >= 2**31, block, grid)
        return self._launches.get(key) or self._prepare(key, n, config), block

    def _prepare(self, key: tuple, n: int, config) -> Callable:
        """Compile (or find compiled) the variant of `key` and prepare its launch over its grid."""
        from . import triton_driver

        _, aligned, _, _, _, block, grid = key
        address = 16 if aligned else 8  # Triton reads only an address's divisibility while compiling
        pointers = [triton_driver.Pointer(address, element) for element in self.pointer_types]
        launch, scratch = triton_driver.compile_launch(self.function, self.arguments.pick(pointers + [n, block]),
                                                       (grid, 1, 1), **config.options())
        if scratch:
            raise NotImplementedError("a kernel that needs scratch memory")  # (never for one flat op)
        self._launches[key] = launch
        return launch


_kernels: dict[tuple, FlatKernel | None] = {}  # (op, params, dtypes, scalars) -> its kernel, or None: CuPy's


def _flat_kernel(op: str, params: dict, arrays: list) -> FlatKernel | None:
    key = (op, tuple(sorted(params.items())) if params else (), *[(a.dtype, a.ndim == 0) for a in arrays])
    try:
        return _kernels[key]
    except KeyError:
        pass
    dtypes = tuple(a.dtype for a in arrays)
    scalars = tuple(a.ndim == 0 for a in arrays)
    found = None
    if all(d in _DTYPES for d in dtypes):
        out_dtype = np.dtype(PRIMS[op].infer(*arrays, **params)[1])
        if out_dtype in _DTYPES and not (op == "cast" and out_dtype.kind in "iub" and dtypes[0].kind == "f"):
            try:  # (a float-to-integer cast: the renderer gives the CPU's answer out of range, CuPy the GPU's)
                found = FlatKernel(op, params, dtypes, scalars, out_dtype)
            except (NotImplementedError, ImportError):  # (ImportError: no Triton)
                found = None
    _kernels[key] = found
    return found


def eager_pointwise(op: str, fallback: Callable) -> Callable:
    """The eager kernel of elementwise primitive `op`: a flat Triton kernel where the operands allow
    (see the module's docstring), else `fallback` (CuPy's). Ops outside `EXACT_OPS` keep `fallback`."""
    if op not in EXACT_OPS:
        return fallback
    ndarray = cupy.ndarray

    def run(*arrays, **params):
        shape = None
        moved = None
        every = 0  # every address or'ed: its low bits say whether all are 16-byte aligned
        addresses = []
        for k, a in enumerate(arrays):
            if type(a) is not ndarray:
                if type(a) is not np.ndarray or a.ndim:
                    return fallback(*arrays, **params)
                moved = moved or list(arrays)
                a = moved[k] = device_array(a)
            elif a.ndim:
                if shape is None:
                    shape = a.shape
                elif a.shape != shape:
                    return fallback(*arrays, **params)
                if not a._c_contiguous:  # (CuPy's flag itself: `a.flags` builds an object per call)
                    return fallback(*arrays, **params)
            address = a.data.ptr
            every |= address
            addresses.append(address)
        if shape is None or 0 in shape:
            return fallback(*arrays, **params)
        operands = moved or arrays
        kernel = _flat_kernel(op, params, operands)
        if kernel is None:
            return fallback(*arrays, **params)
        return kernel.run(addresses, shape, not every & 15)

    return run
