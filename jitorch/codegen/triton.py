"""The Triton renderer: a kernel description (`jitorch.ir.fusion.KernelDesc`) as the Python source of
one `@triton.jit` function, for NVIDIA GPUs (and Triton's CPU interpreter, which runs it in tests).

It computes what `jitorch.codegen.llvm` computes, node for node: the same primitives, dtypes,
broadcasts and NaN rules (maximum and the max/min reductions return NaN when they see one, as numpy
does; relu passes NaN; comparisons are false for NaN except !=), and the same random numbers
(`tl.rand`/`tl.randn` are jitorch's Philox, numbered by each element's row-major index).

Two templates, read top to bottom as a person would write them (offsets, masks, loads, math,
stores), each node under its IR line and the user's source line as a comment:

- a pointwise kernel is one flat loop over the collapsed loop shape: program `p` computes elements
  `p * BLOCK ... p * BLOCK + BLOCK - 1` of it, recovering each loop dim's index from the flat one
  where some input needs it;
- a row kernel (reductions over the last dim, keepdim: softmax, layer_norm, cross_entropy and their
  gradients) runs `ROWS` rows per program. With `ROW_IN_REGISTERS` (a compile-time constant) the
  whole row is one block (`BLOCK` >= the row length): read once, every value computed once. Without
  it, rows are longer than a block: as in the LLVM kernels, one pass over the row per chain of
  reductions (`Kernel.levels()`), `BLOCK` columns at a time, recomputing the full-shape values a pass
  needs from the inputs (a pass never reads back what the kernel wrote). Row-shaped values
  (`[ROWS, 1]`) are computed once per row either way.

Memory layout, as the CPU launcher (`jitorch.backends.cpu.launch`) arranges it: each input is viewed
in the loop shape and passes its strides in elements, except along the innermost loop dim, whose
stride is compiled in as 1 (the launcher copies an input that is strided there) or 0 where the input
is broadcast; broadcast dims pass no stride. Outputs are C-contiguous arrays of their own shapes.
bool lives in memory as one byte (numpy's and CuPy's bool): its pointers are `*i8`, loads compare
with 0 and stores write 0 or 1.

Only the standard `tl` functions that Triton 3.6 and 3.9 both have, on the GPU and in the
interpreter, are used (the interpreter cannot call libdevice): tanh, round, trunc, pow and sigmoid
are written out below with them. Where the GPU's own arithmetic differs from the CPU's, the
generated code says so: float-to-integer conversions give the CPU's (x86's) answer for NaN and out
of range values; pow is float32 only (computed in float64); division is IEEE's (`tl.div_rn` in
float32, where `/` is approximate); tl.exp and tl.log are the GPU's fast
approximations (a few ulps; tens for exp of large arguments), as in torch.compile's kernels.

This module only renders text and answers which nodes it renders (`fusible`); it never imports
Triton except in `TritonSource.define`. Compiling and launching is the cuda backend's.

Example:
    >>> desc = describe(kernel)                   # jitorch.ir.fusion
    >>> source = render(desc)
    >>> fn = source.define()                      # the @triton.jit function
    >>> config = source.configs(desc.loop_shape)[0]
    >>> args = source.runtime_args(desc.loop_shape, input_strides)
    >>> fn[source.launch_grid(desc.loop_shape, config)](*inputs, *outputs, *args, **config.constexprs,
    ...                                                 **config.options())
"""

from __future__ import annotations

import hashlib
import linecache
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from ..ir.fusion import POSITIONS, Kernel, KernelDesc, KernelGroup, MatmulEpilogue, constant_traits, is_row_reduction
from ..ir.graph import Node, Value, format_node
from . import is_float, renders
from .llvm_math import _TANH_P, _TANH_SMALL  # tanh's small-argument polynomial, shared with the CPU kernels

# ---------------------------------------------------------------------------------------------
# types

# a value's type in registers: float16 and bfloat16 are storage types, computed in float32 and
# rounded back to their precision after every node (`_rounded`), as the eager kernels round each op
_TL_DTYPE = {"float32": "tl.float32", "float64": "tl.float64", "int32": "tl.int32", "int64": "tl.int64",
             "int16": "tl.int16", "int8": "tl.int8", "uint8": "tl.uint8", "bool": "tl.int1", "float16": "tl.float32",
             "bfloat16": "tl.float32"}
# a pointer argument's type in a Triton signature; bool is stored as one byte
_POINTER_TYPE = {"float32": "*fp32", "float64": "*fp64", "int32": "*i32", "int64": "*i64", "int16": "*i16",
                 "int8": "*i8", "uint8": "*u8", "bool": "*i8", "float16": "*fp16", "bfloat16": "*bf16"}
_ELEMENT_TYPE = {"float32": "tl.float32", "float64": "tl.float64", "int32": "tl.int32", "int64": "tl.int64",
                 "int16": "tl.int16", "int8": "tl.int8", "uint8": "tl.uint8", "bool": "tl.int8",
                 "float16": "tl.float16", "bfloat16": "tl.bfloat16"}
_HALF_TYPE = {"float16": "tl.float16", "bfloat16": "tl.bfloat16"}
_ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
             "float16": 2, "bfloat16": 2}


def _float(x: float) -> str:
    """A float literal as Triton source (inf and NaN are `float("inf")`, as Triton's tutorials write them)."""
    if math.isnan(x):
        return 'float("nan")'
    if math.isinf(x):
        return 'float("inf")' if x > 0 else 'float("-inf")'
    return repr(x)


def _horner(z: str, coefficients: tuple[float, ...]) -> str:
    """c0 + z * (c1 + z * (c2 + ...)) as source."""
    text = repr(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        text = f"{c!r} + {z} * ({text})"
    return text


# ---------------------------------------------------------------------------------------------
# the expression of each primitive: render(code, node, args) -> Triton source of the value
# (`args` are names of values already computed; `code.let` adds a line for a temporary)


def _truth(v: Value, x: str) -> str:
    """numpy's truth value of an element (NaN is true: != is unordered)."""
    return x if v.dtype.name == "bool" else f"({x} != 0)"


def _binary(op: str) -> Callable:
    return lambda code, n, a: f"{a[0]} {op} {a[1]}"


def _logical(op: str) -> Callable:
    # between a scalar and a block, as selects: Triton's interpreter broadcasts a scalar i1 made by a
    # float comparison as a float (3.6 and 3.9); tl.where broadcasts it right
    as_select = {"&": "tl.where({s}, {b}, False)", "|": "tl.where({s}, True, {b})", "^": "tl.where({s}, {b} == 0, {b})"}

    def render(code, n, a):
        x, y = _truth(n.inputs[0], a[0]), _truth(n.inputs[1], a[1])
        x_scalar, y_scalar = (v.id in code.scalars for v in n.inputs)
        if x_scalar != y_scalar:
            return as_select[op].format(s=x if x_scalar else y, b=y if x_scalar else x)
        return f"{x} {op} {y}"
    return render


def _extreme(name: str) -> Callable:
    """maximum/minimum: NaN in either operand gives NaN, as in numpy and PyTorch."""
    def render(code, n, a):
        if is_float(n.out):
            return f"tl.{name}({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"
        return f"tl.{name}({a[0]}, {a[1]})"
    return render


def _cast(code, n, a):
    src, dst = n.inputs[0], n.out
    if dst.dtype.name == "bool":
        return _truth(src, a[0])
    if src.dtype == dst.dtype:
        return a[0]
    to = _TL_DTYPE[dst.dtype.name]
    if is_float(src) and not is_float(dst):
        # NaN and values out of range become the type's minimum, as on the CPU (x86's conversion);
        # the GPU's saturates. Narrower types convert through int32 and wrap, as the CPU's do.
        wide = "tl.int64" if dst.dtype.name == "int64" else "tl.int32"
        low = -(2 ** (63 if wide == "tl.int64" else 31))
        value = f"tl.where(({a[0]} >= {float(low)!r}) & ({a[0]} < {float(-low)!r}), {a[0]}.to({wide}), {low})"
        return value if wide == to else f"{value}.to({to})"
    return f"{a[0]}.to({to})"  # (Triton converts i1 as unsigned)


def _negative(v: Value, x: str) -> str:
    """-x; for floats as -1.0 * x, which flips a zero's sign (Triton 3.6 computes -x as 0 - x)."""
    return f"-1.0 * {x}" if is_float(v) else f"-{x}"


def _divide(n: Node, x: str, y: str) -> str:
    """x / y correctly rounded, as numpy and CuPy divide: Triton's `/` on float32 is the GPU's
    approximate division (`div.full.f32`, 2 ulps), `tl.div_rn` the IEEE one; float64's `/` is IEEE."""
    return f"tl.div_rn({x}, {y})" if n.out.dtype.name == "float32" else f"{x} / {y}"


def _sqrt(n: Node, x: str) -> str:
    """Correctly rounded, as numpy's: tl.sqrt is approximate in float32 (and tl.sqrt_rn float32 only)."""
    return f"tl.sqrt_rn({x})" if n.out.dtype.name == "float32" else f"tl.sqrt({x})"


def _tanh(code, n, a):
    # x + x^3 P(x^2) near 0 (the polynomial of the CPU kernels), 1 - 2 / (exp(2|x|) + 1) with x's sign
    # beyond: no cancellation in either, and exp overflowing gives exactly 1
    x, t = a[0], "float" if n.out.dtype.name == "float32" else "double"
    name = _var(n.out)
    ax = code.let(f"{name}_abs", f"tl.abs({x})")
    z = code.let(f"{name}_sq", f"{x} * {x}")
    poly = code.let(f"{name}_poly", _horner(z, _TANH_P[t]))
    large = code.let(f"{name}_large", f"1.0 - 2.0 / (tl.exp({ax} + {ax}) + 1.0)")
    small = code.let(f"{name}_small", f"tl.where({x} == 0, {x}, {x} + {x} * ({z} * {poly}))")  # (-0 stays -0)
    return f"tl.where({ax} < {_TANH_SMALL!r}, {small}, tl.where({x} < 0, {_negative(n.out, large)}, {large}))"


def _sigmoid(code, n, a):
    # through e = exp(-|x|) <= 1, which never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below
    e = code.let(f"{_var(n.out)}_exp", f"tl.exp(-tl.abs({a[0]}))")
    return f"tl.where({a[0]} >= 0, 1.0, {e}) / (1.0 + {e})"


def _round(code, n, a):
    # halves to even, as numpy; x - floor(x) is exact, and a result of zero keeps x's sign
    x, name = a[0], _var(n.out)
    down = code.let(f"{name}_floor", f"tl.floor({x})")
    frac = code.let(f"{name}_frac", f"{x} - {down}")
    odd = f"({down} * 0.5 != tl.floor({down} * 0.5))"
    up = code.let(f"{name}_up", f"({frac} > 0.5) | (({frac} == 0.5) & {odd})")
    rounded = code.let(f"{name}_near", f"tl.where({up}, {down} + 1.0, {down})")
    return f"tl.where({rounded} == 0, {x} * 0.0, {rounded})"


def _pow(code, n, a):
    # |x|^y = exp(y log|x|) in float64, rounded to float32 (float32 only: a float64 power would be off
    # by about |y log x| ulps, so `fusible` leaves it to the eager kernel), then C's and numpy's special
    # cases: odd integer powers of a negative x (-0 and -inf too) are negative, a finite negative x to a
    # non-integer power is NaN, and x^0, 1^y and (-1)^inf are 1 (even with a NaN). Each test of y
    # selects on its own: y is often a scalar, x rarely
    x, y, name = a[0], a[1], _var(n.out)
    x = code.let(f"{name}_x", f"{x}.to(tl.float64)")
    y = code.let(f"{name}_y", f"{y}.to(tl.float64)")
    power = code.let(f"{name}_abs", f"tl.exp({y} * tl.log(tl.abs({x})))")
    odd = f"(tl.floor({y}) == {y}) & (tl.floor({y} * 0.5) != {y} * 0.5)"
    negative = f"({x} < 0) | (({x} == 0) & (1.0 / {x} < 0))"
    power = code.let(f"{name}_signed", f"tl.where({odd}, tl.where({negative}, -1.0 * {power}, {power}), {power})")
    finite_negative = f'({x} < 0) & ({x} != float("-inf"))'
    power = code.let(f"{name}_real", f'tl.where(tl.floor({y}) != {y}, tl.where({finite_negative}, float("nan"), '
                                     f"{power}), {power})")
    power = code.let(f"{name}_ones", f'tl.where(tl.abs({y}) == float("inf"), tl.where({x} == -1, 1.0, {power}), '
                                     f"{power})")
    return f"tl.where({y} == 0, 1.0, tl.where({x} == 1, 1.0, {power})).to(tl.float32)"


# float-only ops: float inputs and output
_FLOAT_ONLY: dict[str, Callable] = {
    "exp": lambda code, n, a: f"tl.exp({a[0]})",
    "log": lambda code, n, a: f"tl.log({a[0]})",
    "sqrt": lambda code, n, a: _sqrt(n, a[0]),
    "rsqrt": lambda code, n, a: _divide(n, "1.0", _sqrt(n, a[0])),
    "reciprocal": lambda code, n, a: _divide(n, "1.0", a[0]),
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "erf": lambda code, n, a: f"tl.math.erf({a[0]})",
    "floor": lambda code, n, a: f"tl.floor({a[0]})",
    "ceil": lambda code, n, a: f"tl.ceil({a[0]})",
    "trunc": lambda code, n, a: f"tl.where({a[0]} < 0, tl.ceil({a[0]}), tl.floor({a[0]}))",
    "round": _round,
    "relu": lambda code, n, a: f"tl.where({a[0]} < 0, 0.0, {a[0]})",  # NaN and -0.0 pass, as PyTorch's relu
    "relu_backward": lambda code, n, a: f"tl.where({a[1]} <= 0, 0.0, {a[0]})",
    "div": lambda code, n, a: _divide(n, a[0], a[1]),
    "pow": _pow,
}

# ops on float or integer operands (not bool)
_NUMERIC: dict[str, Callable] = {
    "neg": lambda code, n, a: _negative(n.out, a[0]),
    "abs": lambda code, n, a: f"tl.abs({a[0]})",
    "add": _binary("+"),
    "sub": _binary("-"),
    "mul": _binary("*"),
    "maximum": _extreme("maximum"),
    "minimum": _extreme("minimum"),
}

# ops that take any supported dtype
_ANY: dict[str, Callable] = {
    # (floats: ordered comparisons but !=, true for NaN, as numpy's; bools: Triton's i1 is unsigned)
    "eq": _binary("=="),
    "ne": _binary("!="),
    "lt": _binary("<"),
    "le": _binary("<="),
    "gt": _binary(">"),
    "ge": _binary(">="),
    "logical_and": _logical("&"),
    "logical_or": _logical("|"),
    "logical_xor": _logical("^"),
    "logical_not": lambda code, n, a: f"{a[0]} == 0",  # (NaN == 0 is false: not NaN is false, as numpy's)
    "where": lambda code, n, a: f"tl.where({_truth(n.inputs[0], a[0])}, {a[1]}, {a[2]})",
    "cast": _cast,
    "copy": lambda code, n, a: a[0],
    "expand": lambda code, n, a: a[0],  # the kernel loads its input broadcast; arithmetic broadcasts the rest
}

_FLOAT_TESTS: dict[str, Callable] = {
    "isnan": lambda code, n, a: f"{a[0]} != {a[0]}",
    "isinf": lambda code, n, a: f'tl.abs({a[0]}) == float("inf")',
}

# row reductions: identity, combine two tiles elementwise (looped rows), reduce a tile over its columns
_REDUCTIONS: dict[str, tuple[float, str, str]] = {
    # -0.0: a row of -0.0 sums to -0.0, as in numpy
    "sum": (-0.0, "{acc} + {x}", "tl.sum({tile}, axis=1)[:, None]"),
    "amax": (-math.inf, "tl.maximum({acc}, {x}, propagate_nan=tl.PropagateNan.ALL)", "tl.max({tile}, axis=1)[:, None]"),
    "amin": (math.inf, "tl.minimum({acc}, {x}, propagate_nan=tl.PropagateNan.ALL)", "tl.min({tile}, axis=1)[:, None]"),
}


def _random(code, n, a):
    """Philox for each element: counter = the call's first counter + the node's offset + the
    element's row-major index in the node's shape (as the eager kernel numbers them)."""
    seed, counter = a
    draw = "tl.rand" if n.params["dist"] == "uniform" else "tl.randn"
    index = code.row_index if n.out.shape != code.kernel.shape else code.element_index
    offset = f" + {n.params['offset']}" if n.params["offset"] else ""
    value = f"{draw}({seed}, {counter}{offset} + {index})"
    return f"{value}.to(tl.float64)" if n.out.dtype.name == "float64" else value  # drawn in float32


def fusible(node: Node) -> bool:
    """Whether this renderer can compute `node` inside a fused kernel (the cuda backend's
    `can_fuse`): the nodes and dtypes `jitorch.codegen.llvm.fusible` takes but float64 pow."""
    if node.op == "pow" and any(v.dtype.name != "float32" for v in (*node.inputs, node.out)):
        return False  # exp(y * log x) in float64 would be off by about |y * log x| ulps
    return renders(node, _TL_DTYPE, float_only=_FLOAT_ONLY, numeric=_NUMERIC, float_tests=_FLOAT_TESTS,
                   any_dtype=_ANY, reductions=_REDUCTIONS)


def _expression(code: _Code, node: Node, args: list[str]) -> str:
    op = node.op
    if op == "random":
        return _random(code, node, args)
    for table in (_FLOAT_ONLY, _NUMERIC, _FLOAT_TESTS, _ANY):
        if op in table:
            return table[op](code, node, args)
    raise NotImplementedError(f"the Triton renderer has no rule for `{format_node(node)}`; fusible() should "
                              "have kept it out of the kernel")


# ---------------------------------------------------------------------------------------------
# what a rendered kernel is: its source, its arguments and how to launch it


@dataclass(frozen=True)
class Param:
    """One runtime argument of a kernel, in order: `kind` is "input" or "output" (a pointer to operand
    `operand` of that kind), "n_elements" (pointwise: the loop's element count), "n_rows" (row
    kernels: the product of all loop dims but the last), "size" (loop dim `dim`), "stride" (input
    `operand` along loop dim `dim`, in elements) or "row_len" (row kernels: the last loop dim).
    `type` is its type in a Triton signature ("*fp32", "*i8" for bool, "i64")."""

    name: str
    kind: str
    type: str
    operand: int = -1
    dim: int = -1


@dataclass
class Config:
    """Compile-time constants for one launch (`BLOCK`; row kernels also `ROWS` and `ROW_IN_REGISTERS`)
    and the warps per program."""

    constexprs: dict[str, int | bool]
    num_warps: int = 4

    def options(self) -> dict:
        """Options for `triton.compile`: no fused multiply-adds, so that every operation rounds as
        the CPU kernels and numpy round it (and Triton 3.9 stops warning that its default changes)."""
        return {"num_warps": self.num_warps, "enable_fp_fusion": False}


# a row of up to this many elements (per element size) is kept in registers: 8192 float32 with 16
# warps is 16 registers per thread for each full-row value; longer rows loop
_ROW_IN_REGISTERS_BYTES = 32768
_ROW_TILE = 2048  # elements per program for short rows: several rows per program
_LOOP_BLOCK_BYTES = 8192  # columns per step of a looped row
_POINTWISE_BLOCK = 1024
# below this many bytes of the loop's widest values a kernel takes its default configuration
# untimed: it runs in about a microsecond, less than a launch costs the host, so no block or warp
# choice shows (and timing such kernels measures the launch, not the kernel)
_TUNE_BYTES = 1 << 20
_LARGE_POINTWISE_BYTES = 16 << 20  # from here a pointwise kernel has programs enough for 4096-element blocks
_MAX_CONFIGS = 4  # each candidate is one more compile on the first call: keep the list short


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class TritonSource:
    """One rendered kernel: `text` defines one `@triton.jit` function named `name`, whose arguments
    are `params` (the input pointers, the output pointers, then the sizes and strides it needs, and a
    row kernel's row length last) followed by the compile-time constants `constexprs`."""

    name: str
    text: str
    params: list[Param]
    constexprs: tuple[str, ...]
    rows: bool  # a row kernel
    itemsize: int  # the widest element of its full shape, in bytes
    reduced: int | None = None  # a column kernel: how many leading loop dims its sums run over

    def signature(self) -> dict[str, str]:
        """Argument name -> type, as `triton.compiler.ASTSource` takes it (constants: "constexpr")."""
        return {**{p.name: p.type for p in self.params}, **{c: "constexpr" for c in self.constexprs}}

    def runtime_args(self, loop_shape: tuple[int, ...], input_strides: list[tuple[int, ...]]) -> list[int]:
        """The values of the non-pointer params, in order, for a launch over `loop_shape` (the
        `KernelDesc`'s) where input k has strides `input_strides[k]` (in elements, along the loop dims)."""
        values = {"n_elements": math.prod(loop_shape), "n_rows": math.prod(loop_shape[:-1]),
                  "row_len": loop_shape[-1] if loop_shape else 1}
        if self.reduced is not None:
            values.update(n_reduced=math.prod(loop_shape[:self.reduced]), n_kept=math.prod(loop_shape[self.reduced:]))
        args = []
        for p in self.params:
            if p.kind == "size":
                args.append(loop_shape[p.dim])
            elif p.kind == "stride":
                args.append(input_strides[p.operand][p.dim])
            elif p.kind in values:
                args.append(values[p.kind])
        return args

    def configs(self, loop_shape: tuple[int, ...], wide: bool = False) -> list[Config]:
        """Launch configurations worth timing for this loop shape, the default first, at most
        `_MAX_CONFIGS` (the cuda launcher times them on a kernel's first launch and keeps the fastest:
        `jitorch.backends.cuda.launch`). Kernels under `_TUNE_BYTES` get the default alone. A `wide`
        search (`jitorch.compile(mode="max-autotune")`) offers every candidate below, at any size.

        Pointwise: `BLOCK` elements per program with `num_warps` warps, 1024/4 by default (8 elements
        per thread: two 16-byte loads of float32); also 1024/8 and 2048/8, and 512/4 (twice the
        programs) up to `_LARGE_POINTWISE_BYTES` or 4096/16 (fewer, larger programs) from there.
        Rows in registers: `ROWS` rows of `BLOCK` (the row length's power of two) per program, the
        default with about 2048 elements per program and one warp per 256 of them; also the other
        warp counts of 4, 8 and 16 that leave each thread 2 to 64 elements of a full-row value, and
        twice the rows per program (16 warps) where that tile fits in registers as a long row would.
        Looped rows: 8 KiB of columns per step with 8 warps by default; also twice that with 16 or 8
        warps, and half with 4."""
        if self.reduced is not None:
            return self._column_configs(math.prod(loop_shape[self.reduced:]), math.prod(loop_shape), wide)
        if not self.rows:
            return self._pointwise_configs(math.prod(loop_shape), wide)
        row_len, n_rows = loop_shape[-1], math.prod(loop_shape[:-1])
        small = n_rows * row_len * self.itemsize < _TUNE_BYTES and not wide
        block = _next_power_of_2(row_len)
        if block * self.itemsize <= _ROW_IN_REGISTERS_BYTES:
            rows = max(1, min(_next_power_of_2(n_rows), _ROW_TILE // block))
            warps = max(1, min(16, rows * block // 256))
            pairs = [(rows, warps)]
            if not small:
                pairs += [(rows, w) for w in ((1, 2, 4, 8, 16) if wide else (4, 8, 16))
                          if w != warps and 2 <= rows * block // (32 * w) <= 64]
                # twice the rows per program (half the programs, each with more loads in flight),
                # where the doubled tile still fits the register budget of one long row
                if 2 * rows <= _next_power_of_2(n_rows) and 2 * rows * block * self.itemsize <= _ROW_IN_REGISTERS_BYTES:
                    pairs.append((2 * rows, min(16, 2 * warps)))
            in_registers = [Config({"ROWS": r, "BLOCK": block, "ROW_IN_REGISTERS": True}, w) for r, w in pairs]
            if not wide:
                return in_registers[:_MAX_CONFIGS]
            step = _LOOP_BLOCK_BYTES // self.itemsize  # (a wide search also tries looping over a long row)
            looped = [(b, w) for b, w in ((step // 2, 4), (step, 8)) if b < block]
            return in_registers + [Config({"ROWS": 1, "BLOCK": b, "ROW_IN_REGISTERS": False}, w) for b, w in looped]
        step = _LOOP_BLOCK_BYTES // self.itemsize
        pairs = [(step, 8)] if small else [(step, 8), (2 * step, 16), (2 * step, 8), (step // 2, 4)]
        if wide:
            pairs += [(step, 4), (step // 2, 8)]
        return [Config({"ROWS": 1, "BLOCK": b, "ROW_IN_REGISTERS": False}, w) for b, w in pairs]

    def _pointwise_configs(self, n: int, wide: bool = False) -> list[Config]:
        block = min(_POINTWISE_BLOCK, max(32, _next_power_of_2(n)))
        default = Config({"BLOCK": block}, num_warps=max(1, min(4, block // 256)))
        size = n * self.itemsize
        if wide:  # block sizes from 256 to 4096, each at the warp counts that give a thread 2 to 16 elements
            others = [(b, w) for b in (256, 512, 1024, 2048, 4096) for w in (2, 4, 8, 16) if 2 <= b // (32 * w) <= 16]
            return [default, *(Config({"BLOCK": b}, w) for b, w in others if (b, w) != (block, default.num_warps))]
        if size < _TUNE_BYTES:
            return [default]
        last = (512, 4) if size < _LARGE_POINTWISE_BYTES else (4096, 16)
        return [default, *(Config({"BLOCK": b}, w) for b, w in [(1024, 8), (2048, 8), last])]

    def _column_configs(self, n_kept: int, n: int, wide: bool = False) -> list[Config]:
        """Column kernels: tiles of BLOCK_R rows by BLOCK_C columns, 32 columns (128 bytes of float32
        per row) by 64 rows with 4 warps by default, 16 columns where there are few (more programs);
        from `_TUNE_BYTES` (or in a wide search), also wider and taller tiles."""
        block_c = 16 if n_kept <= 2048 else 32
        pairs = [(64, block_c, 4)]
        if n * self.itemsize >= _TUNE_BYTES or wide:
            pairs += [(32, 2 * block_c, 4), (128, block_c, 8), (16, 4 * block_c, 4)]
        if wide:
            pairs += [(64, 2 * block_c, 8), (256, block_c, 8)]
        return [Config({"BLOCK_R": r, "BLOCK_C": c}, w) for r, c, w in pairs]

    def launch_grid(self, loop_shape: tuple[int, ...], config: Config) -> tuple[int]:
        """Programs to launch: one per BLOCK elements (pointwise), per ROWS rows (row kernels) or per
        BLOCK_C columns (column kernels); at least one, so that an empty kernel is still a valid launch."""
        if self.reduced is not None:
            return (max(1, _cdiv(math.prod(loop_shape[self.reduced:]), config.constexprs["BLOCK_C"])),)
        if self.rows:
            return (max(1, _cdiv(math.prod(loop_shape[:-1]), config.constexprs["ROWS"])),)
        return (max(1, _cdiv(math.prod(loop_shape), config.constexprs["BLOCK"])),)

    def define(self):
        """The kernel as a `@triton.jit` function, defined in a namespace of its own from `text`
        (registered with `linecache`, where Triton reads a function's source). Under
        TRITON_INTERPRET=1 (read here, when the function is decorated) it runs in the interpreter."""
        import triton
        import triton.language as tl

        digest = hashlib.sha1(self.text.encode()).hexdigest()[:16]
        filename = f"<jitorch triton kernel {self.name} {digest}>"
        linecache.cache[filename] = (len(self.text), None, self.text.splitlines(True), filename)
        namespace = {"triton": triton, "tl": tl}
        exec(compile(self.text, filename, "exec"), namespace)
        return namespace[self.name]


# ---------------------------------------------------------------------------------------------
# codegen


def _var(v: Value) -> str:
    return f"v{v.id}"


class _Code:
    """Lines of Python source at an indent, and where a random node finds its elements' indices."""

    def __init__(self, kernel: Kernel, depth: int = 1) -> None:
        self.kernel = kernel
        self.lines: list[str] = []
        self.depth = depth
        self.element_index = "index"  # the row-major index of each element of the kernel's shape
        self.row_index = "row"  # ... and of each row (row kernels)
        self.scalars: set[int] = set()  # ids of the values that are one number for the whole kernel

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def comment(self, text: str) -> None:
        for line in text.splitlines():
            self.line(f"# {line}".rstrip())

    def let(self, name: str, expr: str) -> str:
        self.line(f"{name} = {expr}")
        return name

    @contextmanager
    def block(self, header: str):
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


def _emit_node(code: _Code, node: Node, env: dict[int, str]) -> None:
    code.comment(format_node(node))
    if node.op != "random" and all(v.id in code.scalars for v in node.inputs):
        code.scalars.add(node.out.id)
    expression = _expression(code, node, [env[v.id] for v in node.inputs])
    if node.out.dtype.name in _HALF_TYPE:
        expression = _rounded(code.let(f"{_var(node.out)}_f32", expression), node.out)
    env[node.out.id] = code.let(_var(node.out), expression)


def _rounded(name: str, v: Value) -> str:
    """The float32 register value `name` of `v` rounded to `v`'s half type, to nearest even. bfloat16
    in integer ops (a float32's top half; NaN stays NaN): Triton's interpreter truncates where the
    GPU's conversion rounds, and this is the same on both."""
    if v.dtype.name == "float16":
        return f"{name}.to(tl.float16).to(tl.float32)"
    bits = f"{name}.to(tl.int32, bitcast=True)"
    rounded = f"(({bits} + 0x7FFF + (({bits} >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)"
    return f"tl.where({name} != {name}, {name}, {rounded})"


def _load(ptr: str, v: Value, address: str | None, mask: str | None) -> str:
    """A load of input `v` (None address: its only element, a scalar); bool bytes become i1, half
    types float32."""
    where = ptr if address is None else f"{ptr} + {address}"
    text = f"tl.load({where}, mask={mask})" if mask else f"tl.load({where})"
    if v.dtype.name == "bool":
        return f"{text} != 0"
    return f"{text}.to(tl.float32)" if v.dtype.name in _HALF_TYPE else text


def _store(code: _Code, ptr: str, v: Value, value: str, address: str, mask: str) -> None:
    if v.dtype.name == "bool":
        value = f"{value}.to(tl.int8)"
    elif v.dtype.name in _HALF_TYPE:
        value = f"{value}.to({_HALF_TYPE[v.dtype.name]})"
    code.line(f"tl.store({ptr} + {address}, {value}, mask={mask})")


def _describe_input(v: Value, bcast: tuple[bool, ...]) -> str:
    where = [str(d) for d, b in enumerate(bcast) if b]
    if all(bcast):
        how = "a scalar, read once"
    elif where:
        how = f"broadcast along loop dim{'s' if len(where) > 1 else ''} {', '.join(where)}"
    else:
        how = "full"
    return f"{v.name}:{v.type_str()}, {how}"


def _dim_indices(code: _Code, flat: str, sizes: list[int], wanted: set[int], first: int = 0) -> dict[int, str]:
    """Lines computing the index along each loop dim in `wanted` from the row-major index `flat`
    over loop dims first .. first + len(sizes) - 1 (the size params `size{d}` of all but the first);
    returns dim -> name."""
    names = {}
    last = first + len(sizes) - 1
    if first == last:
        return {first: flat} if first in wanted else {}
    for d in sorted(wanted, reverse=True):
        quotient = flat + "".join(f" // size{e}" for e in range(last, d, -1))
        names[d] = code.let(f"i{d}", quotient if d == first else f"{quotient} % size{d}")
    return names


class _Renderer:
    """The source of one kernel: its signature, then its body."""

    def __init__(self, desc: KernelDesc) -> None:
        self.desc = desc
        self.kernel = desc.kernel
        self.ndim = len(desc.loop_shape)
        self.ptr = {v.id: f"{_var(v)}_ptr" for v in (*self.kernel.inputs, *self.kernel.outputs)}
        self.code = _Code(self.kernel)

    def params(self, outer_dims: int) -> list[Param]:
        """Pointers, the element or row count, the sizes that index decomposition divides by (loop
        dims 1 .. outer_dims - 1), each input's strides along its non-broadcast dims but the
        innermost, then the row length."""
        kernel, ndim = self.kernel, self.ndim
        params = [Param(self.ptr[v.id], "input", _POINTER_TYPE[v.dtype.name], k) for k, v in enumerate(kernel.inputs)]
        params += [Param(self.ptr[v.id], "output", _POINTER_TYPE[v.dtype.name], j)
                   for j, v in enumerate(kernel.outputs)]
        params.append(Param("n_rows", "n_rows", "i64") if kernel.rows else Param("n_elements", "n_elements", "i64"))
        params += [Param(f"size{d}", "size", "i64", dim=d) for d in range(1, outer_dims)]
        for k, v in enumerate(kernel.inputs):
            params += [Param(f"{_var(v)}_stride{d}", "stride", "i64", k, d)
                       for d in range(ndim - 1) if not self.desc.broadcast[k][d]]
        if kernel.rows:
            params.append(Param("row_len", "row_len", "i64"))
        return params

    def header(self) -> None:
        self.code.comment(self.kernel.format().splitlines()[0])  # (each node's line comes with its code)
        if self.ndim:
            self.code.comment(f"loop shape {list(self.desc.loop_shape)}: the kernel's dims, merged where every "
                              "input is full along both or broadcast along both")

    def source(self) -> TritonSource:
        kernel = self.kernel
        reduced = None
        if kernel.columns:
            constexprs = ("BLOCK_R", "BLOCK_C")
            reduced = self.desc.reduced_loop_dims
            params = self.column_params(reduced)
            self.header()
            self.column_body(reduced)
        elif kernel.rows:
            constexprs = ("ROWS", "BLOCK", "ROW_IN_REGISTERS")
            params = self.params(self.ndim - 1)
            self.header()
            self.row_body()
        else:
            constexprs = ("BLOCK",)
            params = self.params(self.ndim)
            self.header()
            self.pointwise_body()
        name = self.desc.name
        text = "\n".join(["@triton.jit", *_signature_lines(name, [p.name for p in params], constexprs),
                          *self.code.lines]) + "\n"
        # the widest element of a full row (what a row in registers costs), or of any operand
        values = [*kernel.inputs, *kernel.outputs, *(n.out for n in kernel.nodes)]
        full = [v for v in values if v.shape == kernel.shape] or values
        itemsize = max(_ITEMSIZE[v.dtype.name] for v in full)
        return TritonSource(name, text, params, constexprs, kernel.rows, itemsize, reduced)

    # --- pointwise -------------------------------------------------------------------------
    def pointwise_body(self) -> None:
        code, kernel, desc, ndim = self.code, self.kernel, self.desc, self.ndim
        self.flat_index()
        wanted = {d for bcast in desc.broadcast for d in range(ndim) if not bcast[d]}
        env = self.load_inputs(_dim_indices(code, "index", list(desc.loop_shape), wanted))
        for node in kernel.nodes:
            _emit_node(code, node, env)
        for v in kernel.outputs:
            _store(code, self.ptr[v.id], v, env[v.id], "index", "mask")

    def load_inputs(self, dims: dict[int, str]) -> dict[int, str]:
        """Lines loading each input where `mask` holds, at its strides along the loop dims it is not
        broadcast on (`dims`: each loop dim's index); one number once where it is broadcast on all.
        Returns value id -> the variable holding it."""
        code, kernel, desc, ndim = self.code, self.kernel, self.desc, self.ndim
        env: dict[int, str] = {}
        for k, v in enumerate(kernel.inputs):
            bcast = desc.broadcast[k]
            if all(bcast):
                code.scalars.add(v.id)
                load = _load(self.ptr[v.id], v, None, None)
            else:
                terms = [f"{dims[d]} * {_var(v)}_stride{d}" for d in range(ndim - 1) if not bcast[d]]
                terms += [dims[ndim - 1]] if not bcast[-1] else []
                load = _load(self.ptr[v.id], v, " + ".join(terms), "mask")
            env[v.id] = code.let(_var(v), f"{load}  # {_describe_input(v, bcast)}")
        return env

    def flat_index(self) -> None:
        """`index` (the elements this program computes) and `mask` (those inside the loop)."""
        self.code.line("index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # row-major in the loop")
        self.code.line("mask = index < n_elements")

    # --- columns: sums over the leading dims ----------------------------------------------
    def column_params(self, reduced: int) -> list[Param]:
        """Pointers, the reduced and kept element counts, the sizes that index decomposition
        divides by (each loop dim's but the first of the reduced and of the kept ones), then each
        input's strides along its non-broadcast dims but the innermost."""
        kernel, ndim = self.kernel, self.ndim
        params = [Param(self.ptr[v.id], "input", _POINTER_TYPE[v.dtype.name], k) for k, v in enumerate(kernel.inputs)]
        params += [Param(self.ptr[v.id], "output", _POINTER_TYPE[v.dtype.name], j)
                   for j, v in enumerate(kernel.outputs)]
        params += [Param("n_reduced", "n_reduced", "i64"), Param("n_kept", "n_kept", "i64")]
        params += [Param(f"size{d}", "size", "i64", dim=d) for d in range(ndim) if d not in (0, reduced)]
        for k, v in enumerate(kernel.inputs):
            params += [Param(f"{_var(v)}_stride{d}", "stride", "i64", k, d)
                       for d in range(ndim - 1) if not self.desc.broadcast[k][d]]
        return params

    def column_body(self, reduced: int) -> None:
        """BLOCK_C columns (the kept dims, flattened) per program, walking all the rows (the reduced
        dims, flattened) BLOCK_R at a time: the full-shape values as a pointwise kernel computes them,
        each sum accumulated per column in a [BLOCK_R, BLOCK_C] tile, reduced over its rows at the end."""
        code, kernel, desc, ndim = self.code, self.kernel, self.desc, self.ndim
        sums = [n for n in kernel.nodes if _is_sum(n)]
        wanted = {d for bcast in desc.broadcast for d in range(ndim) if not bcast[d]}
        code.line("col = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]  # [1, BLOCK_C]")
        code.line("col_mask = col < n_kept")
        dims = _dim_indices(code, "col", list(desc.loop_shape[reduced:]), {d for d in wanted if d >= reduced}, reduced)
        for node in sums:
            code.line(f"{_var(node.out)}_acc = tl.zeros([BLOCK_R, BLOCK_C], {_ACCUMULATOR[node.out.dtype.name]})"
                      f"  # {node.out.name} per column, one row of partial sums per row of the tile")
        code.element_index = "index"
        with code.block("for row0 in range(0, n_reduced, BLOCK_R):"):
            code.line("row = row0 + tl.arange(0, BLOCK_R)[:, None]  # [BLOCK_R, 1]")
            code.line("mask = (row < n_reduced) & col_mask")
            code.line("index = row * n_kept + col  # row-major in the kernel's shape")
            dims.update(_dim_indices(code, "row", list(desc.loop_shape[:reduced]), {d for d in wanted if d < reduced}))
            env = self.load_inputs(dims)
            for node in kernel.nodes:
                if _is_sum(node):
                    code.comment(format_node(node))
                    code.line(f"{_var(node.out)}_acc += tl.where(mask, {env[node.inputs[0].id]}, 0)")
                else:
                    _emit_node(code, node, env)
            for v in kernel.outputs:
                if v.shape == kernel.shape:
                    _store(code, self.ptr[v.id], v, env[v.id], "index", "mask")
        for node in sums:
            total = code.let(_var(node.out), f"tl.sum({_var(node.out)}_acc, 0)[None, :]")
            if any(v.id == node.out.id for v in kernel.outputs):
                _store(code, self.ptr[node.out.id], node.out, total, "col", "col_mask")

    # --- rows ------------------------------------------------------------------------------
    def row_body(self) -> None:
        code, kernel, desc = self.code, self.kernel, self.desc
        outer = self.ndim - 1  # loop dims before the row's
        code.line("row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]")
        code.line("row_mask = row < n_rows")
        wanted = {d for bcast in desc.broadcast for d in range(outer) if not bcast[d]}
        dims = _dim_indices(code, "row", list(desc.loop_shape[:-1]), wanted)
        code.element_index = "row * row_len + col"
        self.row_base = {}  # input id -> its offset at the row's start ("" when broadcast along every row)
        env: dict[int, str] = {}
        for k, v in enumerate(kernel.inputs):
            bcast = desc.broadcast[k]
            self.row_base[v.id] = " + ".join(f"{dims[d]} * {_var(v)}_stride{d}" for d in range(outer) if not bcast[d])
            if all(bcast):
                code.scalars.add(v.id)
                env[v.id] = code.let(_var(v), f"{_load(self.ptr[v.id], v, None, None)}  # {_describe_input(v, bcast)}")
            elif bcast[-1]:  # one value per row
                load = _load(self.ptr[v.id], v, self.row_base[v.id], "row_mask")
                env[v.id] = code.let(_var(v), f"{load}  # {_describe_input(v, bcast)}")
        row_ids = {n.out.id for n in kernel.nodes if n.out.shape != kernel.shape}
        with code.block("if ROW_IN_REGISTERS:"):
            code.comment("the whole row in one block: read once, every value computed once")
            self.persistent(dict(env))
        with code.block("else:"):
            code.comment("rows longer than a block: one pass over the row per level of reductions, BLOCK "
                         "columns at a time")
            env = self.looped(env, row_ids)
        for v in kernel.outputs:  # row values are computed by now in either form
            if v.id in row_ids:
                _store(code, self.ptr[v.id], v, env[v.id], "row", "row_mask")

    def columns(self, start: str | None) -> None:
        code = self.code
        code.line(f"col = {start + ' + ' if start else ''}tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]")
        code.line("col_mask = col < row_len")
        code.line("mask = row_mask & col_mask")

    def load_columns(self, env: dict[int, str], ids: set[int] | None = None) -> None:
        """Loads of the inputs that vary along the row (those in `ids`, when given)."""
        code, desc = self.code, self.desc
        for k, v in enumerate(self.kernel.inputs):
            bcast = desc.broadcast[k]
            if bcast[-1] or ids is not None and v.id not in ids:
                continue
            base = self.row_base[v.id]
            if not base and POSITIONS in constant_traits(v, self.kernel.shape[-1]):
                # (cross-entropy's one-hot mask compares the targets with these: no load, no L2 traffic)
                env[v.id] = code.let(_var(v), f"col.to({_TL_DTYPE[v.dtype.name]})  # {v.name}: 0, 1, ..., "
                                              f"{self.kernel.shape[-1] - 1} along the row, the column index")
                continue
            address = f"{base} + col" if base else "col"
            load = _load(self.ptr[v.id], v, address, "mask" if base else "col_mask")
            env[v.id] = code.let(_var(v), f"{load}  # {_describe_input(v, bcast)}")

    def reduce(self, node: Node, tile: str) -> str:
        """The row's reduction from a tile whose masked-off elements hold the identity (a half type's
        in float32, rounded once at the end)."""
        code, name = self.code, _var(node.out)
        value = code.let(name, _REDUCTIONS[node.op][2].format(tile=tile))
        if node.op != "sum":  # tl.max / tl.min skip NaN; numpy's return it
            seen = f"tl.max(({tile} != {tile}).to(tl.int32), axis=1)[:, None]"
            value = code.let(name, f'tl.where({seen} > 0, float("nan"), {value})')
        if node.out.dtype.name in _HALF_TYPE:
            code.let(name, _rounded(value, node.out))
        return name

    def persistent(self, env: dict[int, str]) -> None:
        code, kernel = self.code, self.kernel
        self.columns(None)
        self.load_columns(env)
        for node in kernel.nodes:
            if not is_row_reduction(node):
                _emit_node(code, node, env)
                continue
            code.comment(format_node(node))
            identity = _float(_REDUCTIONS[node.op][0])
            x = env[node.inputs[0].id]
            if node.op == "sum":
                env[node.out.id] = self.reduce(node, f"tl.where(mask, {x}, {identity})")
            else:
                env[node.out.id] = self.reduce(node, code.let(f"{_var(node.out)}_tile",
                                                              f"tl.where(mask, {x}, {identity})"))
        for v in kernel.outputs:
            if v.shape == kernel.shape:
                _store(code, self.ptr[v.id], v, env[v.id], "row * row_len + col", "mask")

    def looped(self, env: dict[int, str], row_ids: set[int]) -> dict[int, str]:
        """Pass L accumulates the reductions of level L + 1 and stores the full-shape outputs of level
        L; before it come the row values of level L, whose reductions are done."""
        code, kernel = self.code, self.kernel
        level = kernel.levels()
        made = {n.out.id: n for n in kernel.nodes}
        for pass_ in range(max(level.values(), default=0) + 1):
            for node in kernel.nodes:
                if node.out.id in row_ids and not is_row_reduction(node) and level[node.out.id] == pass_:
                    _emit_node(code, node, env)
            reductions = [n for n in kernel.nodes if is_row_reduction(n) and level[n.out.id] == pass_ + 1]
            stores = [v for v in kernel.outputs if v.id not in row_ids and level[v.id] == pass_]
            if not reductions and not stores:
                continue
            targets = [r.inputs[0] for r in reductions] + stores
            nodes = _needed(kernel, targets, row_ids, made)
            wanted = {v.id for n in nodes for v in n.inputs} | {v.id for v in targets}
            what = [f"{r.op} {r.inputs[0].name}" for r in reductions] + [f"store {v.name}" for v in stores]
            code.comment(f"pass {pass_}: {', '.join(what)}")
            accumulators = {}
            for r in reductions:
                identity = _float(_REDUCTIONS[r.op][0])
                accumulators[r.out.id] = code.let(f"acc{r.out.id}",
                                                  f"tl.full([ROWS, BLOCK], {identity}, {_TL_DTYPE[r.out.dtype.name]})")
            pass_env = dict(env)
            with code.block("for start in range(0, row_len, BLOCK):"):
                self.columns("start")
                self.load_columns(pass_env, wanted)
                for node in nodes:
                    _emit_node(code, node, pass_env)
                for r in reductions:
                    acc, identity = accumulators[r.out.id], _float(_REDUCTIONS[r.op][0])
                    x = f"tl.where(mask, {pass_env[r.inputs[0].id]}, {identity})"
                    code.let(acc, _REDUCTIONS[r.op][1].format(acc=acc, x=x))
                for v in stores:
                    _store(code, self.ptr[v.id], v, pass_env[v.id], "row * row_len + col", "mask")
            for r in reductions:
                code.comment(format_node(r))
                env[r.out.id] = self.reduce(r, accumulators[r.out.id])
        return env


_ACCUMULATOR = {"float32": "tl.float32", "float64": "tl.float64"}


def _is_sum(node: Node) -> bool:
    """A column kernel's sum over its leading dims (every reduction such a kernel holds is one)."""
    return node.op == "sum"


def _signature_lines(name: str, args: list[str], constexprs: tuple[str, ...]) -> list[str]:
    """`def name(args, C: tl.constexpr, ...):`, wrapped at 110 columns."""
    words = [f"{a}," for a in args] + [f"{c}: tl.constexpr," for c in constexprs]
    words[-1] = words[-1][:-1] + "):"
    lines, line = [], f"def {name}("
    for word in words:
        if len(line) + len(word) > 110 and not line.endswith("("):
            lines.append(line.rstrip())
            line = " " * 8
        line += word + " "
    return lines + [line.rstrip()]


def _needed(kernel: Kernel, targets: list[Value], row_ids: set[int], made: dict[int, Node]) -> list[Node]:
    """The kernel's full-shape nodes that `targets` depend on, in kernel order (row values and
    inputs are at hand)."""
    seen: set[int] = set()
    stack = [v.id for v in targets]
    while stack:
        vid = stack.pop()
        if vid in seen or vid in row_ids or vid not in made:
            continue
        seen.add(vid)
        stack.extend(v.id for v in made[vid].inputs)
    return [n for n in kernel.nodes if n.out.id in seen]


# ---------------------------------------------------------------------------------------------
# a group of kernels as one launch (horizontal fusion)


@dataclass
class GroupSource(TritonSource):
    """A rendered `KernelGroup`: one kernel over all its members, whose only runtime argument is
    `table`, an int64 array laid out by `table(addresses, config)`: for each operand of the code
    (a member's inputs, then its outputs) a row of every member's address of it; then each member's
    element count; then the first program of each member and, last, the program count (that
    `launch_grid` launches). Program p works on the member m with first[m] <= p < first[m + 1]."""

    sizes: tuple[int, ...] = ()  # each member's element count
    n_inputs: int = 0  # operands per member that are inputs
    n_outputs: int = 0  # ... and outputs

    def runtime_args(self, loop_shape: tuple[int, ...], input_strides: list[tuple[int, ...]]) -> list[int]:
        return []  # (the table, made per launch)

    def configs(self, loop_shape: tuple[int, ...], wide: bool = False) -> list[Config]:
        return self._pointwise_configs(sum(self.sizes), wide)

    def launch_grid(self, loop_shape: tuple[int, ...], config: Config) -> tuple[int]:
        return (max(1, self._first_programs(config)[-1]),)

    def _first_programs(self, config: Config) -> list[int]:
        first, block = [0], config.constexprs["BLOCK"]
        for n in self.sizes:
            first.append(first[-1] + _cdiv(n, block))
        return first

    def table(self, addresses: list[int], config: Config) -> list[int]:
        """The launch's table in `config`, from the operands' addresses in the group's order (every
        member's inputs, member by member, then every member's outputs: `KernelGroup.inputs`, `.outputs`)."""
        n_in, n_out = self.n_inputs, self.n_outputs
        m = len(self.sizes)
        inputs, outputs = addresses[: n_in * m], addresses[n_in * m:]
        rows = [inputs[k::n_in] for k in range(n_in)] + [outputs[j::n_out] for j in range(n_out)]
        return [a for row in rows for a in row] + list(self.sizes) + self._first_programs(config)


class _GroupRenderer(_Renderer):
    """The first member's code, with each operand's address and the element count read from the
    launch's table for the member the program works on."""

    def __init__(self, group: KernelGroup) -> None:
        super().__init__(group.descs[0])
        self.group = group
        self.operands = [*self.kernel.inputs, *self.kernel.outputs]

    def params(self, outer_dims: int) -> list[Param]:
        return [Param("table", "table", "*i64")]

    def header(self) -> None:
        m = len(self.group.members)
        self.code.comment(f"{m} kernels of one structure as one launch, each over its own elements (horizontal "
                          "fusion);\nthe table holds each operand's address per member, then the members' "
                          "element counts and first programs")
        self.code.comment("the code of the first: " + self.kernel.format().splitlines()[0])

    def flat_index(self) -> None:
        code, m = self.code, len(self.group.members)
        counts, first = len(self.operands) * m, (len(self.operands) + 1) * m
        code.line("program = tl.program_id(0)")
        code.comment(f"the member this program works on: first[member] <= program < first[member + 1] "
                     f"(first at table + {first})")
        code.line("lo = 0")
        code.line(f"hi = {m}")
        with code.block(f"for _ in tl.static_range({max(1, (m - 1).bit_length())}):"):
            code.line("mid = (lo + hi) // 2")
            code.line(f"right = tl.load(table + {first} + mid) <= program")
            code.line("lo = tl.where(right, mid, lo)")
            code.line("hi = tl.where(right, hi, mid)")
        code.line("member = lo")
        code.line(f"start = (program - tl.load(table + {first} + member)) * BLOCK")
        code.line("index = start + tl.arange(0, BLOCK)  # within the member's elements")
        # what the loads may assume of values read from the table, which Triton cannot see: every
        # count a multiple of `step` (the sizes' common power of two, at most 16) and every address
        # of 16 bytes (the launcher copies an operand that is not) let it load 16 bytes at a time
        step = math.gcd(16, *(math.prod(k.shape) for k in self.group.members))
        count = f"tl.load(table + {counts} + member)"
        code.line(f"mask = index < {count if step == 1 else f'tl.multiple_of({count}, {step})'}")
        for k, v in enumerate(self.operands):
            code.line(f"{self.ptr[v.id]} = tl.multiple_of(tl.load(table + {k * m} + member).to("
                      f"tl.pointer_type({_ELEMENT_TYPE[v.dtype.name]})), 16)  # {v.name}'s address in this member")


def render_group(group: KernelGroup) -> GroupSource:
    """The Triton source of a `KernelGroup` (see `GroupSource`): named after its members' code and
    how many they are."""
    renderer = _GroupRenderer(group)
    renderer.header()
    renderer.pointwise_body()
    name = group.name()
    text = "\n".join(["@triton.jit", *_signature_lines(name, ["table"], ("BLOCK",)), *renderer.code.lines]) + "\n"
    kernel = renderer.kernel
    itemsize = max(_ITEMSIZE[v.dtype.name] for v in renderer.operands)
    return GroupSource(name, text, [Param("table", "table", "*i64")], ("BLOCK",), False, itemsize,
                       sizes=tuple(math.prod(k.shape) for k in group.members),
                       n_inputs=len(kernel.inputs), n_outputs=len(kernel.outputs))


# ---------------------------------------------------------------------------------------------
# a matrix product with its epilogue (`MatmulEpilogue`)


@dataclass
class MatmulSource(TritonSource):
    """A rendered `MatmulEpilogue`: C = A @ B tile by tile, then the epilogue kernel's nodes on each
    tile of C, in registers. Its runtime arguments after the pointers are the sizes M, N, K, then
    the strides (in elements) of A, of B, and of each epilogue input along the dims it is not
    broadcast on (`matmul_args`); its outputs are C-contiguous (M, N) arrays."""

    broadcasts: tuple[tuple[bool, bool], ...] = ()  # per epilogue input: broadcast along M, along N
    precision: str = "tf32"  # `tl.dot`'s input precision (`matmul_precision`)

    def matmul_args(self, m: int, n: int, k: int, strides: list[tuple[int, int]]) -> list[int]:
        """The arguments after the pointers for an (m, k) @ (k, n) product whose inputs (A, B, then
        the epilogue's, each as a 2-d view) have these element strides."""
        args = [m, n, k, *strides[0], *strides[1]]
        for (bm, bn), (sm, sn) in zip(self.broadcasts, strides[2:]):
            args += ([] if bm else [sm]) + ([] if bn else [sn])
        return args

    def configs(self, loop_shape: tuple[int, ...], wide: bool = False) -> list[Config]:
        """(BLOCK_M, BLOCK_N, BLOCK_K, warps, pipeline stages), GROUP_M 8: the default first, then
        tiles of the sizes Triton's matmul tutorial uses for float32 inputs multiplied in TF32 (in
        full float32 the products run on the CUDA cores: smaller tiles); a product under 1 MiB of
        output takes the last alone, except in a `wide` search, which also tries each tile with one
        pipeline stage more. The launcher times them against cuBLAS and the epilogue."""
        m, n = loop_shape
        if self.precision == "ieee":
            tiles = [(64, 64, 16, 4, 2), (128, 64, 16, 8, 2), (64, 128, 16, 8, 2), (32, 64, 16, 4, 2)]
        elif self.itemsize == 2:  # float16 and bfloat16 factors: twice the depth per stage in the same memory
            tiles = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)]
        else:
            tiles = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4)]
        if wide:
            tiles += [(bm, bn, bk, w, stages + 1) for bm, bn, bk, w, stages in tiles]
        elif m * n * 4 < _TUNE_BYTES:
            tiles = tiles[3:]
        return [MatmulConfig({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                              "DOT_PRECISION": self.precision}, w, stages) for bm, bn, bk, w, stages in tiles]

    def launch_grid(self, loop_shape: tuple[int, ...], config: Config) -> tuple[int]:
        m, n = loop_shape
        return (_cdiv(m, config.constexprs["BLOCK_M"]) * _cdiv(n, config.constexprs["BLOCK_N"]) or 1,)


@dataclass
class MatmulConfig(Config):
    """A matmul tile: its constants, warps and software-pipeline stages."""

    num_stages: int = 3

    def options(self) -> dict:
        return {**super().options(), "num_stages": self.num_stages}


def render_matmul(item: MatmulEpilogue, float32_matmul_precision: str = "highest") -> MatmulSource:
    """The Triton source of a product and its epilogue (see `MatmulSource`), its factors multiplied
    at `float32_matmul_precision` (`matmul_precision`)."""
    kernel = item.kernel
    product = item.product
    a, b = item.matmul.inputs
    others = [v for v in kernel.inputs if v.id != product.id]
    code = _Code(kernel)
    ptr = {v.id: f"{_var(v)}_ptr" for v in (*others, *kernel.outputs)}
    ndim = len(product.shape)
    # each input as a 2-d operand of the (rows, columns) product: broadcast along the rows where its
    # leading dims are all 1 (a bias), along the columns where its last dim is 1
    broadcasts = tuple((all(d == 1 for d in ((1,) * (ndim - len(v.shape)) + v.shape)[:-1]),
                        (v.shape[-1] if v.shape else 1) == 1) for v in others)
    factor_type = _POINTER_TYPE[a.dtype.name]
    params = [Param("a_ptr", "input", factor_type, 0), Param("b_ptr", "input", factor_type, 1)]
    params += [Param(ptr[v.id], "input", _POINTER_TYPE[v.dtype.name], 2 + k) for k, v in enumerate(others)]
    params += [Param(ptr[v.id], "output", _POINTER_TYPE[v.dtype.name], j) for j, v in enumerate(kernel.outputs)]
    params += [Param(name, "size", "i64") for name in ("M", "N", "K")]
    params += [Param(name, "stride", "i64") for name in ("a_stride0", "a_stride1", "b_stride0", "b_stride1")]
    for v, bcast in zip(others, broadcasts):
        params += [Param(f"{_var(v)}_stride{d}", "stride", "i64") for d in range(2) if not bcast[d]]
    code.comment(f"{format_node(item.matmul)}\nthen, on each tile of the product in registers: "
                 + kernel.format().splitlines()[0])
    code.line("program = tl.program_id(0)")
    code.line("tiles_m = tl.cdiv(M, BLOCK_M)")
    code.line("tiles_n = tl.cdiv(N, BLOCK_N)")
    code.comment("programs walk GROUP_M rows of tiles a column at a time: neighbours share B's tiles in L2")
    code.line("group = program // (GROUP_M * tiles_n)")
    code.line("group_rows = tl.minimum(tiles_m - group * GROUP_M, GROUP_M)")
    code.line("tile_m = group * GROUP_M + (program % (GROUP_M * tiles_n)) % group_rows")
    code.line("tile_n = (program % (GROUP_M * tiles_n)) // group_rows")
    code.line("rm = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    code.line("rn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    code.line("rk = tl.arange(0, BLOCK_K)")
    code.line("acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)")
    with code.block("for k0 in range(0, K, BLOCK_K):"):
        code.line("ks = k0 + rk")
        code.line("a = tl.load(a_ptr + rm[:, None] * a_stride0 + ks[None, :] * a_stride1, "
                  "mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)")
        code.line("b = tl.load(b_ptr + ks[:, None] * b_stride0 + rn[None, :] * b_stride1, "
                  "mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0)")
        code.line("acc += tl.dot(a, b, input_precision=DOT_PRECISION)")
    code.line("row = rm[:, None]")
    code.line("col = rn[None, :]")
    code.line("mask = (row < M) & (col < N)")
    code.line("index = row * N + col  # row-major in the product")
    if product.dtype.name in _HALF_TYPE:  # (accumulated in float32, rounded to the product's type as cuBLAS does)
        env = {product.id: code.let(_var(product), _rounded("acc", product))}
    else:
        env = {product.id: code.let(_var(product), f"acc  # {product.name}, never written to memory")}
    for v, bcast in zip(others, broadcasts):
        if all(bcast):
            code.scalars.add(v.id)
            load = _load(ptr[v.id], v, None, None)
        else:
            terms = [f"{axis} * {_var(v)}_stride{d}" for d, axis in enumerate(("row", "col")) if not bcast[d]]
            where = " & ".join(f"({axis} < {size})" for axis, size, b in (("row", "M", bcast[0]),
                                                                           ("col", "N", bcast[1])) if not b)
            load = _load(ptr[v.id], v, " + ".join(terms), where)
        env[v.id] = code.let(_var(v), f"{load}  # {v.name}:{v.type_str()}")
    for node in kernel.nodes:
        _emit_node(code, node, env)
    for v in kernel.outputs:
        _store(code, ptr[v.id], v, env[v.id], "index", "mask")
    name = item.name()
    constexprs = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "DOT_PRECISION")
    text = "\n".join(["@triton.jit", *_signature_lines(name, [p.name for p in params], constexprs),
                      *code.lines]) + "\n"
    return MatmulSource(name, text, params, constexprs, False, _ITEMSIZE[a.dtype.name], broadcasts=broadcasts,
                        precision=matmul_precision(float32_matmul_precision))


def matmul_precision(float32_matmul_precision: str) -> str:
    """`tl.dot`'s input precision for float32 factors: "ieee" at "highest" (float32 arithmetic, as
    cuBLAS's SGEMM: PyTorch's meaning of "highest"), else "tf32" (as cuBLAS at "high")."""
    return "ieee" if float32_matmul_precision == "highest" else "tf32"


def render(desc: KernelDesc) -> TritonSource:
    """The Triton source of one kernel: a `@triton.jit` function named `desc.name`, its parameters,
    compile-time constants, configurations and launch grid (see `TritonSource`)."""
    return _Renderer(desc).source()
