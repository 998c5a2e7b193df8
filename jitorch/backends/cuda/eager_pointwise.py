"""Eager elementwise ops on the GPU as one-node Triton kernels, launched the way compiled programs
launch theirs.

A CuPy ufunc costs about 10-15 us of host time per call (argument parsing, broadcasting, its kernel
cache, the launch), against a few for a Triton kernel launched through its compiled launcher with
arguments prepared once (`launch.py`). Eager training is a stream of small ops, so the common
layouts run here: the Triton renderer's own kernel of that one node (`jitorch.codegen.triton`, the
same code compiled programs fuse), sized at run time. Every tensor operand is C-contiguous and
either of the result's shape ("full"), or one element (read as a scalar), or, with the result seen
as a matrix of R rows and C columns split at one dim, the row vector its rows share (a bias: a
shape like (C,)) or the column its columns share (a row's statistic: (R, 1)). One kernel serves
every size of its layout: it is rendered once per op, dtypes and operand layout over placeholder
sizes that launches replace (the renderer takes sizes and strides as arguments), and Triton
compiles a variant per specialization of its arguments (addresses 16-byte aligned or not, each size
a multiple of 16 or 1). Operands of one shape that all lie densely in one other dim order (a
transposed matrix: a weight's gradient) run as flat ones too, and the result keeps their layout,
as PyTorch's does. Anything else (other strided views, empty tensors, other dtypes, other
broadcasts) goes to CuPy.

Only ops whose result is bit for bit CuPy's are taken (the arithmetic, comparisons, selections,
float casts, relu, sqrt): the fast exp/log approximations of fused kernels stay out of eager results.
Half types (float16, bfloat16) compute in float32 and round once to their type, as PyTorch's eager
kernels do.
"""

from __future__ import annotations

import functools
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
# (half types load and store in their own type and compute in float32, rounding once, as PyTorch's
# eager kernels do; CuPy's own half arithmetic costs a ufunc call, and a cast a copy, each)
_DTYPES = frozenset(map(np.dtype, (np.float32, np.float64, np.float16, _dt.bfloat16.np, np.int32, np.int64,
                                   np.bool_)))
_PLACEHOLDER = 1 << 20  # the length the kernel's text is rendered over; launches pass the real one


def _renderer():
    """`jitorch.codegen.triton` (imported when first needed, as the backend imports it)."""
    from ...codegen import triton as renderer

    return renderer


# how an operand is read (`layout`): the result's shape, one element, a row vector its rows share, or
# a column its columns share; and its shape over the placeholder loop, in 1-D and in 2-D
FULL, SCALAR, ROW, COLUMN = "full", "scalar", "row", "column"
_SHAPES_1D = {FULL: (_PLACEHOLDER,), SCALAR: ()}
_SHAPES_2D = {FULL: (_PLACEHOLDER, _PLACEHOLDER), SCALAR: (), ROW: (_PLACEHOLDER,), COLUMN: (_PLACEHOLDER, 1)}
_LOOP_STRIDES = {FULL: None, SCALAR: (0, 0), ROW: (0, 1), COLUMN: (1, 0)}  # along (R, C); full: (C, 1)


class FlatKernel:
    """One op over contiguous operands of one layout (each `FULL`, `SCALAR`, `ROW` or `COLUMN`):
    `run(addresses, shape, loop, aligned) -> out`."""

    def __init__(self, op: str, params: dict, in_dtypes: tuple[np.dtype, ...], layouts: tuple[str, ...],
                 out_dtype: np.dtype) -> None:
        shapes = _SHAPES_2D if ROW in layouts or COLUMN in layouts else _SHAPES_1D
        inputs = [Value(k, shapes[layout], _dt.from_numpy_dtype(dtype))
                  for k, (dtype, layout) in enumerate(zip(in_dtypes, layouts))]
        out = Value(len(inputs), shapes[FULL], _dt.from_numpy_dtype(out_dtype))
        node = out.node = Node(op, tuple(inputs), dict(params), out, "eager")
        renderer = _renderer()
        if renderer is None or not renderer.fusible(node):
            raise NotImplementedError(op)
        from .launch import Arguments, load_kernel_function  # (imports Triton)

        kernel = Kernel(shapes[FULL], 0, [node], inputs, [out], {v.id for v in inputs})
        self.source = source = renderer.render(describe(kernel))
        self.function = load_kernel_function(source.text, source.name)
        self.layouts = layouts
        self.out_dtype = out_dtype
        self.arguments = Arguments(source.params, len(inputs), 1, len(source.constexprs))
        element = {(p.kind, p.operand): p.type.removeprefix("*") for p in source.params}
        self.pointer_types = [element[("input", k)] for k in range(len(inputs))] + [element[("output", 0)]]
        # (device, aligned, the sizes' specialization, BLOCK, grid) -> launch
        self._launches: dict[tuple, Callable] = {}
        self._sized: dict[tuple, tuple[Callable, tuple]] = {}  # (loop, aligned, device) -> (launch, the other args)

    def run(self, addresses: list, shape: tuple[int, ...], loop: tuple[int, ...], aligned: bool):
        """Launch over operands at `addresses` (every one 16-byte aligned: `aligned`) on the current
        stream, over `loop` (the result's element count, or its (rows, columns) where an operand is a
        row or a column); returns the result, of `shape`. `addresses` is extended, by the result's
        address, the sizes and strides the kernel takes and its BLOCK, into the launch's arguments."""
        sized = (loop, aligned, cupy.cuda.runtime.getDevice())
        found = self._sized.get(sized)
        if found is None:
            found = self._sized[sized] = self._size(*sized)
        launch, rest = found
        out = cupy.empty(shape, self.out_dtype)  # (the pool's blocks are 512-byte aligned)
        addresses.append(out.data.ptr)
        addresses += rest
        launch(cupy.cuda.get_current_stream().ptr, self.arguments.pick(addresses))
        return out

    def sizing(self, loop: tuple[int, ...]) -> tuple[list[int], object, int]:
        """For a launch over `loop`: the int arguments after the addresses (BLOCK not included),
        the configuration and the number of programs."""
        config = self.source.configs(loop)[0]
        strides = [(loop[-1], 1) if layout == FULL else _LOOP_STRIDES[layout] for layout in self.layouts]
        runtime = self.source.runtime_args(loop, strides)
        return runtime, config, -(-prod(loop) // config.constexprs["BLOCK"])

    def _size(self, loop: tuple[int, ...], aligned: bool, device: int) -> tuple[Callable, tuple]:
        """The launch over `loop` and the arguments after the addresses: the variant Triton compiles
        for such a call (its int arguments' specialization), on a grid sized for `loop`."""
        runtime, config, grid = self.sizing(loop)
        block = config.constexprs["BLOCK"]
        key = (device, aligned, *[(v % 16 == 0, v == 1, v >= 2**31) for v in runtime], block, grid)
        launch = self._launches.get(key) or self._prepare(key, runtime, config)
        return launch, (*runtime, block)

    def _prepare(self, key: tuple, runtime: list, config) -> Callable:
        """Compile (or find compiled) the variant of `key` and prepare its launch over its grid."""
        from . import triton_driver

        aligned, block, grid = key[1], key[-2], key[-1]
        address = 16 if aligned else 8  # Triton reads only an address's divisibility while compiling
        pointers = [triton_driver.Pointer(address, element) for element in self.pointer_types]
        launch, scratch = triton_driver.compile_launch(self.function, self.arguments.pick([*pointers, *runtime, block]),
                                                       (grid, 1, 1), **config.options())
        if scratch:
            raise NotImplementedError("a kernel that needs scratch memory")  # (never for one flat op)
        self._launches[key] = launch
        return launch


@functools.lru_cache(maxsize=4096)  # (a training step broadcasts a few shapes over and over)
def broadcast_layout(shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                   tuple[str, ...]] | None:
    """For operands of `shapes` (not all one shape): the result's shape, its loop ((rows, columns),
    or the element count where every operand is full or one element) and each operand's layout,
    where every operand is full, one element, a row vector or a column of one split of the
    result's dims into rows and columns; None where no split serves them all."""
    try:
        result = np.broadcast_shapes(*shapes)
    except ValueError:
        return None
    kept = [d for d, n in enumerate(result) if n != 1]  # (size-1 dims are in no operand's way)
    dims = tuple(result[d] for d in kept)
    layouts, split = [], None
    for shape in shapes:
        padded = (1,) * (len(result) - len(shape)) + tuple(shape)
        own = tuple(padded[d] for d in kept)
        if own == dims:
            layouts.append(FULL)
            continue
        if prod(own) == 1:
            layouts.append(SCALAR)
            continue
        ones_before = next(k for k, n in enumerate(own) if n != 1)
        ones_after = len(own) - next(k for k, n in enumerate(reversed(own)) if n != 1)
        if own[ones_before:] == dims[ones_before:] and all(n == 1 for n in own[:ones_before]):
            layout, at = ROW, ones_before
        elif own[:ones_after] == dims[:ones_after] and all(n == 1 for n in own[ones_after:]):
            layout, at = COLUMN, ones_after
        else:
            return None
        if split not in (None, at):
            return None
        split = at
        layouts.append(layout)
    if split is None:  # (full operands and scalars: one flat loop)
        return result, (prod(dims),), tuple(layouts)
    return result, (prod(dims[:split]), prod(dims[split:])), tuple(layouts)


@functools.cache
def dense_order(shape: tuple[int, ...], strides: tuple[int, ...],
                itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(the dims of a strided array in the order that makes it C-contiguous, outermost first; the
    permutation that undoes that order), where it is a dense block in some order (a transposed
    matrix, a permuted tensor); else None. (Cached: both are per layout, not per call.)"""
    order = tuple(sorted(range(len(shape)), key=lambda d: -strides[d]))
    step = itemsize
    for d in reversed(order):
        if shape[d] != 1 and strides[d] != step:
            return None
        step *= shape[d]
    inverse = [0] * len(order)
    for k, d in enumerate(order):
        inverse[d] = k
    return order, tuple(inverse)


_kernels: dict[tuple, FlatKernel | None] = {}  # (op, params, dtypes, scalars) -> its kernel, or None: CuPy's


def _flat_kernel(op: str, params: dict, arrays: list, layouts: tuple[str, ...]) -> FlatKernel | None:
    key = (op, tuple(sorted(params.items())) if params else (), layouts, *[a.dtype for a in arrays])
    try:
        return _kernels[key]
    except KeyError:
        pass
    dtypes = tuple(a.dtype for a in arrays)
    found = None
    if all(d in _DTYPES for d in dtypes):
        out_dtype = np.dtype(PRIMS[op].infer(*arrays, **params)[1])
        if out_dtype in _DTYPES and not (op == "cast" and out_dtype.kind in "iub" and dtypes[0].kind == "f"):
            try:  # (a float-to-integer cast: the renderer gives the CPU's answer out of range, CuPy the GPU's)
                found = FlatKernel(op, params, dtypes, layouts, out_dtype)
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
        same = True  # every operand with dims of one shape
        every = 0  # every address or'ed: its low bits say whether all are 16-byte aligned
        addresses = []
        kinds = []  # each operand's layout where every operand with dims has one shape
        strides = None  # the full operands' strides, where they are a dense permuted layout
        for k, a in enumerate(arrays):
            if type(a) is not ndarray:
                if type(a) is not np.ndarray or a.ndim:
                    return fallback(*arrays, **params)
                moved = moved or list(arrays)
                a = moved[k] = device_array(a)
                kinds.append(SCALAR)
            elif a.ndim:
                if not a._c_contiguous:  # (CuPy's flag itself: `a.flags` builds an object per call)
                    if strides is None and shape is None:
                        strides = a.strides
                    if a.strides != strides:
                        return fallback(*arrays, **params)
                elif strides is not None:
                    return fallback(*arrays, **params)
                if shape is None:
                    shape = a.shape
                elif a.shape != shape:
                    same = False
                kinds.append(FULL)
            else:
                kinds.append(SCALAR)
            address = a.data.ptr
            every |= address
            addresses.append(address)
        if shape is None:
            return fallback(*arrays, **params)
        operands = moved or arrays
        if strides is not None:  # every full operand one dense layout in another dim order
            found = dense_order(shape, strides, operands[kinds.index(FULL)].itemsize) if same else None
            kernel = found and _flat_kernel(op, params, operands, tuple(kinds))
            if not kernel or 0 in shape:
                return fallback(*arrays, **params)
            order, inverse = found
            flat = kernel.run(addresses, tuple(shape[d] for d in order), (prod(shape),), not every & 15)
            return flat.transpose(inverse)  # (the result in its operands' layout, as PyTorch's)
        if same:
            layouts = tuple(kinds)
            loop = (prod(shape),)
        else:
            found = broadcast_layout(tuple([a.shape for a in operands]))
            if found is None:
                return fallback(*arrays, **params)
            shape, loop, layouts = found
        if 0 in shape:
            return fallback(*arrays, **params)
        kernel = _flat_kernel(op, params, operands, layouts)
        if kernel is None:
            return fallback(*arrays, **params)
        return kernel.run(addresses, shape, loop, not every & 15)

    return run
