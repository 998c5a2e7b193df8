"""The LLVM renderer: a kernel description (`jitorch.ir.fusion.KernelDesc`) as LLVM IR text.

A kernel becomes one function that runs a loop nest over the kernel's collapsed loop shape, loads
each input once per element (a broadcast input once per row), evaluates every node as scalar LLVM
instructions, and stores only the values read outside the kernel. LLVM vectorizes the inner loop.
Each input passes its strides in elements; its innermost stride is static: 0 when it is broadcast
along that dim, else 1 (the launcher copies a strided input first).

This module only renders and answers which nodes it can render (`fusible`); compiling the text and
calling the result is the CPU backend's (`jitorch.backends.cpu`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from llvmlite import ir

from ..ir.fusion import POSITIONS, ZERO, Kernel, KernelDesc, constant_traits, is_row_reduction
from ..ir.graph import Node, Value
from . import is_float, llvm_math, llvm_philox, renders

# ---------------------------------------------------------------------------------------------
# types

F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
# a value's type in registers: float16 and bfloat16 are storage types, computed in float32 and
# rounded back to their precision after every node (`_rounded`), as the eager kernels round each op.
# LLVM's integers have no sign: uint8 and int8 are both i8, and each op on them picks the signed or
# unsigned instruction by the dtype (`_signed`), so arithmetic wraps as numpy's and PyTorch's does.
_LLVM_TYPE = {"float32": F32, "float64": F64, "bool": I1, "int64": I64, "int32": I32, "int16": I16, "int8": I8,
              "uint8": I8, "float16": F32, "bfloat16": F32}
_MEMORY_TYPE = {"float32": F32, "float64": F64, "bool": I8, "int64": I64, "int32": I32, "int16": I16, "int8": I8,
                "uint8": I8, "float16": F16, "bfloat16": I16}


def _signed(v: Value) -> bool:
    """Whether `v`'s integers compare, extend and convert as signed (bool and uint8 do not)."""
    return v.dtype.is_signed


# ---------------------------------------------------------------------------------------------
# the scalar expression of each primitive: render(b, node, args) -> an LLVM value
# (`b` is an _Emitter: an IRBuilder plus the intrinsics it may call)


def _float_binary(name: str) -> Callable:
    return lambda b, n, a: getattr(b.ir, name)(a[0], a[1])


def _arith(float_op: str, int_op: str) -> Callable:
    def render(b, n, a):
        return getattr(b.ir, float_op if is_float(n.out) else int_op)(a[0], a[1])
    return render


def _extreme(float_pred: str, int_pred: str) -> Callable:
    """maximum/minimum: NaN in either operand gives NaN, as in numpy and PyTorch."""
    def render(b, n, a):
        x, y = a
        if not is_float(n.out):
            compare = b.ir.icmp_signed if _signed(n.out) else b.ir.icmp_unsigned
            return b.ir.select(compare(int_pred, x, y), x, y)
        pick = b.ir.select(b.ir.fcmp_ordered(float_pred, x, y), x, y)
        return b.ir.select(b.ir.fcmp_unordered("uno", x, y), b.ir.fadd(x, y), pick)
    return render


def _compare(ordered: str, signed: str) -> Callable:
    def render(b, n, a):
        x, y = a
        if is_float(n.inputs[0]):
            # != is true for NaN (unordered); the other comparisons are false for NaN
            return b.ir.fcmp_unordered(ordered, x, y) if ordered == "!=" else b.ir.fcmp_ordered(ordered, x, y)
        if not _signed(n.inputs[0]):  # bool, uint8
            return b.ir.icmp_unsigned(signed, x, y)
        return b.ir.icmp_signed(signed, x, y)
    return render


def _truth(b, v: Value, x):
    """numpy's truth value of an element (NaN is true)."""
    if v.dtype.name == "bool":
        return x
    if is_float(v):
        return b.ir.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
    return b.ir.icmp_signed("!=", x, ir.Constant(x.type, 0))


def _logical(op: str) -> Callable:
    return lambda b, n, a: getattr(b.ir, op)(_truth(b, n.inputs[0], a[0]), _truth(b, n.inputs[1], a[1]))


def _cast(b, n, a):
    src, dst = n.inputs[0], n.out
    x = a[0]
    to = _LLVM_TYPE[dst.dtype.name]
    if dst.dtype.name == "bool":
        return _truth(b, src, x)
    if is_float(src) and is_float(dst):
        if x.type == to:
            return x  # (to or from a half type in float32 registers: `_render` rounds the result)
        return b.ir.fpext(x, to) if to == F64 else b.ir.fptrunc(x, to)
    if is_float(src) and to.width < 32:
        # to int16, int8, uint8 through int32, as the eager kernel's C conversion does on x86: in range
        # values (all PyTorch defines) alike, and those out of range wrap as numpy's do, where a direct
        # fptosi to i8 would be poison for 200.0
        return b.ir.trunc(b.ir.fptosi(x, I32), to)
    if is_float(src):
        return b.ir.fptosi(x, to)
    if is_float(dst):
        return b.ir.sitofp(x, to) if _signed(src) else b.ir.uitofp(x, to)
    if x.type == to:
        return x  # int8 <-> uint8: the same bits
    if to.width > x.type.width:
        return b.ir.sext(x, to) if _signed(src) else b.ir.zext(x, to)
    return b.ir.trunc(x, to)


def _const(x, value: float):
    return ir.Constant(x.type, value)


def _relu(b, n, a):
    x = a[0]
    return b.ir.select(b.ir.fcmp_ordered("<", x, _const(x, 0.0)), _const(x, 0.0), x)  # NaN passes


def _relu_backward(b, n, a):
    g, out = a
    return b.ir.select(b.ir.fcmp_ordered("<=", out, _const(out, 0.0)), _const(g, 0.0), g)


def _neg(b, n, a):
    return b.ir.fneg(a[0]) if is_float(n.out) else b.ir.neg(a[0])


def _abs(b, n, a):
    x = a[0]
    if is_float(n.out):
        return b.call("fabs", x)
    if not _signed(n.out):
        return x
    return b.ir.select(b.ir.icmp_signed("<", x, ir.Constant(x.type, 0)), b.ir.neg(x), x)


def _isinf(b, n, a):
    x = a[0]
    return b.ir.fcmp_ordered("==", b.call("fabs", x), _const(x, math.inf))


# float-only ops: float inputs and output
_FLOAT_ONLY = {
    "exp": lambda b, n, a: b.call("exp", a[0]),
    "log": lambda b, n, a: b.call("log", a[0]),
    "sqrt": lambda b, n, a: b.call("sqrt", a[0]),
    "rsqrt": lambda b, n, a: b.ir.fdiv(_const(a[0], 1.0), b.call("sqrt", a[0])),
    "reciprocal": lambda b, n, a: b.ir.fdiv(_const(a[0], 1.0), a[0]),
    "tanh": lambda b, n, a: b.call("tanh", a[0]),
    "sigmoid": lambda b, n, a: b.call("sigmoid", a[0]),
    "erf": lambda b, n, a: b.call("erf", a[0]),
    "floor": lambda b, n, a: b.call("floor", a[0]),
    "ceil": lambda b, n, a: b.call("ceil", a[0]),
    "trunc": lambda b, n, a: b.call("trunc", a[0]),
    "round": lambda b, n, a: b.call("roundeven", a[0]),  # numpy rounds halves to even
    "relu": _relu,
    "relu_backward": _relu_backward,
    "div": _float_binary("fdiv"),
    "pow": lambda b, n, a: b.call("pow", a[0], a[1]),
}

# ops on float or integer operands (not bool)
_NUMERIC = {
    "neg": _neg,
    "abs": _abs,
    "add": _arith("fadd", "add"),
    "sub": _arith("fsub", "sub"),
    "mul": _arith("fmul", "mul"),
    "maximum": _extreme(">", ">"),
    "minimum": _extreme("<", "<"),
}

# ops that take any supported dtype
_ANY = {
    "eq": _compare("==", "=="),
    "ne": _compare("!=", "!="),
    "lt": _compare("<", "<"),
    "le": _compare("<=", "<="),
    "gt": _compare(">", ">"),
    "ge": _compare(">=", ">="),
    "logical_and": _logical("and_"),
    "logical_or": _logical("or_"),
    "logical_xor": _logical("xor"),
    "logical_not": lambda b, n, a: b.ir.not_(_truth(b, n.inputs[0], a[0])),
    "where": lambda b, n, a: b.ir.select(_truth(b, n.inputs[0], a[0]), a[1], a[2]),
    "cast": _cast,
    "copy": lambda b, n, a: a[0],
    "expand": lambda b, n, a: a[0],  # numpy's broadcasting rule: the kernel loads its input broadcast
}

_FLOAT_TESTS = {
    "isnan": lambda b, n, a: b.ir.fcmp_unordered("uno", a[0], a[0]),
    "isinf": _isinf,
}


class _Reduction(NamedTuple):
    """A row reduction as accumulators: their starting values (given the element's LLVM type), the
    step that folds one element into them, and the result they leave."""
    start: Callable[[ir.Type], list]
    step: Callable[[_Emitter, list, ir.Value], list]
    result: Callable[[ir.IRBuilder, list], ir.Value]


def _extreme_reduction(name: str, start: float) -> _Reduction:
    """amax/amin: `llvm.maxnum`/`minnum` under `nnan` (one vmaxps per vector: LLVM vectorizes it
    without a NaN check per step) with NaN tracked on the side, off the accumulator's dependency
    chain; a NaN anywhere in the row gives NaN, as in numpy and PyTorch. (After a NaN the `nnan`
    accumulator is poison, which only the select's other arm ever sees.)"""
    def step(b, accs, x):
        extreme, nan = accs
        return [b.call(name, extreme, x, fastmath=("nnan", "nsz")), b.ir.or_(nan, b.ir.fcmp_unordered("uno", x, x))]

    return _Reduction(lambda t: [ir.Constant(t, start), ir.Constant(I1, 0)], step,
                      lambda b, accs: b.select(accs[1], ir.Constant(accs[0].type, math.nan), accs[0]))


# a float sum may be reassociated so that LLVM vectorizes it (several partial sums, as PyTorch's CPU
# kernels keep; numpy sums pairwise); it starts at +0.0, as numpy's and PyTorch's sums do
_REDUCTIONS = {
    "sum": _Reduction(lambda t: [ir.Constant(t, 0.0)], lambda b, accs, x: [b.ir.fadd(accs[0], x, flags=("reassoc",))],
                      lambda b, accs: accs[0]),
    "amax": _extreme_reduction("maxnum", -math.inf),
    "amin": _extreme_reduction("minnum", math.inf),
}


def _random(b, n, a):
    """Philox for the element at `b.element_index`: counter = the call's first counter + the node's
    offset + the element's row-major index in the node's shape (as the eager kernel numbers them)."""
    seed, counter = a
    offset = b.ir.add(b.ir.add(counter, ir.Constant(I64, n.params["offset"])), b.element_index)
    if n.params["dist"] == "uniform":
        x = llvm_philox.uniform(b.ir, seed, offset)
    else:
        x = llvm_philox.normal(b.ir, seed, offset, call=b.call)
    return b.ir.fpext(x, F64) if n.out.dtype.name == "float64" else x


def fusible(node: Node) -> bool:
    """Whether this backend can compute `node` inside a fused kernel."""
    return renders(node, _LLVM_TYPE, float_only=_FLOAT_ONLY, numeric=_NUMERIC, float_tests=_FLOAT_TESTS,
                   any_dtype=_ANY, reductions=_REDUCTIONS)


def _render(b, node: Node, args: list):
    op = node.op
    if op == "random":
        return _random(b, node, args)
    table = _FLOAT_ONLY if op in _FLOAT_ONLY else _NUMERIC if op in _NUMERIC else _FLOAT_TESTS if op in _FLOAT_TESTS \
        else _ANY
    return _rounded(b.ir, table[op](b, node, args), node.out)


def _rounded(b: ir.IRBuilder, x, v: Value):
    """A float32 register value `x` of `v` rounded to `v`'s precision where that is a half type."""
    name = v.dtype.name
    if name == "float16":
        return b.fpext(b.fptrunc(x, F16), F32)  # (F16C's conversions on x86: round to nearest even)
    if name == "bfloat16":
        return b.bitcast(b.shl(b.zext(_bfloat16_bits(b, x), I32), ir.Constant(I32, 16)), F32)
    return x


def _bfloat16_bits(b: ir.IRBuilder, x):
    """The bfloat16 nearest float32 `x` (ties to even; NaN stays a quiet NaN of its sign), as i16."""
    bits = b.bitcast(x, I32)
    lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
    rounded = b.add(b.add(bits, ir.Constant(I32, 0x7FFF)), lsb)
    quiet = b.or_(bits, ir.Constant(I32, 0x00400000))
    chosen = b.select(b.fcmp_unordered("uno", x, x), quiet, rounded)
    return b.trunc(b.lshr(chosen, ir.Constant(I32, 16)), I16)


class _Emitter:
    """An IRBuilder plus the math functions kernels call: LLVM intrinsics, and jitorch's own
    vectorizable exp/log/tanh/sigmoid/erf (`llvm_math`), declared here and defined by
    `_with_math` once the module is text."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder) -> None:
        self.module = module
        self.ir = builder
        self.element_index = None  # the row-major index of the element being computed (random nodes)

    def call(self, name: str, *args, fastmath: tuple[str, ...] = ()):
        ty = args[0].type
        if name in llvm_math.FUNCTIONS:
            fname = llvm_math.function_name(name, "float" if ty == F32 else "double")
        else:
            fname = f"llvm.{name}.{'f32' if ty == F32 else 'f64'}"
        fn = self.module.globals.get(fname)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), fname)
        return self.ir.call(fn, args, fastmath=fastmath)


def _with_math(text: str, scalef: bool = False) -> str:
    """Replace the declarations of jitorch's math helpers in a module's text by their definitions
    (`scalef`: see `llvm_math.math_functions`)."""
    lines = text.splitlines()
    declared = [line for line in lines if line.startswith("declare") and '@"jt_' in line]
    if not declared:
        return text
    kept = [line for line in lines if line not in declared]
    dtypes = sorted({"float" if line.split()[1] == "float" else "double" for line in declared})
    return "\n".join(kept + [llvm_math.math_functions(d, scalef) for d in dtypes]) + "\n"


# ---------------------------------------------------------------------------------------------
# codegen of one kernel


def _emit_kernel(module: ir.Module, kernel: Kernel, fname: str, loop_shape: tuple[int, ...],
                 broadcast: list[tuple[bool, ...]]) -> None:
    """`void fname(i64* shape, i64* strides, ptr* data)`: strides are n_operands x ndim elements,
    operands are the kernel's inputs then its outputs."""
    ndim = len(loop_shape)
    operands = list(kernel.inputs) + list(kernel.outputs)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR]), fname)
    fn.args[0].name, fn.args[1].name, fn.args[2].name = "shape", "strides", "data"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    emit = _Emitter(module, b)
    sizes = [b.load(b.gep(fn.args[0], [ir.Constant(I64, d)], inbounds=True, source_etype=I64), typ=I64)
             for d in range(ndim)]
    strides = [[b.load(b.gep(fn.args[1], [ir.Constant(I64, k * max(ndim, 1) + d)], inbounds=True, source_etype=I64),
                       typ=I64) for d in range(ndim)] for k in range(len(operands))]
    ops = _Operands(module, b, fn.args[2], len(kernel.inputs), len(kernel.outputs))
    n_in = len(kernel.inputs)
    out_broadcast = [(False,) * (ndim - 1) + (v.shape != kernel.shape,) if ndim else () for v in kernel.outputs]
    inner_static = [bc[-1] if ndim else True for bc in broadcast + out_broadcast]  # True: stride 0
    start = [ir.Constant(I64, 0)] * len(operands)
    if any(n.op == "random" for n in kernel.nodes):
        # one more "operand": the element's row-major index, from shape[ndim], the index of the
        # call's first element (a thread's band starts past the others)
        start.append(b.load(b.gep(fn.args[0], [ir.Constant(I64, ndim)], inbounds=True, source_etype=I64), typ=I64))
        strides.append(_contiguous_strides(b, sizes))
        inner_static.append(False)
    if kernel.rows:
        # each operand's distance to the next row: a pass over a row that is in cache prefetches the next
        next_row = [strides[k][ndim - 2] for k in range(len(operands))] if ndim >= 2 else None
        rows = _RowEmitter(b, fn, emit, kernel, sizes[-1], ops, inner_static, next_row)
        if ndim == 1:
            rows.emit(start)
        else:
            _loop_nest(b, fn, sizes[:-1], strides, None, start, 0, rows.emit)
        b.ret_void()
        return

    def body(offsets: list):
        """The per-element code at the innermost point, given each operand's element offset."""
        emit.element_index = offsets[-1]
        env: dict[int, object] = {}
        for k, v in enumerate(kernel.inputs):
            env[v.id] = ops.load(k, v, offsets[k])
        for node in kernel.nodes:
            env[node.out.id] = _render(emit, node, [env[v.id] for v in node.inputs])
        for j, v in enumerate(kernel.outputs):
            ops.store(n_in + j, v, env[v.id], offsets[n_in + j])

    if ndim == 0:
        body(start)
    else:
        _loop_nest(b, fn, sizes, strides, inner_static, start, 0, body)
    b.ret_void()


def _contiguous_strides(b: ir.IRBuilder, sizes: list) -> list:
    strides = [ir.Constant(I64, 1)]
    for size in reversed(sizes[1:]):
        strides.insert(0, b.mul(strides[0], size))
    return strides[: len(sizes)]


def _loop_nest(b: ir.IRBuilder, fn: ir.Function, sizes, strides, inner_static, offsets, d: int, body) -> None:
    """Counted loop over dim `d`; the innermost dim indexes each operand by i (or 0 if broadcast),
    or by its stride like the other dims when `inner_static` is None."""
    ndim = len(sizes)
    innermost = d == ndim - 1
    pre = b.block
    head = fn.append_basic_block(f"d{d}.head")
    loop = fn.append_basic_block(f"d{d}.body")
    done = fn.append_basic_block(f"d{d}.done")
    b.cbranch(b.icmp_signed(">", sizes[d], ir.Constant(I64, 0)), head, done)
    b.position_at_end(head)
    i = b.phi(I64, name=f"i{d}")
    i.add_incoming(ir.Constant(I64, 0), pre)
    b.branch(loop)
    b.position_at_end(loop)
    if innermost and inner_static is not None:
        body([off if bcast else b.add(off, i) for off, bcast in zip(offsets, inner_static)])
    elif innermost:
        body([b.add(off, b.mul(i, strides[k][d])) for k, off in enumerate(offsets)])
    else:
        inner = [b.add(off, b.mul(i, strides[k][d])) for k, off in enumerate(offsets)]
        _loop_nest(b, fn, sizes, strides, inner_static, inner, d + 1, body)
    nxt = b.add(i, ir.Constant(I64, 1), flags=["nuw", "nsw"])
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, sizes[d]), head, done)
    b.position_at_end(done)


# a pass that prefetches the next row does so a block of this many elements at a time, one prefetch per
# cache line: fewer misses in flight than the core can track, and a block's loop long enough to vectorize
_PREFETCH_BLOCK = 256
_CACHE_LINE = 64

# ops worth a store and a load (of an L1-resident row) rather than a second evaluation
_TRANSCENDENTAL = frozenset({"exp", "log", "log1p", "expm1", "tanh", "sigmoid", "erf", "pow", "sin", "cos"})


class _RowEmitter:
    """The code of a row kernel for one row, given each operand's offset at the row's start.

    Values of the row shape (row inputs, reductions, pointwise nodes on them) are computed once per
    row; values of the full shape inside passes over the row. Pass L accumulates the reductions
    of level L + 1 and stores the full-shape outputs of level L, recomputing the full-shape nodes
    it needs from the inputs (cheaper than a round trip through memory; the row is in L1 cache by
    the second pass), except those an earlier pass stored as outputs: it loads those back
    (softmax's exp is computed once). Before pass L come the row nodes of level L, whose
    reductions are done.
    """

    def __init__(self, b: ir.IRBuilder, fn: ir.Function, emit: _Emitter, kernel: Kernel, length, ops: _Operands,
                 inner_static: list[bool], next_row: list | None = None) -> None:
        self.b, self.fn, self.emitter, self.kernel, self.length = b, fn, emit, kernel, length
        self.ops, self.inner_static, self.next_row = ops, inner_static, next_row
        self.level = kernel.levels()
        self.row_ids = {n.out.id for n in kernel.nodes if n.out.shape != kernel.shape}
        self.has_random = any(n.op == "random" for n in kernel.nodes)
        self.made = {n.out.id: n for n in kernel.nodes}
        self.static = {v.id for k, v in enumerate(kernel.inputs) if inner_static[k]}
        self.picks = {n.out.id: found for n in kernel.nodes if (found := self._pick(n)) is not None}

    def emit(self, offsets: list) -> None:
        kernel, level = self.kernel, self.level
        n_in = len(kernel.inputs)
        env = {v.id: self.ops.load(k, v, offsets[k]) for k, v in enumerate(kernel.inputs) if self.inner_static[k]}
        if self.has_random:  # a row-shaped draw is numbered by its row
            self.emitter.element_index = self.b.udiv(offsets[-1], self.length)
        passes = self._passes()
        stash = self._stash(passes)
        loops = 0  # the second loop over the row (the row in cache) prefetches the next row
        for pass_, (reductions, stores, stored) in enumerate(passes):
            for node in kernel.nodes:
                if node.out.id in self.row_ids and not is_row_reduction(node) and level[node.out.id] == pass_:
                    env[node.out.id] = _render(self.emitter, node, [env[v.id] for v in node.inputs])
            for j, v in enumerate(kernel.outputs):
                if v.id in self.row_ids and level[v.id] == pass_:
                    self.ops.store(n_in + j, v, env[v.id], offsets[n_in + j])
            if reductions or stores:
                stashed = {vid: k for vid, (_, later, k) in stash.items() if later == pass_}
                kept = {vid: k for vid, (at, _, k) in stash.items() if at == pass_}
                env.update(self._pass(offsets, env, reductions, stores, stored | stashed, kept, prefetch=loops == 1))
                loops += any(r.out.id not in self.picks for r in reductions) or bool(stores or kept)

    def _passes(self) -> list[tuple[list[Node], list[int], dict[int, int]]]:
        """Per pass over the row: the reductions it accumulates, the full-shape outputs it stores, and
        the outputs earlier passes stored (value id -> output index), which it loads back."""
        kernel, level = self.kernel, self.level
        passes = []
        for pass_ in range(max(level.values(), default=0) + 1):
            reductions = [n for n in kernel.nodes if is_row_reduction(n) and level[n.out.id] == pass_ + 1]
            stores = [j for j, v in enumerate(kernel.outputs) if v.id not in self.row_ids and level[v.id] == pass_]
            stored = {v.id: j for j, v in enumerate(kernel.outputs) if v.id not in self.row_ids and level[v.id] < pass_}
            passes.append((reductions, stores, stored))
        return passes

    def _stash(self, passes) -> dict[int, tuple[int, int, int]]:
        """Transcendentals a later pass would compute again (softmax's exp(x - max), in the pass that
        sums it and again in the pass that divides by the sum): value id -> (the pass that computes
        it, the later pass that needs it, the output it is kept in meanwhile). It is kept in the buffer
        of an output of its dtype that the later pass stores (at the same element, which that pass
        reads before it writes), so the later pass loads it instead: one exp per element."""
        computed = [{n.out.id for n in self._needed([r.inputs[0] for r in reductions if r.out.id not in self.picks]
                                                   + [self.kernel.outputs[j] for j in stores], stored)}
                    if reductions or stores else set() for reductions, stores, stored in passes]
        stash: dict[int, tuple[int, int, int]] = {}
        taken: set[int] = set()
        for later, (_, stores, _) in enumerate(passes):
            for node in self.kernel.nodes:
                vid = node.out.id
                if node.op not in _TRANSCENDENTAL or vid not in computed[later] or vid in stash:
                    continue
                earlier = [at for at in range(later) if vid in computed[at]]
                free = [j for j in stores if j not in taken and self.kernel.outputs[j].dtype is node.out.dtype
                        and node.out.dtype.itemsize >= 4]  # (a half type would round what it keeps)
                if len(earlier) == 1 and free:
                    stash[vid] = (earlier[0], later, free[0])
                    taken.add(free[0])
        return stash

    def _needed(self, targets: list[Value], stored: dict[int, int]) -> list[Node]:
        """The kernel's full-shape nodes that `targets` depend on, in kernel order, short of the
        values already `stored`."""
        seen: set[int] = set()
        stack = [v.id for v in targets]
        while stack:
            vid = stack.pop()
            if vid in seen or vid in self.row_ids or vid not in self.made or vid in stored:
                continue
            seen.add(vid)
            stack.extend(v.id for v in self.made[vid].inputs)
        return [n for n in self.kernel.nodes if n.out.id in seen]

    def _pick(self, node: Node) -> tuple[Value, Value, Value, bool] | None:
        """(the row's index, the value picked, the zero, whether it is negated) where `node` sums a
        row's `where(index == position, value, zero)`, or its negation: the position an input holding
        0, 1, ..., n - 1 along the row (a constant), the index the same for the whole row, the zero a
        constant 0. That sum is the value at the index plus the zero (the row's other elements) plus
        the sum's +0.0 start, or the zero plus that start where the index is outside the row; negated,
        the same of the negation (exactly: -(a + b) is -a + -b). It is computed at that one element instead
        of over the row (cross-entropy's target logit, and its gradient's sum of the target's term)."""
        if node.op != "sum" or not is_row_reduction(node) or self.has_random:
            return None
        where = self.made.get(node.inputs[0].id)
        negated = where is not None and where.op == "neg"
        if negated:
            where = self.made.get(where.inputs[0].id)
        if where is None or where.op != "where" or where.out.dtype.name not in ("float32", "float64"):
            return None
        mask, value, zero = where.inputs
        eq = self.made.get(mask.id)
        n = self.kernel.shape[-1]
        if eq is None or eq.op != "eq" or ZERO not in constant_traits(zero, n):
            return None
        for index, other in (eq.inputs, eq.inputs[::-1]):
            row_static = index.id in self.row_ids or index.id in self.static
            if row_static and index.dtype.name in ("int64", "int32") and POSITIONS in constant_traits(other, n):
                return index, value, zero, negated
        return None

    def _picked(self, offsets: list, row_env: dict, picks: list[Node], stored: dict[int, int]) -> dict:
        """The picks of this pass (`_pick`), each evaluated at its one element of the row."""
        b, found = self.b, {}
        for node in picks:
            index, value, zero, negated = self.picks[node.out.id]
            at = row_env[index.id]
            at = at if at.type.width == 64 else b.sext(at, I64)
            inside = b.and_(b.icmp_signed(">=", at, ir.Constant(I64, 0)), b.icmp_signed("<", at, self.length))
            at = b.select(inside, at, ir.Constant(I64, 0))  # (a load in bounds either way)
            env = self._at(offsets, row_env, [value], stored, at)
            z = env[zero.id]
            picked = b.select(inside, b.fadd(env[value.id], z), z)
            picked = b.fneg(picked) if negated else picked
            # (+ the sum's +0.0 start, which turns a -0.0 into +0.0 as the row's sum does)
            found[node.out.id] = _rounded(b, b.fadd(picked, ir.Constant(picked.type, 0.0)), node.out)
        return found

    def _at(self, offsets: list, row_env: dict, targets: list[Value], stored: dict[int, int], at) -> dict:
        """The row values and the values `targets` need at element `at` of the row: inputs and
        stored outputs loaded there, the kernel's nodes between them rendered."""
        b, n_in = self.b, len(self.kernel.inputs)
        nodes = self._needed(targets, stored)
        wanted = {v.id for n in nodes for v in n.inputs} | {v.id for v in targets}
        env = dict(row_env)
        for k, v in enumerate(self.kernel.inputs):
            if not self.inner_static[k] and v.id in wanted:
                env[v.id] = self.ops.load(k, v, b.add(offsets[k], at))
        for vid, k in stored.items():
            if vid in wanted:
                env[vid] = self.ops.load(n_in + k, self.made[vid].out if vid in self.made else self.kernel.outputs[k],
                                         b.add(offsets[n_in + k], at))
        for node in nodes:
            env[node.out.id] = _render(self.emitter, node, [env[v.id] for v in node.inputs])
        return env

    def _pass(self, offsets: list, row_env: dict, reductions: list[Node], stores: list[int],
              stored: dict[int, int], kept: dict[int, int] | None = None, prefetch: bool = False) -> dict:
        """One loop over the row (its length is at least 2: fusion only forms row kernels then), and
        the picks of `reductions` at their one element each; `stored` maps values an earlier pass
        wrote to their output's index, `kept` values this pass writes into an output's buffer for a
        later pass (`_stash`)."""
        picks = [r for r in reductions if r.out.id in self.picks]
        reductions = [r for r in reductions if r.out.id not in self.picks]
        found = self._picked(offsets, row_env, picks, stored) if picks else {}
        if reductions or stores or kept:
            found.update(self._loop(offsets, row_env, reductions, stores, stored, kept, prefetch))
        return found

    def _loop(self, offsets: list, row_env: dict, reductions: list[Node], stores: list[int],
              stored: dict[int, int], kept: dict[int, int] | None, prefetch: bool = False) -> dict:
        """The loop over the row of a pass: its reductions, stores and kept values (see `_pass`).
        With `prefetch` (and a next row), the loop runs in blocks, each first prefetching its part of the
        next row: that row's memory traffic overlaps this row's arithmetic, where the hardware's
        prefetchers idle while the loop reads the current row from L1."""
        b = self.b
        starts = [_REDUCTIONS[r.op].start(_LLVM_TYPE[r.out.dtype.name]) for r in reductions]
        elements = lambda first, end, accs: self._elements(offsets, row_env, reductions, stores, stored, kept, first,
                                                             end, accs)
        if not prefetch or self.next_row is None:
            accs = elements(ir.Constant(I64, 0), self.length, starts)
        else:
            targets = [r.inputs[0] for r in reductions] + [self.kernel.outputs[k] for k in stores]
            read = {v.id for n in self._needed(targets, stored) for v in n.inputs} | {v.id for v in targets}
            streamed = [k for k, v in enumerate(self.kernel.inputs) if not self.inner_static[k] and v.id in read]
            accs = self._blocks(starts, lambda first: self._prefetch(offsets, first, streamed), elements)
        return {r.out.id: _rounded(b, _REDUCTIONS[r.op].result(b, acc), r.out) for r, acc in zip(reductions, accs)}

    def _blocks(self, starts: list[list], before: Callable, elements: Callable) -> list[list]:
        """The row in blocks of _PREFETCH_BLOCK elements: `before(first)` at each block's start, then
        `elements(first, end, accumulators)`; the accumulators carried from block to block."""
        b = self.b
        pre = b.block
        head = self.fn.append_basic_block("row.block")
        b.branch(head)
        b.position_at_end(head)
        first = b.phi(I64, name="first")
        first.add_incoming(ir.Constant(I64, 0), pre)
        phis = _accumulator_phis(b, starts, pre, "acc.block")
        before(first)
        nxt = b.add(first, ir.Constant(I64, _PREFETCH_BLOCK), flags=["nuw", "nsw"])
        more = b.icmp_signed("<", nxt, self.length)
        accs = elements(first, b.select(more, nxt, self.length), phis)
        first.add_incoming(nxt, b.block)
        _incoming(phis, accs, b.block)
        done = self.fn.append_basic_block("row.blocks.done")
        b.cbranch(more, head, done)
        b.position_at_end(done)
        return accs

    def _prefetch(self, offsets: list, first, inputs: list[int]) -> None:
        """Prefetch (into L1, for reading) each cache line of the next row's block at `first` of `inputs`.
        A prefetch never faults, so the row after the last one costs nothing but the instruction."""
        b, module = self.b, self.ops.module
        fn = module.globals.get("llvm.prefetch.p0") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]), "llvm.prefetch.p0")
        for k in inputs:
            v = self.kernel.inputs[k]
            at = b.add(b.add(offsets[k], self.next_row[k]), first)
            for line in range(0, _PREFETCH_BLOCK, max(1, _CACHE_LINE // v.dtype.itemsize)):
                # (no inbounds: the next row may lie past the array, which the prefetch may touch)
                ptr = b.gep(self.ops.bases[k], [b.add(at, ir.Constant(I64, line))],
                            source_etype=_MEMORY_TYPE[v.dtype.name])
                b.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

    def _elements(self, offsets: list, row_env: dict, reductions: list[Node], stores: list[int],
                  stored: dict[int, int], kept: dict[int, int] | None, first, end, starts: list[list]) -> list[list]:
        """A loop over elements [first, end) of the row (at least one), each reduction's accumulators
        starting from `starts`: their values at its end."""
        b, kernel = self.b, self.kernel
        n_in = len(kernel.inputs)
        pre = b.block
        loop = self.fn.append_basic_block("row.pass")
        done = self.fn.append_basic_block("row.done")
        b.branch(loop)
        b.position_at_end(loop)
        j = b.phi(I64, name="j")
        j.add_incoming(first, pre)
        accs = _accumulator_phis(b, starts, pre, "acc")
        if self.has_random:
            self.emitter.element_index = b.add(offsets[-1], j)
        env = self._at(offsets, row_env, [r.inputs[0] for r in reductions] + [kernel.outputs[k] for k in stores],
                       stored, j)
        updated = [_REDUCTIONS[r.op].step(self.emitter, row, env[r.inputs[0].id]) for r, row in zip(reductions, accs)]
        for k in stores:
            v = kernel.outputs[k]
            self.ops.store(n_in + k, v, env[v.id], b.add(offsets[n_in + k], j))
        for vid, k in (kept or {}).items():
            self.ops.store(n_in + k, self.made[vid].out, env[vid], b.add(offsets[n_in + k], j))
        nxt = b.add(j, ir.Constant(I64, 1), flags=["nuw", "nsw"])
        j.add_incoming(nxt, b.block)
        _incoming(accs, updated, b.block)
        b.cbranch(b.icmp_signed("<", nxt, end), loop, done)
        b.position_at_end(done)
        return updated


def _accumulator_phis(b: ir.IRBuilder, starts: list[list], pre, name: str) -> list[list]:
    """A loop head's phis for each reduction's accumulators, entered from block `pre` with `starts`."""
    phis = [[b.phi(v.type, name=name) for v in values] for values in starts]
    _incoming(phis, starts, pre)
    return phis


def _incoming(phis: list[list], values: list[list], block) -> None:
    for row, vals in zip(phis, values):
        for phi, v in zip(row, vals):
            phi.add_incoming(v, block)


class _Operands:
    """A kernel's operands (inputs, then outputs) by index: their base pointers, and loads and
    stores tagged with alias scopes that tell LLVM what the runtime guarantees: every output is a
    fresh array, overlapping no input and no other output (inputs may overlap each other: they
    are only read). Without this the vectorizer checks every output against every input at run
    time before taking the vector loop, and gives up beyond a few operands."""

    def __init__(self, module: ir.Module, b: ir.IRBuilder, data, n_in: int, n_out: int) -> None:
        self.b, self.module = b, module
        self.bases = [b.load(b.gep(data, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR), typ=PTR)
                      for k in range(n_in + n_out)]
        domain = module.add_metadata([ir.MetaDataString(module, "jitorch kernel operands")])
        inputs = module.add_metadata([ir.MetaDataString(module, "inputs"), domain])
        outputs = [module.add_metadata([ir.MetaDataString(module, f"output {j}"), domain]) for j in range(n_out)]
        scopes = [inputs] * n_in + outputs
        self.tags = [(module.add_metadata([scope]),
                      module.add_metadata([other for other in [inputs, *outputs] if other is not scope]))
                     for scope in scopes]

    def _tag(self, instr, k: int):
        scope, others = self.tags[k]
        instr.set_metadata("alias.scope", scope)
        if others.operands:
            instr.set_metadata("noalias", others)
        return instr

    def load(self, k: int, v: Value, offset):
        b, ty = self.b, _MEMORY_TYPE[v.dtype.name]
        x = self._tag(b.load(b.gep(self.bases[k], [offset], inbounds=True, source_etype=ty), typ=ty), k)
        name = v.dtype.name
        if name == "bool":
            return b.icmp_unsigned("!=", x, ir.Constant(I8, 0))
        if name == "float16":
            return b.fpext(x, F32)
        if name == "bfloat16":  # its bits are a float32's top half
            return b.bitcast(b.shl(b.zext(x, I32), ir.Constant(I32, 16)), F32)
        return x

    def store(self, k: int, v: Value, x, offset) -> None:
        b, ty = self.b, _MEMORY_TYPE[v.dtype.name]
        name = v.dtype.name
        if name == "bool":
            x = b.zext(x, I8)
        elif name == "float16":
            x = b.fptrunc(x, F16)
        elif name == "bfloat16":
            x = _bfloat16_bits(b, x)
        self._tag(b.store(x, b.gep(self.bases[k], [offset], inbounds=True, source_etype=ty)), k)


def render(desc: KernelDesc, scalef: bool = False) -> str:
    """The LLVM IR of one kernel as a module of its own, its function named @"kernel":
    `void kernel(i64* shape, i64* strides, ptr* data)`, strides n_operands x ndim elements,
    operands the kernel's inputs then its outputs. `scalef`: the target has AVX-512F
    (`llvm_math.math_functions`)."""
    module = ir.Module(name="kernel")
    _emit_kernel(module, desc.kernel, "kernel", desc.loop_shape, desc.broadcast)
    return _with_math(str(module), scalef)
